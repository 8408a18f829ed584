"""Early barge-in measured against the server's: the same caller talks over the same
greeting, once with ``[turns] early_barge_in`` (the bridge's VAD cuts the agent off) and
once without (the server's ``speech_started`` does), and the time from the caller's first
frame to the bridge cutting the agent off is compared.

The upstream is the emulator behind a real TCP relay that holds every chunk
``ONE_WAY_S`` in each direction: a loopback emulator answers in microseconds and its
energy VAD needs only 20 ms of audio, so without a network between them the server's
barge-in costs almost nothing; a Realtime region is typically a few tens of
milliseconds away. What the early barge-in gains is at least that round trip (plus the
server's own detection delay, which the emulator does not model)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from bridge.call.clock import MediaClock
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager
from bridge.call.memory import MemoryLeg
from bridge.call.records import MemoryRecordStore
from bridge.dialplans.loader import load_dialplans
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.audio import speech
from tests.support.waiting import until

ONE_WAY_S = 0.040

PLAN = """
tools = ["hang_up"]

[match]
default = true

[agent]
instructions = "barge-in test"
greeting = "Say hello."

[agent.turn_detection]
type = "server_vad"

[turns]
early_barge_in = {early}
min_speech_ms = 60
"""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``ONE_WAY_S`` late, order kept."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + ONE_WAY_S, data))
            if not data:
                break
        await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task


async def relay(port: int) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(OSError):
            await asyncio.gather(_pipe(r, uw), _pipe(ur, w))
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def barge_in_after(tmp_path: Path, early: bool) -> tuple[float, int]:
    """Seconds from the caller's first frame reaching the call (over the greeting) to the
    agent being cut off,
    and how many barge-ins the bridge's own VAD started."""
    folder = tmp_path / f"early-{early}"
    folder.mkdir()
    (folder / "p.toml").write_text(PLAN.format(early=str(early).lower()))
    clock = MediaClock()
    async with Emulator(EmulatorConfig(greeting_ms=4000)) as emu:
        server = await relay(emu.port)
        port = server.sockets[0].getsockname()[1]
        target = RealtimeSettings.from_env({}).target(emulator_url=f"ws://127.0.0.1:{port}")
        manager = CallManager(load_dialplans(folder), target, MemoryRecordStore(), clock)
        leg = MemoryLeg(LegInfo(call_id=f"leg-{early}", source=Source.SIP, caller="+1555",
                                called="100"), clock=clock)
        task = asyncio.create_task(manager.handle(leg))
        await until(lambda: any(c.playout.playing for c in manager.calls.values()), 15,
                    clock=clock)
        await until(lambda: sum(not f.silent for f in leg.frames) >= 25, 10, clock=clock)
        [call] = manager.calls.values()
        arrivals: list[float] = []
        inbound = call.on_leg_audio

        def stamped(frame: bytes) -> None:
            # the grid time of the tick that carried the frame: when a phone sending in
            # real time would have delivered it, even if a late tick caught up
            arrivals.append(clock.tick_time)
            inbound(frame)

        call.on_leg_audio = stamped
        leg.play(speech(1500))
        await until(lambda: bool(call.barge_in_seen), 10, clock=clock)
        local = len(call.turns.local_barge_ins) if call.turns is not None else 0
        took = call.barge_in_seen[0] - arrivals[0]
        leg.far_end_hangup()
        await asyncio.wait_for(task, 10)
        server.close()
    return took, local


async def test_early_barge_in_beats_the_servers_by_the_round_trip(tmp_path: Path) -> None:
    server_s, server_local = await barge_in_after(tmp_path, early=False)
    early_s, early_local = await barge_in_after(tmp_path, early=True)
    print(f"barge-in after the caller's first frame: server VAD {server_s * 1000:.0f} ms, "
          f"bridge VAD {early_s * 1000:.0f} ms, gained {(server_s - early_s) * 1000:.0f} ms "
          f"({2 * ONE_WAY_S * 1000:.0f} ms round trip)")
    assert server_local == 0 and early_local == 1
    # the server's path costs at least the round trip; the bridge's does not
    assert server_s >= 2 * ONE_WAY_S
    assert early_s < server_s
