"""What every view of the web app shares, held in one typed object on the app.

``create_app`` stores a ``WebState`` in ``app.extensions["voicebridge"]``; views reach it
with ``web_state()`` (inside a request or an app context) instead of closing over
``create_app``'s arguments, so the routes can live in blueprints of their own modules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from quart import current_app

from bridge.config import HttpSettings, Settings
from bridge.web.calltokens import CallTokens
from bridge.web.ratelimit import RateLimiter

if TYPE_CHECKING:
    from bridge.call.call import Call
    from bridge.call.cluster import ClusterNode
    from bridge.call.leg import MediaLeg
    from bridge.call.records import CallRecord, RecordStore
    from bridge.dialplans.plan import DialplanSet
    from bridge.web.events import EventListener
    from bridge.web.webrtc_calls import WebRtcCalls

EXTENSION = "voicebridge"

#: ``registrations()``: one dict per SIP account (state, registrar, expiry, last error).
Lines = Callable[[], list[dict[str, Any]]]

#: ``readiness()`` returns check name -> (ok, detail).
Readiness = Callable[[], Awaitable[dict[str, tuple[bool, str]]]]


class Manager(Protocol):
    """What the app needs of ``bridge.call.manager.CallManager``."""

    @property
    def calls(self) -> Mapping[str, Call]: ...

    @property
    def store(self) -> RecordStore: ...

    @property
    def dialplans(self) -> DialplanSet: ...

    def can_admit(self) -> bool: ...

    async def handle(self, leg: MediaLeg) -> CallRecord: ...

    def hang_up(self, call_id: str, reason: str = "operator") -> bool: ...

    def add_listener(self, listener: EventListener) -> None: ...

    def remove_listener(self, listener: EventListener) -> None: ...


@dataclass(frozen=True)
class WebState:
    """The app's shared state: the calls, the browser calls' runner, the settings, and
    the softphone's call tokens and per-address rate limit."""

    manager: Manager
    settings: Settings
    webrtc: WebRtcCalls
    tokens: CallTokens
    limiter: RateLimiter
    readiness: Readiness | None = None
    registrations: Lines | None = None
    #: The cluster's shared live state (a PostgreSQL record store only), else None.
    cluster: ClusterNode | None = None

    @property
    def http(self) -> HttpSettings:
        return self.settings.http


def web_state() -> WebState:
    """The running app's ``WebState`` (needs a request or app context)."""
    state = current_app.extensions[EXTENSION]
    if not isinstance(state, WebState):
        raise TypeError(f"app.extensions[{EXTENSION!r}] is not a WebState")
    return state


__all__ = ["EXTENSION", "Lines", "Manager", "Readiness", "WebState", "web_state"]
