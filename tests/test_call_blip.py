"""An upstream blip of 5 s during 10 concurrent calls: every call rides it out.

Ten calls run against one emulator over real sockets with the production recovery policy.
The emulator goes away for 5 s (its listening socket closed, its sessions closed), then
comes back on the same port. Meanwhile each caller asks something. Every call must survive
without hanging up, hear the hold signal instead of dead air, and get an answer to what it
said during the blip from its new session.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np

from bridge.call.hold import chime
from bridge.call.records import MemoryRecordStore
from bridge.realtime.client import RealtimeClient
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.call_harness import Harness, make_plans

CALLS = 10
BLIP_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def audible(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return len(samples) > 0 and float(np.sqrt(np.mean(samples ** 2))) >= 100


HOLD = {chime(8000)[at:at + 320] for at in range(0, len(chime(8000)), 320)}


def answered(h: Harness) -> bool:
    turns = h.call.record.transcript
    return len(turns) >= 3 and turns[-2].role == "caller" and turns[-1].role == "agent"


def first_agent_audio(h: Harness, after: float) -> float:
    return next(f.handed_at for f in h.leg.frames
                if f.handed_at > after and not f.silent and f.pcm not in HOLD and audible(f.pcm))


def longest_silence(h: Harness, start: float, end: float) -> float:
    gap, last = 0.0, start
    for f in h.leg.frames:
        if start <= f.handed_at <= end and not f.silent and audible(f.pcm):
            gap = max(gap, f.handed_at - last)
            last = f.handed_at
    return max(gap, end - last)


async def test_ten_calls_ride_out_a_5_s_blip_and_answer_what_was_said(tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    emu = Emulator(EmulatorConfig(greeting_ms=400, port=free_port()))
    await emu.start()
    calls = [Harness(emu.url, plans.default, MemoryRecordStore(),
                     client_options={"recovery": RecoveryPolicy()}) for _ in range(CALLS)]
    try:
        for h in calls:
            h.start()
        for h in calls:
            await h.until(lambda h=h: h.agent_frames() >= 20 and not h.call.playout.playing)
        await emu.stop()                                   # the blip starts
        down_at = [h.clock.time() for h in calls]
        await asyncio.sleep(2.0)
        for h in calls:
            await h.speak(700)                             # asked while nothing listens
        await asyncio.sleep(BLIP_S - 2.0)
        await emu.start()                                  # back, same port
        up_at = [h.clock.time() for h in calls]
        for h in calls:
            await h.until(lambda h=h: len(h.call.record.session_ids) >= 2, 15)
        for h in calls:                                    # the answer to what was asked
            await h.until(lambda h=h: answered(h), 15)
        answered_at = [first_agent_audio(h, up) for h, up in zip(calls, up_at, strict=True)]
        for h in calls:
            assert not h.call.state.over, "a call was hung up during the blip"
            h.call.end("test over")
        records = [await h.finish() for h in calls]
    finally:
        await emu.stop()

    new_sessions = [s for s in emu.record.sessions[CALLS:]]
    assert len(new_sessions) >= CALLS
    assert sum(s.turns >= 1 for s in new_sessions) >= CALLS    # every question was heard
    for h, record, down, up, answer in zip(calls, records, down_at, up_at, answered_at,
                                           strict=True):
        assert record.fallback is None and record.end_reason == "operator"
        assert answer > up
        silence = longest_silence(h, down, answer)
        assert silence <= 2.0, f"{record.call_id}: {silence:.2f} s of silence in the blip"
        took, heard, outcome = h.call.outage.history[0]
        assert outcome == "reconnected" and took >= BLIP_S - 1.0
        client = h.call.client
        assert isinstance(client, RealtimeClient) and client.stats.bytes_replayed > 0
