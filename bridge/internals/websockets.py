"""Every low-level name of ``websockets`` the Realtime client relies on, in one place.

Theory of operation
-------------------
The Realtime client writes without awaiting: every client event is one unfragmented text
frame, handed to the connection's sans-I/O protocol object and flushed to the transport in
the same step (what ``websockets``' own ``send`` does, minus the coroutine and the drain).
Caller audio -- 50 frames a second per call, from a datagram callback -- goes faster still:
its frame is built here (header, fresh masking key, masked payload) and written straight to
the transport, because ``Frame.serialize`` (a dataclass, a BytesIO and a ``getrandom``
syscall per frame) cost as much as the base64. Reading, the client wants a hook called as
bytes arrive, before websockets parses them (a busy process's media clock delivers a due
tick there). None of that is ``websockets``' public API:

* ``ClientConnection``: subclassed to override ``data_received``; its ``protocol`` and
  ``transport`` attributes (``transport`` of any ``Connection``, to drop one at once);
* ``Protocol``: ``state``, ``send_text``, ``send_ping`` (the keepalive), ``data_to_send``,
  and the attributes ``writes`` (bytes pending), ``extensions`` and
  ``expect_continuation_frame`` (the fast path is only correct without either);
* ``State.OPEN``; ``utils.apply_mask`` (and the C ``speedups.apply_mask`` when built).

Nothing else in the project touches them: the names below are the only way in.
:func:`check` looks each one up on the library object it is given (attributes an
``__init__`` or ``connection_made`` assigns count as present when that code assigns them)
and raises :class:`~bridge.internals.IncompatibleLibrary` naming every one that is
missing. It runs when this module is imported, so a websockets release that renamed one
fails at start-up, not in the middle of a call; ``pyproject.toml`` bounds the version to
the releases checked here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import struct
import types
from collections.abc import Callable

import websockets
import websockets.asyncio.client
import websockets.asyncio.connection
import websockets.protocol
import websockets.utils
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.protocol import State

from bridge.internals import IncompatibleLibrary
from bridge.internals import missing_names as _missing

try:   # websockets' C masking, as its own framing uses
    from websockets.speedups import apply_mask
except ImportError:   # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

#: dotted path from the library object -> names that object must have
REQUIRED: dict[str, tuple[str, ...]] = {
    "asyncio.client.ClientConnection": ("data_received", "protocol", "transport"),
    "asyncio.connection.Connection": ("transport",),
    "protocol.Protocol": ("state", "send_text", "send_ping", "data_to_send", "writes",
                          "extensions", "expect_continuation_frame"),
    "protocol.State": ("OPEN",),
    "utils": ("apply_mask",),
}

#: The methods whose code counts as assigning an instance attribute.
_ASSIGNING = ("__init__", "connection_made")


def missing_names(library: object) -> list[str]:
    """``path.name`` for every name ``library`` (the ``websockets`` package) lacks."""
    return _missing(library, REQUIRED, assigning=_ASSIGNING)


def check(library: object) -> None:
    """Raise :class:`IncompatibleLibrary` naming every name ``library`` lacks."""
    missing = missing_names(library)
    if missing:
        version = getattr(library, "__version__", "?")
        raise IncompatibleLibrary(
            f"the installed websockets ({version}) lacks names the Realtime client relies "
            "on: " + ", ".join(missing))


# ---- framing ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def text_frame_header(length: int) -> bytes:
    """FIN + text opcode and a masked length (RFC 6455 §5.2; client frames are masked)."""
    if length < 126:
        return struct.pack("!BB", 0x81, 0x80 | length)
    if length < 65536:
        return struct.pack("!BBH", 0x81, 0x80 | 126, length)
    return struct.pack("!BBQ", 0x81, 0x80 | 127, length)


class Masks:
    """Masking keys for client frames. RFC 6455 §5.3: the client MUST pick a fresh key
    for each frame, unpredictable, "derived from a strong source of entropy": each key is
    4 fresh bytes of ``os.urandom``, fetched 1 KiB at a time instead of one syscall per
    frame."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def key(self) -> bytes:
        """The next fresh 4-byte masking key."""
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(1024), 0
        self._at = at + 4
        return self._pool[at:at + 4]


def text_frame(payload: bytes, key: bytes) -> bytes:
    """One complete masked client text frame carrying ``payload``, masked with ``key``."""
    return b"".join((text_frame_header(len(payload)), key, apply_mask(payload, key)))


# ---- one connection -----------------------------------------------------------------------

def abort_now(ws: Connection) -> None:
    """Drop the TCP connection under ``ws`` at once: no close frame (the peer sees 1006).
    Either side: a client connection, or a server's (the emulator and test servers)."""
    ws.transport.abort()


class HookedConnection(ClientConnection):
    """A connection that calls ``hook`` as bytes arrive, before websockets parses them.
    Set once the handshake is done (the handshake's own bytes need no hook)."""

    hook: Callable[[], object] | None = None

    def data_received(self, data: bytes) -> None:
        hook = self.hook
        if hook is not None:
            hook()
        super().data_received(data)


SENT, CLOSED, BACKLOGGED = 0, 1, 2


class FrameWriter:
    """Writes client text frames to one open connection without awaiting."""

    __slots__ = ("_masks", "_proto", "_transport", "ws")

    def __init__(self, ws: ClientConnection, masks: Masks) -> None:
        self.ws = ws
        self._proto = ws.protocol
        self._transport = ws.transport
        self._masks = masks

    def is_open(self) -> bool:
        return self._proto.state is State.OPEN

    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel (0 once the transport closes)."""
        transport = self._transport
        if transport.is_closing():
            return 0
        return int(transport.get_write_buffer_size())

    def send(self, payload: bytes) -> bool:
        """One text frame through websockets' framing; False unless the socket is open."""
        proto = self._proto
        if proto.state is not State.OPEN:
            return False
        proto.send_text(payload)
        for chunk in proto.data_to_send():
            self._transport.write(chunk)
        return True

    def ping(self) -> bool:
        """A WebSocket ping (empty payload), written now; False unless the socket is open.
        The pong is consumed by websockets; its bytes reaching ``HookedConnection`` are
        what proves the socket alive."""
        proto = self._proto
        if proto.state is not State.OPEN:
            return False
        proto.send_ping(b"")
        for chunk in proto.data_to_send():
            self._transport.write(chunk)
        return True

    def send_audio(self, payload: bytes, high_water: int) -> int:
        """The hot path of caller audio, checks and frame in one call: ``SENT``, or
        ``CLOSED`` (the socket is not open) or ``BACKLOGGED`` (more than ``high_water``
        bytes wait for the kernel) and nothing was written."""
        proto = self._proto
        if proto.state is not State.OPEN:
            return CLOSED
        transport = self._transport
        if transport.get_write_buffer_size() > high_water:
            return BACKLOGGED
        if proto.extensions or proto.expect_continuation_frame or proto.writes:
            self.send_fast(payload)
            return SENT
        masks = self._masks                       # ``Masks.key`` inlined
        at = masks._at
        if at + 4 > len(masks._pool):
            masks._pool, at = os.urandom(1024), 0
        masks._at = at + 4
        key = masks._pool[at:at + 4]
        transport.write(b"".join((text_frame_header(len(payload)), key,
                                  apply_mask(payload, key))))
        return SENT

    def send_fast(self, payload: bytes) -> None:
        """One text frame built here (the caller has checked the socket is open). Anything
        the protocol has pending goes first (checked before calling data_to_send, which
        allocates a list every time)."""
        proto = self._proto
        if proto.extensions or proto.expect_continuation_frame:
            self.send(payload)          # not expected (compression=None); be correct
            return
        transport = self._transport
        if proto.writes:
            for chunk in proto.data_to_send():
                transport.write(chunk)
        transport.write(text_frame(payload, self._masks.key()))

    async def abort(self) -> None:
        """Drop the TCP connection at once (no close handshake) and let it finish."""
        abort_now(self.ws)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.ws.wait_closed()


#: The installed library, as :func:`check` sees it.
LIBRARY: types.ModuleType = websockets

check(LIBRARY)

__all__ = [
    "BACKLOGGED", "CLOSED", "LIBRARY", "REQUIRED", "SENT", "FrameWriter", "HookedConnection",
    "Masks", "abort_now",
    "apply_mask", "check", "missing_names", "text_frame", "text_frame_header",
]
