"""A call's hot paths let the media clock preempt them (MediaClock.poll).

One callback that runs long -- here a burst of inbound frames handed to the call inside a
single 120 ms callback, as a loop pass full of datagrams would -- must not hold the
call's outbound hand-offs back: the leg polls the clock before each frame it hands the
call (and the upstream batch per delivery), so ticks that come due go out in the middle
of the burst, on time, instead of after it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge.call.records import MemoryRecordStore
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.call_harness import Harness, make_plans


# pcm16: frames go through the upstream batch (a call's next frame runs it, and each
# delivery polls); g711: frames go straight upstream (the leg polls per frame).
@pytest.mark.parametrize("audio_format", ["pcm16", "g711"])
async def test_inbound_frames_let_due_ticks_out_of_a_long_callback(
        tmp_path: Path, audio_format: str) -> None:
    plans = make_plans(tmp_path, greeting=False, audio_format=audio_format)
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore(), idle_silence=False)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        client = h.call._client
        # The Realtime client's reads poll the same clock.
        assert client is not None and getattr(client, "on_message", None) == h.clock.poll
        frame = bytes(h.leg.frame_bytes)
        before = len(h.leg.frames)
        start = time.monotonic()
        while time.monotonic() - start < 0.120:           # one long callback
            h.leg.feed_frames([frame])   # as a network leg delivers: it polls first
            spin_until = time.monotonic() + 0.001
            while time.monotonic() < spin_until:
                pass
        end = time.monotonic()
        during = [f for f in h.leg.frames[before:] if start <= f.handed_at <= end]
        h.leg.far_end_hangup()
        await h.finish()
    # 120 ms of blocked loop: 5-6 ticks came due, and went out from inside it (without
    # the poll, the clock's timer could only run after the callback: none would).
    # Their timing is the benchmark's business; this machine's scheduler is not tested.
    assert len(during) >= 3
