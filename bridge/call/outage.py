"""An upstream outage as the caller lives it: hold signal on, then measured.

The Realtime client reconnects by itself (``bridge.realtime.recovery``); the call's part
is what the caller hears and what is counted. From the first ``Reconnecting`` of an
outage the playout loops the dialplan's hold signal whenever it has nothing else to play
(``bridge.call.hold``); when a new session is ready (``Reconnected``) or the fallback
takes over, the hold stops and the outage is counted: its length
(``voicebridge_upstream_outage_seconds``), the longest silence the caller heard during it,
measured on the frames the leg was given (``voicebridge_outage_silence_seconds``), and a
line in the call record's errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge import metrics
from bridge.call.hold import hold_pcm

if TYPE_CHECKING:
    from bridge.call.call import Call


class Outage:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._since: float | None = None
        self._hold = b""
        #: (seconds, longest silence heard, outcome) of each outage of the call
        self.history: list[tuple[float, float, str]] = []

    @property
    def active(self) -> bool:
        return self._since is not None

    def begin(self) -> None:
        """The upstream is gone and being reconnected: hold signal on."""
        call = self._call
        if self._since is not None:
            return
        self._since = call.clock.time()
        call.playout.longest_silence_s(reset=True)
        if not self._hold:
            self._hold = hold_pcm(call.dialplan.fallback.hold, call.leg.sample_rate)
        call.playout.set_hold(self._hold)

    def end(self, outcome: str) -> None:
        """The outage is over (``reconnected`` or ``fallback``): hold off, counted."""
        call = self._call
        call.playout.set_hold(None)
        since, self._since = self._since, None
        if since is None:
            return
        took = call.clock.time() - since
        silence = call.playout.longest_silence_s(reset=True)
        self.history.append((took, silence, outcome))
        metrics.UPSTREAM_OUTAGE.observe(took)
        metrics.OUTAGE_SILENCE.observe(silence)
        call.record.errors.append(
            f"upstream away {took:.1f} s ({outcome}; longest silence heard {silence:.1f} s)")
        call.log.info("upstream outage of %.1f s ended: %s; longest silence heard %.1f s",
                      took, outcome, silence)


__all__ = ["Outage"]
