"""Every way a call ends leaves the same clean state behind.

Whatever ends the call (caller, agent, transfer by tool or key press, a limit, the upstream
lost with a fallback that hangs up, shutdown by cancellation or by the manager), the call's
tasks are all gone, the Realtime session is closed, the leg is released, the call has left
the media clock, and the record (with its reason) is in the store. The call runs on a
virtual media clock against a scripted session (tests/support/call_rig.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.call.call import Call
from bridge.call.manager import CallManager
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord, SqliteRecordStore
from bridge.codecs import g711
from bridge.dialplans.plan import DialplanSet
from bridge.realtime import events as ev
from tests.support.audio import speech
from tests.support.call_endings import (
    Ending,
    agent_hangs_up,
    caller_hangs_up,
    key_transfers,
    limit_on_the_clock,
    shutdown,
    tool_transfers,
    upstream_lost,
)
from tests.support.call_rig import OPERATOR, SALES, Rig, make_plan, settle
from tests.support.waiting import until

CASES: dict[str, tuple[Ending, dict[str, float | str], str]] = {
    "caller_hangup": (caller_hangs_up, {}, "caller_hangup"),
    "agent_hangup": (agent_hangs_up, {}, "agent_hangup"),
    "tool_transfer": (tool_transfers, {}, "transferred"),
    "dtmf_transfer": (key_transfers, {}, "transferred"),
    "max_duration": (limit_on_the_clock, {"max_call_s": 0.05}, "max_duration"),
    "caller_silence": (limit_on_the_clock, {"silence_s": 0.05}, "caller_silence"),
    "upstream_lost": (upstream_lost, {"fallback": "hangup"}, "upstream_lost"),
    "shutdown": (shutdown, {}, "shutdown"),
}


def call_tasks(call: Call) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks()
            if t.get_name().startswith(call.call_id) and not t.done()]


@pytest.mark.parametrize("case", list(CASES))
async def test_every_ending_cleans_up_and_writes_the_record(tmp_path: Path, case: str) -> None:
    ending, plan_options, reason = CASES[case]
    plan = make_plan(tmp_path, **plan_options)  # type: ignore[arg-type]
    store = SqliteRecordStore(tmp_path / "calls.sqlite")
    rig = Rig(plan, store=store)
    await rig.start()
    await rig.tick(2)
    assert call_tasks(rig.call)                     # the call's group is running
    await ending(rig)
    if case == "shutdown":
        assert rig.task is not None
        with pytest.raises(asyncio.CancelledError):
            await rig.task
        await asyncio.wait_for(rig.call.finished.wait(), 10)
        record = rig.call.record
    else:
        record = await rig.finish()
    await settle()

    assert record.end_reason == reason
    assert record.ended_at is not None and record.ended_at >= record.started_at
    assert call_tasks(rig.call) == []               # every task of the call is gone
    assert rig.session.closed                       # the Realtime session is closed
    assert rig.leg.closed.is_set()                  # the leg is released
    assert rig.clock.subscribers == 0 and not rig.clock.running   # off the media clock
    saved = await store.get(record.call_id)
    assert saved is not None and saved.end_reason == reason and saved.ended_at
    await store.close()

    if reason == "transferred":
        assert rig.leg.transfers == [SALES if case == "tool_transfer" else OPERATOR]
    elif reason == "upstream_lost":
        # The fallback announcement played (a tone: non-zero audio after the loss) and
        # then the leg was hung up.
        assert record.fallback == "connection refused"
        assert rig.leg.hangups == ["upstream_lost"]
    else:
        assert rig.leg.hangups == ([] if reason == "caller_hangup" else [reason])


async def test_manager_shutdown_ends_live_calls_with_their_records(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    store = SqliteRecordStore(tmp_path / "calls.sqlite")
    rig = Rig(plan, store=store)            # for its clock, leg and scripted session
    manager = CallManager(DialplanSet([plan]), lambda _p, _l: rig.session, store, rig.clock)
    task = asyncio.create_task(manager.handle(rig.leg))
    await rig.until(lambda: manager.live == 1 and all(
        c.record.connected_at for c in manager.calls.values()))
    (call,) = manager.calls.values()
    await manager.shutdown(grace_s=5)
    record: CallRecord = await asyncio.wait_for(task, 5)
    assert record.end_reason == "shutdown"
    assert call_tasks(call) == [] and rig.session.closed and rig.leg.closed.is_set()
    assert not manager.can_admit()
    saved = await store.get(record.call_id)
    assert saved is not None and saved.end_reason == "shutdown"
    await store.close()


async def test_the_record_is_on_disk_in_wal_mode_while_the_call_goes(tmp_path: Path) -> None:
    """A crash loses at most the current turn: each finished turn is already on disk."""
    path = tmp_path / "calls.sqlite"
    store = SqliteRecordStore(path)
    rig = Rig(make_plan(tmp_path), store=store)
    await rig.start()
    await rig.emit(ev.SpeechStarted("u1", 100), ev.SpeechStopped("u1", 900),
                   ev.UserTranscript("u1", "what time do you open"))
    await rig.reply("r1", "i1", 100, "At nine.", done=True)
    await rig.done("r1")
    await rig.tick(6)

    def on_disk() -> str | None:
        # Another connection, as a crash-recovery reader would open the file.
        with sqlite3.connect(path) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            assert mode == "wal"
            row = db.execute("SELECT end_reason, record FROM calls WHERE call_id = ?",
                             (rig.call.call_id,)).fetchone()
        return None if row is None else str(row[1])

    def turn_on_disk() -> bool:
        text = on_disk()
        return bool(text and "At nine." in text and "what time do you open" in text)

    # The save runs on the store's thread; each check opens the file, so not too often.
    await until(turn_on_disk, what=lambda: f"the finished turn on disk: {on_disk()}",
                poll_s=0.01)
    assert not rig.call.ended
    rig.leg.far_end_hangup()
    await rig.finish()
    await store.close()


async def test_a_g711_leg_with_a_g711_profile_appends_its_own_bytes_every_20_ms(
        tmp_path: Path) -> None:
    """G.711 passthrough: µ-law of the caller's frames goes up untouched, 160 bytes
    (20 ms) per append; a PCM16 profile appends 960 bytes (20 ms at 24 kHz)."""
    for audio_format, per_append in (("g711", 160), ("pcm16", 960)):
        rig = Rig(make_plan(tmp_path, audio_format=audio_format), idle_silence=False)
        await rig.start()
        voice = speech(200)
        # A G.711 session makes the leg carry the payload: it plays what a phone sends.
        assert rig.leg.carry == ("pcmu" if audio_format == "g711" else "pcm16")
        rig.leg.play(g711.ulaw_encode(voice) if audio_format == "g711" else voice)
        await rig.tick(10)
        sent = rig.session.appended
        assert [len(a) for a in sent] == [per_append] * 10, audio_format
        if audio_format == "g711":
            assert b"".join(sent) == g711.ulaw_encode(voice)     # byte for byte
        rig.leg.far_end_hangup()
        await rig.finish()


def test_the_leg_used_here_carries_g711() -> None:
    # The passthrough test above relies on MemoryLeg's default (a µ-law 8 kHz leg).
    assert MemoryLeg().g711 == "pcmu"


async def test_calls_share_one_clock_chain_and_keep_no_timer_task_of_their_own(
        tmp_path: Path) -> None:
    """Media costs one wake-up per 20 ms for all calls; a call's idle cost is its two
    tasks (the upstream event pump and the wait for its end), nothing per frame."""
    plan = make_plan(tmp_path)
    first = Rig(plan)
    rigs = [first] + [Rig(plan, shared=(first.sched, first.clock)) for _ in range(2)]
    before = set(asyncio.all_tasks())
    for rig in rigs:
        await rig.start()
    await rigs[0].tick(5)
    for rig in rigs:
        await rig.reply("r1", "i1", 400)             # all three are playing
    wakeups = rigs[0].clock.wakeups
    await rigs[0].tick(10)
    assert rigs[0].clock.wakeups - wakeups == 10     # 10 ticks, one wake-up each
    assert all(len(rig.agent_frames()) == 10 for rig in rigs)
    new = set(asyncio.all_tasks()) - before - {rig.task for rig in rigs}
    names = sorted(t.get_name().split("-", 1)[1] for t in new if not t.done())
    assert names == ["end", "end", "end", "session", "session", "session"]
    for rig in rigs:
        rig.leg.far_end_hangup()
        await rig.finish()
    assert first.clock.subscribers == 0
