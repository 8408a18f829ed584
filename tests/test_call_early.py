"""The upstream opened while a call is set up (before the SIP 200 OK), taken over by the
call, or closed when the call does not happen. Real emulator over a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.call.clock import MediaClock
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager
from bridge.call.memory import MemoryLeg
from bridge.call.records import MemoryRecordStore
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.call_harness import make_plans
from tests.support.waiting import until


def info(call_id: str) -> LegInfo:
    return LegInfo(call_id=call_id, source=Source.SIP, caller="+15550100", called="100")


def manager_for(emu: Emulator, tmp: Path, clock: MediaClock, max_calls: int = 8) -> CallManager:
    target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
    return CallManager(make_plans(tmp), target, MemoryRecordStore(), clock, max_calls=max_calls)


async def test_the_call_takes_over_the_session_opened_during_set_up(tmp_path: Path) -> None:
    clock = MediaClock()
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu:
        manager = manager_for(emu, tmp_path, clock)
        assert manager.open_early(info("leg-1"), "pcmu") is not None
        # The session is opened and configured before there is any call (the INVITE is
        # still being answered).
        await emu.wait_for(lambda r: len(r) == 1 and r.sessions[0].session_updates == 1, 5)
        assert manager.live == 0
        leg = MemoryLeg(info("leg-1"), clock=clock)
        task = asyncio.create_task(manager.handle(leg))
        await until(lambda: sum(not f.silent for f in leg.frames) >= 10, 10, clock=clock)
        call = next(iter(manager.calls.values()))
        leg.far_end_hangup()
        record = await asyncio.wait_for(task, 10)
    assert len(emu.record) == 1                  # no second session: the early one was used
    assert record.call_id == call.call_id and record.session_ids == [
        emu.record.sessions[0].session_id]
    assert manager.early.taken == 1 and len(manager.early) == 0


async def test_a_call_that_does_not_happen_closes_its_early_session(tmp_path: Path) -> None:
    clock = MediaClock()
    async with Emulator(EmulatorConfig()) as emu:
        manager = manager_for(emu, tmp_path, clock)
        assert manager.open_early(info("leg-cancelled"), "pcmu") is not None
        await emu.wait_for(lambda r: len(r) == 1 and r.sessions[0].session_updates == 1, 5)
        manager.drop_early("leg-cancelled")      # CANCEL, a refusal, no ACK
        await emu.wait_for(lambda r: r.sessions[0].close_code is not None, 5)
        assert len(manager.early) == 0 and manager.early.dropped == 1


async def test_early_sessions_are_bounded_in_number_and_age(tmp_path: Path) -> None:
    clock = MediaClock()
    async with Emulator(EmulatorConfig()) as emu:
        manager = manager_for(emu, tmp_path, clock, max_calls=8)   # at most 2 early ones
        manager.early.max_age_s = 1.0
        opened = [manager.open_early(info(f"leg-{n}"), "pcmu") is not None for n in range(5)]
        assert opened == [True, True, False, False, False]
        await emu.wait_for(lambda r: len(r) == 2, 5)
        # Nobody takes them (INVITEs never ACKed): closed once they are too old.
        await emu.wait_for(lambda r: all(s.close_code is not None for s in r.sessions), 5)
        assert len(manager.early) == 0
        await manager.shutdown()
        assert manager.open_early(info("leg-late"), "pcmu") is None   # shutting down
