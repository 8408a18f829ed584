"""Browser calls: each answered offer's call runs in a task the app holds until hang-up.

``/webrtc/offer`` answers the browser and hands the leg to ``WebRtcCalls.start``, which
runs the leg in a task of its own (the HTTP request returns the answer at once): it waits
for the leg's ICE and DTLS to connect, at most ``media_timeout_s``, and only then runs
``manager.handle(leg)``, which opens the call's Realtime session and greets the caller. An
offer whose media never connects costs a peer connection for that long, never an
upstream session; it is closed and counted
(``voicebridge_calls_rejected_total{reason="webrtc_media_timeout"}``). The runner also
listens to the manager's call events and pushes the events of each browser's own call
into that browser's ``events`` data channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from bridge import metrics
from bridge.aio import cancel_all
from bridge.errors import CallRejected
from bridge.logthrottle import Throttle
from bridge.web.events import WebEvent, call_id_of, starts_a_call, wire_form
from bridge.webrtc.leg import WebRtcLeg

if TYPE_CHECKING:
    from bridge.web.state import Manager

log = logging.getLogger(__name__)
_throttled = Throttle(log)

#: How long ``close()`` waits for the calls it cancelled (a leg's close can hang on ICE).
CLOSE_TIMEOUT_S = 5.0
#: How long a leg's ICE and DTLS may take to connect (``[webrtc] media_timeout_ms``).
MEDIA_TIMEOUT_S = 10.0


class WebRtcCalls:
    """Runs each browser call's ``manager.handle(leg)`` in a task the app holds."""

    def __init__(self, manager: Manager, *, media_timeout_s: float = MEDIA_TIMEOUT_S) -> None:
        self.manager = manager
        self.media_timeout_s = media_timeout_s
        self.tasks: set[asyncio.Task[object]] = set()
        self._leg_of_call: dict[str, WebRtcLeg] = {}
        self._legs: set[WebRtcLeg] = set()
        manager.add_listener(self._forward)

    def start(self, leg: WebRtcLeg) -> None:
        self._legs.add(leg)
        run: Coroutine[object, object, object] = self._run(leg)   # a Task[object], as
        task = asyncio.ensure_future(run)                         # ``cancel_all`` takes
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, leg: WebRtcLeg) -> None:
        try:
            if not await leg.wait_media(self.media_timeout_s):
                metrics.CALLS_REJECTED.labels(reason="webrtc_media_timeout").inc()
                _throttled.log(logging.WARNING, "media-timeout",
                               "webrtc %s: media not connected within %.1f s, closed",
                               leg.info.call_id, self.media_timeout_s)
                return
            await self.manager.handle(leg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # CallRejected, or a call that failed to start
            if isinstance(exc, CallRejected):
                metrics.CALLS_REJECTED.labels(reason="webrtc_busy").inc()
            _throttled.log(logging.WARNING, "not-run", "webrtc %s: call not run: %r",
                           leg.info.call_id, exc)
            leg.send_event({"type": "call.ended", "reason": "rejected"})
        finally:
            await leg.close()
            self._legs.discard(leg)
            for call_id in [c for c, lg in self._leg_of_call.items() if lg is leg]:
                del self._leg_of_call[call_id]

    def _forward(self, event: WebEvent) -> None:
        """Push the events of a browser's own call into its ``events`` data channel."""
        call_id = call_id_of(event)
        leg = self._leg_of_call.get(call_id)
        if leg is None and starts_a_call(event):
            call = self.manager.calls.get(call_id)
            candidate = call.leg if call is not None else None
            if isinstance(candidate, WebRtcLeg) and candidate in self._legs:
                leg = self._leg_of_call[call_id] = candidate
        if leg is not None:
            leg.send_event(wire_form(event))

    async def close(self) -> None:
        """Stop listening, cancel the running calls and wait (a bounded time) for them."""
        self.manager.remove_listener(self._forward)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                errors = await cancel_all(list(self.tasks))
        except TimeoutError:
            log.warning("webrtc: %d call(s) still closing after %.0f s",
                        len(self.tasks), CLOSE_TIMEOUT_S)
            return
        for exc in errors:
            log.warning("webrtc: a call ended with %r", exc)


__all__ = ["WebRtcCalls"]
