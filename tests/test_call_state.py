"""The call's lifecycle: the transition table, and one ending per reason on the virtual clock.

Each ending runs a whole call on a ``Rig`` (virtual media clock, scripted session): the
call is brought to the state the ending happens in, the ending is caused the way it is in
production (the far end hangs up, a tool, a key, a limit on the clock, the upstream lost,
an operator, a shutdown, our own bug), and the record must carry that reason. The same
run with that one transition deleted from the table must NOT end for that reason, and must
log the illegal transition: the table, not a flag, decides.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bridge.call.leg import TransferOutcome
from bridge.call.state import (
    TRANSITIONS,
    CallState,
    CallStateMachine,
    EndReason,
    Trigger,
)
from bridge.realtime import events as ev
from tests.support.audio import tone
from tests.support.call_endings import (
    Ending,
    agent_hangs_up,
    caller_hangs_up,
    key_hangs_up,
    limit_on_the_clock,
    operator,
    own_bug,
    session_expires,
    shutdown,
    tool_transfers,
    upstream_lost,
)
from tests.support.call_rig import OPERATOR, Rig, ScriptedSession, make_plan

S, E = CallState, EndReason
log = logging.getLogger("test.state")


# ----------------------------------------------------------------------------- the machine
def test_a_call_walks_the_happy_path() -> None:
    m = CallStateMachine(log)
    for trigger, state in ((Trigger.START, S.CONNECTING), (Trigger.GREET, S.GREETING),
                           (Trigger.GREETED, S.CONVERSING),
                           (Trigger.RECONNECTING, S.RECONNECTING),
                           (Trigger.RECONNECTED, S.CONVERSING),
                           (Trigger.TRANSFER, S.TRANSFERRING),
                           (Trigger.TRANSFER_FAILED, S.CONVERSING),
                           (E.CALLER_HANGUP, S.ENDING), (Trigger.FINISHED, S.ENDED)):
        assert m.fire(trigger), trigger
        assert m.state is state
    assert m.end_reason is E.CALLER_HANGUP and m.over and not m.talking


def test_an_illegal_transition_is_logged_and_changes_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    m = CallStateMachine(log)
    m.fire(Trigger.START)
    with caplog.at_level(logging.ERROR, "test.state"):
        assert not m.fire(E.TRANSFERRED)          # nothing was being transferred
        assert not m.fire(Trigger.RECONNECTED)
    assert m.state is S.CONNECTING and m.end_reason is None
    assert [r.getMessage() for r in caplog.records] == [
        "illegal call transition: connecting on transferred",
        "illegal call transition: connecting on reconnected"]


def test_the_first_end_reason_wins_quietly(caplog: pytest.LogCaptureFixture) -> None:
    m = CallStateMachine(log)
    m.fire(Trigger.START)
    m.fire(Trigger.CONNECTED)
    assert m.fire(E.MAX_DURATION)
    with caplog.at_level(logging.ERROR, "test.state"):
        assert not m.fire(E.CALLER_HANGUP)
    assert m.end_reason is E.MAX_DURATION and caplog.records == []


def test_every_live_state_can_end_and_ended_is_final() -> None:
    live = [s for s in S if s not in (S.ENDING, S.ENDED)]
    for state in live:
        for reason in (E.CALLER_HANGUP, E.SHUTDOWN, E.OPERATOR, E.ERROR, E.MAX_DURATION):
            assert TRANSITIONS[state][reason] is S.ENDING
    assert TRANSITIONS[S.ENDED] == {}
    assert set(TRANSITIONS[S.ENDING]) == {Trigger.FINISHED}
    # Talking states let caller audio upstream; connecting and falling back do not.
    m = CallStateMachine(log)
    m.state = S.FALLING_BACK
    assert not m.talking
    m.state = S.GREETING
    assert m.talking


# ----------------------------------------------------------------------------- endings
# reason -> (the state it ends from, how, plan options)
CASES: dict[EndReason, tuple[CallState, Ending, dict[str, float | str]]] = {
    E.CALLER_HANGUP: (S.CONVERSING, caller_hangs_up, {}),
    E.AGENT_HANGUP: (S.CONVERSING, agent_hangs_up, {}),
    E.TRANSFERRED: (S.TRANSFERRING, tool_transfers, {}),
    E.CALLER_DTMF_HANGUP: (S.CONVERSING, key_hangs_up, {}),
    E.MAX_DURATION: (S.CONVERSING, limit_on_the_clock, {"max_call_s": 1.0}),
    E.CALLER_SILENCE: (S.CONVERSING, limit_on_the_clock, {"silence_s": 1.0}),
    E.UPSTREAM_LOST: (S.FALLING_BACK, upstream_lost, {"fallback": "hangup"}),
    E.OPERATOR: (S.CONVERSING, operator, {}),
    E.SHUTDOWN: (S.CONVERSING, shutdown, {}),
    E.ERROR: (S.CONVERSING, own_bug, {}),
    E.SESSION_EXPIRED: (S.CONVERSING, session_expires, {}),
}


def test_every_end_reason_has_a_case() -> None:
    assert set(CASES) == set(EndReason)


async def run_ending(tmp_path: Path, reason: EndReason) -> tuple[Rig, str | None]:
    state, ending, options = CASES[reason]
    rig = Rig(make_plan(tmp_path, **options))  # type: ignore[arg-type]
    await rig.start()
    await rig.tick(2)
    assert rig.call.state.state is S.CONVERSING
    await ending(rig)
    # The state the ending happened in (the machine is past it when it took).
    if rig.call.ended:
        assert rig.call.record.end_reason == reason.value
    elif rig.call.state.state is not S.FALLING_BACK or state is not S.FALLING_BACK:
        assert rig.call.state.state in (state, S.CONVERSING)
    reached = rig.call.record.end_reason
    if not rig.call.ended:                # end it another way, to clean up
        rig.call.end(E.SHUTDOWN if reason is E.OPERATOR else E.OPERATOR)
    if rig.task is not None and not rig.task.done():
        await rig.finish()
    return rig, reached


@pytest.mark.parametrize("reason", list(CASES), ids=lambda r: r.value)
async def test_each_reason_ends_the_call_from_its_state(tmp_path: Path,
                                                          reason: EndReason) -> None:
    rig, reached = await run_ending(tmp_path, reason)
    assert reached == reason.value
    assert rig.call.state.state is S.ENDED
    assert rig.call.record.ended_at is not None
    assert rig.clock.subscribers == 0


@pytest.mark.parametrize("reason", list(CASES), ids=lambda r: r.value)
async def test_each_reason_needs_its_transition(tmp_path: Path, reason: EndReason,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    state = CASES[reason][0]
    monkeypatch.delitem(TRANSITIONS[state], reason)
    with caplog.at_level(logging.ERROR, "bridge.call.call"):
        rig, reached = await run_ending(tmp_path, reason)
    assert reached != reason.value
    assert any(f"illegal call transition: {state.value} on {reason.value}" in r.getMessage()
               for r in caplog.records)
    assert rig.call.record.ended_at is not None       # it still ended cleanly


# ----------------------------------------------------------------------------- sequences
class GatedSession(ScriptedSession):
    """Connects only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def connect(self) -> None:
        await self.gate.wait()
        await super().connect()


async def test_a_transfer_key_while_connecting_that_fails_leaves_a_call_that_talks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(make_plan(tmp_path), transfer_outcome=TransferOutcome(False, 486, "busy"),
              idle_silence=False)
    rig.session = GatedSession()
    rig.task = asyncio.create_task(rig.call.run())
    await rig.tick(2)
    assert rig.call.state.state is S.CONNECTING
    with caplog.at_level(logging.ERROR, "bridge.call.call"):
        rig.leg.press("0")                           # the dialplan's transfer key
        await rig.tick(2)
        assert rig.leg.transfers == [OPERATOR]       # tried, refused by the far end
        assert rig.call.state.state is S.CONNECTING  # back where it was
        rig.session.gate.set()                       # the agent arrives
        await rig.until(lambda: rig.call.record.connected_at is not None)
    assert rig.call.state.state is S.CONVERSING
    rig.leg.play(tone(100, amp=8000)[: 5 * rig.leg.carried_frame_bytes])
    await rig.tick(5)
    assert rig.session.appended                      # caller audio goes upstream
    assert not rig.call.playout.comfort              # no beeps once the agent is there
    assert caplog.records == []                      # no refused transition on the way
    rig.leg.far_end_hangup()
    assert (await rig.finish()).end_reason == "caller_hangup"


async def test_a_connect_that_completes_during_a_transfer_resumes_as_conversing() -> None:
    m = CallStateMachine(log)
    m.fire(Trigger.START)
    assert m.fire(Trigger.TRANSFER) and m.state is S.TRANSFERRING
    assert m.fire(Trigger.CONNECTED) and m.state is S.TRANSFERRING   # remembered
    assert m.fire(Trigger.RECONNECTING)
    assert m.fire(Trigger.TRANSFER_FAILED) and m.state is S.RECONNECTING
    assert m.fire(Trigger.RECONNECTED) and m.state is S.CONVERSING


async def test_a_tool_hang_up_while_the_upstream_reconnects_still_ends_the_call(
        tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 300, "Goodbye.", done=True)
    await rig.emit(ev.FunctionCall("r1", "f1", "c1", "hang_up", '{"reason": "done"}'))
    await rig.done("r1")                          # the tool waits for "Goodbye." to play
    await rig.emit(ev.Reconnecting(1, "connection reset"))
    assert rig.call.state.state is S.RECONNECTING
    record = await rig.finish()
    assert record.end_reason == "agent_hangup"
    assert rig.call.control.end_requested is None  # used, not left for a later tool


def test_the_callers_silence_limit_holds_during_a_transfer() -> None:
    assert TRANSITIONS[S.TRANSFERRING][E.CALLER_SILENCE] is S.ENDING
    assert TRANSITIONS[S.RECONNECTING][E.AGENT_HANGUP] is S.ENDING


async def test_an_operators_own_words_end_the_call_as_operator(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    rig.call.end("dashboard: wrong number")
    record = await rig.finish()
    assert (record.end_reason, record.end_detail) == ("operator", "dashboard: wrong number")
