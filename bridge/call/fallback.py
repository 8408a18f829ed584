"""When the agent cannot be had: announce, then transfer to a person or hang up.

If the upstream cannot be had at connect (an error, or no session within
``connect_timeout_s``) or is lost beyond reconnect, the dialplan's fallback runs: the
agent's audio stops, its announcement (or tones; a default beep pattern when neither is
usable) is played through the playout at the next tick, the upstream is closed, and once
the announcement has played (bounded) the call is transferred to the fallback target or
hung up with ``upstream_lost``. Before and meanwhile the comfort beep covers every wait,
so no failure path leaves the caller in more than 2 s of silence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.call.events import FallbackStarted
from bridge.call.state import EndReason, Trigger
from bridge.call.timers import clock_timeout
from bridge.dialplans.announce import load_announcement

if TYPE_CHECKING:
    from bridge.call.call import Call
    from bridge.realtime.auth import TokenProvider
    from bridge.realtime.config import RealtimeTarget

DEFAULT_FALLBACK_TONES = "440:300,0:200,440:300,0:200,440:300"
#: How much longer than a drain the announcement may take to play.
ANNOUNCEMENT_EXTRA_S = 60.0


class Fallback:
    def __init__(self, call: Call) -> None:
        self._call = call
        #: where a voicemail's transcription session goes (set by the call manager)
        self.transcription: tuple[RealtimeTarget | None, TokenProvider | None] = (None, None)

    async def run(self, reason: str) -> None:
        call = self._call
        if call.state.over or call.record.fallback is not None:
            return
        if not call.state.fire(Trigger.UPSTREAM_FAILED):
            return
        call.inbound.close()
        call.record.fallback = reason
        call.log.warning("running the fallback: %s", reason)
        fb = call.dialplan.fallback
        call.outage.end("fallback")
        call.playout.barge_in()
        call.playout.comfort = False
        if not self._voicemail_wanted():
            call.playout.push_leg_audio(self.announcement(fb.announcement, fb.tones))
        call.emit(FallbackStarted(call_id=call.call_id, reason=reason))
        client = call.client
        if client is not None:
            try:
                async with clock_timeout(call.clock, call.close_timeout_s):
                    await client.close()
            except Exception as exc:
                call.log.warning("closing the lost upstream failed: %r", exc)
        if self._voicemail_wanted():
            await self._voicemail()
            return
        if not await call.control.drained(ANNOUNCEMENT_EXTRA_S):
            call.log.warning("the fallback announcement did not finish playing")
        if fb.action == "transfer" and fb.target:
            uri = call.dialplan.targets.get(fb.target, fb.target)
            outcome = await call.control.transfer_uri(uri, fb.target)
            if outcome.ok:
                return
        call.end(EndReason.UPSTREAM_LOST, reason)

    def _voicemail_wanted(self) -> bool:
        vm = self._call.dialplan.voicemail
        return vm is not None and vm.when in ("upstream_down", "after_hours")

    async def _voicemail(self) -> None:
        """The plan's ``[voicemail]`` takes a message instead (bridge.call.voicemail)."""
        from bridge.call.voicemail import VoicemailCall  # noqa: PLC0415

        call = self._call
        assert call.dialplan.voicemail is not None
        call.clock.unsubscribe(call.playout)       # the voicemail's playout has the leg now
        target, tokens = self.transcription
        driver = VoicemailCall(call.leg, call.dialplan.name, call.dialplan.voicemail, target,
                               call.clock, store=call.store, record=call.record,
                               on_event=call.emit, token_provider=tokens)
        await driver.take()
        if driver.hung_up:
            call.end(EndReason.CALLER_HANGUP, "during the voicemail")
        else:
            call.end(EndReason.UPSTREAM_LOST, "voicemail taken")

    def announcement(self, announcement: str | None, tones: str | None) -> bytes:
        call = self._call
        rate = call.leg.sample_rate
        for spec in (announcement, tones):
            if spec:
                try:
                    return load_announcement(spec, rate)
                except (OSError, ValueError) as exc:
                    call.log.error("fallback announcement %r unusable: %r", spec, exc)
        return load_announcement(DEFAULT_FALLBACK_TONES, rate)


__all__ = ["DEFAULT_FALLBACK_TONES", "Fallback"]
