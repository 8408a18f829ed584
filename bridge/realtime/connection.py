"""One Realtime WebSocket and its session: opening it, configuring it, classifying failures.

``Connector.open`` makes one attempt: the WebSocket handshake (raw ``websockets``,
``compression=None``: audio is base64 and does not compress, and permessage-deflate costs
CPU on every frame), ``session.created``, our ``session.update``, ``session.updated``, and
-- on a new socket mid-call -- the conversation text re-seeded (docs/realtime-protocol.md
§8). It returns a ready ``Session`` or raises:

* ``RealtimeAuthError``: credentials refused (HTTP 401/403, close 3000) -- never retried;
* ``RealtimeRejected``: the request itself refused (HTTP 400/404, close 4000, an unusable
  URL, a rejected ``session.update``) -- retrying the same thing cannot help;
* ``_Retryable``: anything worth another attempt (network, HTTP 429/5xx, a close worth a
  retry, no ``session.updated`` in time). The client owns the retry policy.

Writing goes through the session's ``FrameWriter`` (``bridge.internals.websockets``): one
text frame per client event, never awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridge import __version__
from bridge.errors import RealtimeAuthError, RealtimeError, RealtimeUnavailable
from bridge.internals.websockets import FrameWriter, HookedConnection, Masks
from bridge.realtime import events as ev
from bridge.realtime.auth import TokenProvider, handshake_headers
from bridge.realtime.config import RealtimeTarget, redact_url
from bridge.realtime.dialects import EventMapper
from bridge.realtime.profile import SessionProfile, build_session_update
from bridge.realtime.responses import SessionItems

#: Close codes worth a reconnect (docs/realtime-protocol.md §8).
RETRY_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013})
#: Close codes that mean "do not try again": auth, bad request shape.
AUTH_CLOSE_CODES = frozenset({3000})
REJECT_CLOSE_CODES = frozenset({4000})
AUTH_HTTP = frozenset({401, 403})
REJECT_HTTP = frozenset({400, 404})
MAX_MESSAGE = 16 * 1024 * 1024

Logger = logging.Logger | logging.LoggerAdapter[Any]


class RealtimeRejected(RealtimeUnavailable):
    """The upstream refused the request itself (HTTP 400/404, close 4000, a rejected
    ``session.update``): retrying the same thing cannot help."""


class _Retryable(RealtimeUnavailable):
    """A failure worth another attempt (network, HTTP 429/5xx, a recoverable close)."""


@dataclass
class Session:
    """One socket and its session."""

    ws: ClientConnection
    writer: FrameWriter
    mapper: EventMapper
    items: SessionItems = field(default_factory=SessionItems)
    session_id: str = ""
    expires_at: float | None = None
    ready: bool = False
    retired: bool = False
    close_reason: str = ""
    opened_wall: float = 0.0     # wall-clock time the session was ready (epoch s)
    connect_s: float = 0.0       # how long opening it took

    def write(self, event: dict[str, Any]) -> bool:
        """Send one client event (its ``event_id`` already set); False if the socket is
        not open."""
        return self.writer.send(json.dumps(event, separators=(",", ":")).encode())

    def close_code(self) -> int:
        code = self.ws.close_code
        return 1006 if code is None else int(code)


class Connector:
    """Opens sessions to one target with one profile. See the module docstring."""

    def __init__(self, target: RealtimeTarget, profile: SessionProfile, *,
                 token_provider: TokenProvider | None, log: Logger, open_timeout_s: float,
                 next_id: Callable[[], str], wall_clock: Callable[[], float]) -> None:
        self.target = target
        self.profile = profile
        self.token_provider = token_provider
        self.open_timeout_s = open_timeout_s
        self._log = log
        self._next_id = next_id
        self._wall = wall_clock
        self._masks = Masks()

    async def open(self, seed: Callable[[], list[dict[str, Any]]],
                   hook: Callable[[], object] | None) -> Session:
        """One connect attempt; ``seed()`` (conversation items) is built and sent once the
        session is configured, so it holds what happened during the handshake too (a key
        sent to the model, a barge-in's trim). ``hook`` is called as bytes arrive once the
        WebSocket handshake is done."""
        started = time.perf_counter()
        ws = await self._connect()
        if isinstance(ws, HookedConnection):
            ws.hook = hook
        session = Session(ws, FrameWriter(ws, self._masks), EventMapper(self.target.dialect))
        try:
            async with asyncio.timeout(self.open_timeout_s):
                await self._configure(session)
        except TimeoutError:
            await session.writer.abort()
            raise _Retryable("no session.updated in time") from None
        except BaseException:
            await session.writer.abort()
            raise
        for event in seed():
            event.setdefault("event_id", self._next_id())
            session.write(event)
        session.ready = True
        session.opened_wall = self._wall()
        session.connect_s = time.perf_counter() - started
        self._log.info("Realtime session %s ready on %s in %.0f ms", session.session_id,
                       self.target.kind, session.connect_s * 1000)
        return session

    async def _connect(self) -> ClientConnection:
        """The WebSocket handshake, its failures classified."""
        headers = await handshake_headers(self.target, self.token_provider)
        self._log.debug("connecting to %s", self.target.safe_url)
        kind = self.target.kind
        try:
            return await websockets.connect(
                self.target.url,
                create_connection=HookedConnection,
                additional_headers=headers,
                compression=None,
                max_size=MAX_MESSAGE,
                open_timeout=self.open_timeout_s,
                close_timeout=2.0,
                user_agent_header=f"voicebridge/{__version__}",
                # websockets logs handshake headers at DEBUG: keep credentials out of logs.
                logger=_QUIET_WS_LOGGER,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in AUTH_HTTP:
                raise RealtimeAuthError(
                    f"{kind} refused the credentials (HTTP {status})") from None
            if status in REJECT_HTTP:
                raise RealtimeRejected(
                    f"{kind} rejected the request (HTTP {status}): check the "
                    "endpoint, deployment and API version") from None
            raise _Retryable(f"HTTP {status} at the handshake") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Retryable(f"{type(exc).__name__}: {_safe_text(exc)}") from None
        except (InvalidURI, ValueError) as exc:
            # A URL that cannot be parsed: no retry helps, and the exception's text is the
            # URL itself, api-key query and all -- never let it out.
            raise RealtimeRejected(f"{kind}: {self.target.safe_url} is not a usable "
                                   f"WebSocket URL ({type(exc).__name__})") from None

    async def _configure(self, session: Session) -> None:
        """``session.created`` -> ``session.update`` -> ``session.updated``."""
        last_error: ev.ServerError | None = None
        sent_update = False
        update = build_session_update(self.profile, self.target.dialect)
        update["event_id"] = update_id = self._next_id()
        while True:
            try:
                message = await session.ws.recv()
            except ConnectionClosed:
                raise self._close_error(session, last_error) from None
            for event in session.mapper.feed(message):
                if isinstance(event, ev.SessionCreated) and not sent_update:
                    session.session_id = event.session_id
                    session.expires_at = event.expires_at
                    session.write(update)
                    sent_update = True
                elif isinstance(event, ev.SessionReady) and sent_update:
                    session.session_id = event.session_id or session.session_id
                    session.expires_at = event.expires_at
                    return
                elif isinstance(event, ev.ServerError):
                    last_error = event
                    if event.event_id == update_id:
                        raise RealtimeRejected(
                            f"session.update rejected: {event.code}: {event.message}")
                    self._log.warning("Realtime error before session ready: %s", event.code)

    def _close_error(self, session: Session, last_error: ev.ServerError | None
                     ) -> RealtimeError:
        code = session.close_code()
        detail = f" ({last_error.code})" if last_error and last_error.code else ""
        kind = self.target.kind
        if code in AUTH_CLOSE_CODES:
            return RealtimeAuthError(f"{kind} closed with {code}{detail}: credentials refused")
        if code in REJECT_CLOSE_CODES:
            return RealtimeRejected(f"{kind} closed with {code}{detail}: request refused")
        return _Retryable(f"closed with {code}{detail}")


async def close_quietly(ws: ClientConnection) -> None:
    """A normal close (1000), given two seconds; a failure to close is no news."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await ws.close(1000)


def lost_reason(code: int, kind: str) -> tuple[str, bool]:
    """Why a close that is not worth a retry ends the leg, and whether it was auth."""
    fatal_auth = code in AUTH_CLOSE_CODES
    what = ("credentials refused" if fatal_auth else
            "request refused" if code in REJECT_CLOSE_CODES else "closed by the server")
    return f"{kind} {what} (close {code})", fatal_auth


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets' connection logger minus DEBUG (which prints the handshake headers)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        return None


_QUIET_WS_LOGGER = _QuietLogger(logging.getLogger("bridge.realtime.ws"), {})


def _safe_text(exc: BaseException) -> str:
    # Connection errors carry host and port; an invalid-URI error would carry the URL.
    return redact_url(str(exc))[:200]


__all__ = [
    "AUTH_CLOSE_CODES", "AUTH_HTTP", "MAX_MESSAGE", "REJECT_CLOSE_CODES", "REJECT_HTTP",
    "RETRY_CLOSE_CODES", "Connector", "RealtimeRejected", "Session", "close_quietly",
    "lost_reason",
]
