"""The bridge runs the caller's turn: ``[turns]`` of a dialplan, one ``TurnDriver`` per call.

Theory of operation
-------------------
Installed when the plan's server does not answer turns by itself
(``[agent.turn_detection] type = "none"`` or ``create_response = false``), or when the plan
asks for an early barge-in. It sits in front of the call's inbound path (``on_frame``:
every leg frame goes upstream exactly as before, and through the ``TurnDetector`` too) and
beside the call's upstream handlers:

* **Ending the turn** (``type = "none"`` only): the detector's ``TurnEnded`` sends
  ``input_audio_buffer.commit``. Under server VAD the server commits.
* **Deciding the reply**: on ``input_audio_buffer.committed`` the hook is asked (at once,
  or once the caller's transcript is in when the plan transcribes, at most
  ``transcript_wait_ms`` later): answer, answer with extra instructions, stay silent, or a
  tool first whose output goes into the reply's instructions. One decision at a time per
  call, in the call's task group; a hook that fails or overruns its time is logged and
  counted, and the caller is answered plainly (never left in silence by a bug).
* **Barge-in**: the detector's ``SpeechBegan`` while agent audio plays (or a response is
  active) goes through the call's own barge-in (``Call.barge_in``, the path the server's
  ``speech_started`` takes), as the bridge's own interruption: it cancels the response
  itself. Under ``type = "none"`` this is the only barge-in there is; under server VAD it
  runs only with ``early_barge_in = true`` and beats the server's event by the server's
  detection delay plus a round trip. If the server's ``speech_started`` does not follow
  within ``CONFIRM_S`` the bridge took a noise for speech: no turn will come, so the agent
  is asked to go on (counted).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bridge import metrics
from bridge.call.events import TurnDecided
from bridge.call.timers import OneShot, clock_timeout
from bridge.call.turnvad import VAD_RATES, SpeechBegan, TurnDetector, TurnEnded
from bridge.codecs import g711
from bridge.dialplans.turns import TurnContext, TurnsConfig
from bridge.logthrottle import Throttle
from bridge.realtime import events as ev

if TYPE_CHECKING:
    from bridge.call.call import Call

log = logging.getLogger(__name__)
#: what callers' turns make us log, bounded across all calls
_throttle = Throttle(log)

#: how long a Python hook or a tool may take before the caller is answered without it
HOOK_TIMEOUT_S = 5.0
#: how long the server has to confirm an early barge-in with its own speech_started
CONFIRM_S = 1.5
RESUME = ("A noise on the line interrupted you; the caller did not speak. Carry on briefly "
          "from where you were cut off.")


class TurnDriver:
    """The bridge's turn handling for one call (see the module docstring)."""

    def __init__(self, call: Call, config: TurnsConfig) -> None:
        self.call = call
        self.config = config
        td = call.profile.turn_detection
        #: no server VAD: the bridge ends turns and is the only one to hear barge-ins
        self.manual = td is None
        #: the bridge decides the reply (else it only barges in early)
        self.decides = td is None or not td.create_response
        self.transcribes = call.profile.transcription_model is not None
        leg = call.leg
        self._law = leg.carry if leg.carry != "pcm16" else ""
        listen = self.manual or config.early_barge_in
        self.detector: TurnDetector | None = None
        if listen and leg.sample_rate in VAD_RATES:
            self.detector = TurnDetector(
                leg.sample_rate, aggressiveness=config.aggressiveness,
                min_speech_ms=config.min_speech_ms, end_silence_ms=config.end_silence_ms,
                frame_ms=leg.frame_ms)
        elif listen:
            call.log.warning("no bridge-side VAD at %d Hz", leg.sample_rate)
        self._inbound = call.inbound.on_frame
        self._pending: str | None = None          # committed item waiting for its transcript
        #: caller transcripts by item (None: the transcription failed)
        self._transcripts: dict[str, str | None] = {}
        self._wait = OneShot(call.clock, self._transcript_overdue)
        self._confirm = OneShot(call.clock, self._unconfirmed)
        #: turns decided, and the media-clock times the detector heard speech start
        self.turns = 0
        self.speech_began: deque[float] = deque(maxlen=64)
        self.local_barge_ins: deque[float] = deque(maxlen=64)

    # ------------------------------------------------------------------ wiring
    def install(self, handlers: dict[type, Callable[[Any], None]],
                async_handlers: dict[type, Callable[[Any], Awaitable[None]]]) -> None:
        """Take the leg's frames first, and see the upstream events deciding needs."""
        self.call.on_leg_audio = self.on_frame
        if self.detector is not None and not self.manual:
            inner = async_handlers[ev.SpeechStarted]

            async def speech_started(event: ev.SpeechStarted) -> None:
                self._confirm.cancel()          # the server heard the caller too
                await inner(event)

            async_handlers[ev.SpeechStarted] = speech_started
        if not self.decides:
            return
        handlers[ev.InputCommitted] = self._on_committed
        for kind in (ev.UserTranscript, ev.UserTranscriptFailed):
            handlers[kind] = self._chain(handlers.get(kind))

    def _chain(self, inner: Callable[[Any], None] | None) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            if inner is not None:
                inner(event)
            self._on_transcript(event.item_id,
                                getattr(event, "transcript", None))
        return handler

    # ------------------------------------------------------------------ caller audio
    def on_frame(self, frame: bytes) -> None:
        self._inbound(frame)
        detector, call = self.detector, self.call
        if detector is None or not call.state.talking or not call.upstream_usable:
            return
        pcm = g711.decode(self._law, frame) if self._law else frame
        event = detector.feed(pcm, call.clock.time())
        if isinstance(event, SpeechBegan):
            if self.manual:          # no speech_started will come: the caller is not silent
                call.caller_active(True)
            self._on_speech_began(event)
        elif isinstance(event, TurnEnded) and self.manual:
            call.log.debug("end of the caller's turn (%d ms of speech)", event.speech_ms)
            call.caller_active(False)
            call.spawn(self._commit(), "turn-commit")

    def _on_speech_began(self, event: SpeechBegan) -> None:
        call = self.call
        self.speech_began.append(event.at)
        client = call.client
        if call.playout.playing or (client is not None and client.response_active):
            self.local_barge_ins.append(event.at)
            metrics.LOCAL_BARGE_INS.inc()
            call.spawn(call.barge_in(event.at, own=True), "local-barge-in")
            if not self.manual:
                self._confirm.arm(CONFIRM_S)

    def _unconfirmed(self) -> None:
        """The server never heard the speech that cut the agent off (a noise passed for
        it): no turn will come, so the agent is asked to go on rather than leave the
        caller in silence."""
        call = self.call
        if call.state.over:
            return
        metrics.LOCAL_BARGE_INS_UNCONFIRMED.inc()
        _throttle.log(logging.INFO, "unconfirmed", "[%s] early barge-in not confirmed by "
                      "the server: the agent goes on", call.call_id)
        call.spawn(self._resume(), "barge-in-resume")

    async def _resume(self) -> None:
        client, call = self.call.client, self.call
        if client is None or not call.upstream_usable or call.state.over:
            return
        if client.response_active:
            return
        await client.create_response(instructions=f"{call.profile.instructions}\n\n{RESUME}")

    def input_cleared(self) -> None:
        """The caller's uncommitted audio was dropped (hold): a turn in progress is gone."""
        if self.detector is not None:
            self.detector.reset()

    async def _commit(self) -> None:
        client = self.call.client
        if client is not None and self.call.upstream_usable:
            await client.commit_input_audio()

    # ------------------------------------------------------------------ deciding
    def _on_committed(self, event: ev.InputCommitted) -> None:
        if self.transcribes and self.config.transcript_wait_ms > 0:
            if event.item_id in self._transcripts:
                self._decide(event.item_id)
                return
            if self._pending is not None:            # a newer turn: decide the old one now
                self._decide(self._pending)
            self._pending = event.item_id
            self._wait.arm(self.config.transcript_wait_ms / 1000)
            return
        self._decide(event.item_id)

    def _on_transcript(self, item_id: str, transcript: str | None) -> None:
        self._transcripts[item_id] = transcript
        while len(self._transcripts) > 8:           # only the last few turns matter
            del self._transcripts[next(iter(self._transcripts))]
        if item_id == self._pending:
            self._decide(item_id)

    def _transcript_overdue(self) -> None:
        if self._pending is not None and not self.call.state.over:
            self._decide(self._pending)

    def _decide(self, item_id: str) -> None:
        if item_id == self._pending:
            self._pending = None
            self._wait.cancel()
        self.turns += 1
        call = self.call
        transcript = self._transcripts.get(item_id)
        turn = TurnContext(call_id=call.call_id, caller=call.caller, called=call.called,
                           item_id=item_id, transcript=transcript, turn=self.turns)
        call.spawn(self._reply(turn), "turn-reply")

    async def _reply(self, turn: TurnContext) -> None:
        call, config = self.call, self.config
        outcome = "answered"
        try:
            async with clock_timeout(call.clock, HOOK_TIMEOUT_S):
                extra = await self._ask(turn)
        except Exception as exc:        # the hook's bug or overrun: answer anyway
            _throttle.log(logging.WARNING, "hook-failed", "[%s] turn hook %s failed: %r; "
                          "answering plainly", call.call_id, config.hook, exc)
            outcome, extra = "failed", ""
        if extra is None:
            outcome = "silent"
            _throttle.log(logging.INFO, "hook-silent", "[%s] turn %d: the hook keeps the "
                          "agent silent", call.call_id, turn.turn)
        metrics.TURNS_DECIDED.labels(hook=config.kind, outcome=outcome).inc()
        call.emit(TurnDecided(call_id=call.call_id, turn=turn.turn, hook=config.kind,
                              outcome=outcome))
        client = call.client
        if extra is None or client is None or not call.upstream_usable or call.state.over:
            return
        base = call.profile.instructions
        await client.create_response(
            instructions=f"{base}\n\n{extra}".strip() if extra else None)

    async def _ask(self, turn: TurnContext) -> str | None:
        """The hook's decision: None to stay silent, else extra instructions ("" none)."""
        config = self.config
        if config.kind == "instructions":
            return config.instructions or ""
        if config.kind == "python" and config.python is not None:
            verdict = await config.python(turn)
            if verdict is False:
                return None
            return verdict if isinstance(verdict, str) else ""
        if config.kind == "tool" and config.tool is not None:
            return await self._tool_first(config.tool, turn)
        return ""

    async def _tool_first(self, name: str, turn: TurnContext) -> str:
        call = self.call
        registry = call.dialplan.tools
        tool = registry.get(name)
        takes = tool is not None and "transcript" in tool.parameters.get("properties", {})
        args = {"transcript": turn.transcript or ""} if takes else {}
        result = await registry.dispatch(name, json.dumps(args), call.control)
        _throttle.log(logging.INFO, "tool-first", "[%s] turn %d: tool %s first (%s)",
                      call.call_id, turn.turn, name,
                      "ok" if result.ok else result.error)
        return (f"Before you answer the caller's last turn, the {name} tool was run on it. "
                f"Its result: {result.output}")


__all__ = ["CONFIRM_S", "HOOK_TIMEOUT_S", "RESUME", "TurnDriver"]
