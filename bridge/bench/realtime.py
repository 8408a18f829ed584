"""``voicebridge bench realtime``: what the Realtime client costs, against the emulator.

The emulator runs in ANOTHER process (``python -m bridge.cli emulator --port 0 --pace 0``,
its URL read from the first line it prints) so the CPU figures are the client's own; with
``--in-process`` it runs in this event loop instead and the figures include it.

Printed figures:

* connect: TCP + WebSocket handshake -> ``session.created`` -> ``session.update`` ->
  ``session.updated`` (what ``RealtimeClient.connect()`` waits for), median and p90 over
  ``--connects`` fresh sessions;
* append: ``process_time`` per appended 20 ms frame (PCM16 24 kHz, 960 bytes): the
  synchronous ``append_audio`` call alone, and the whole process including the event loop
  flushing the socket, over ``--frames`` frames; beside it the same frames sent the usual
  ways (a task per ``ws.send``, or one writer task fed by a queue) for comparison;
* receive: ``process_time`` per received audio delta over ``--turns`` echo turns (each a
  ``--turn-ms`` tone the emulator plays back as 100/150/250 ms deltas): socket read,
  JSON, base64, mapping and bookkeeping, per delta (other events of the turn included);
* mapping alone: the sans-I/O ``EventMapper.feed`` of one 250 ms GA delta message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator

from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient
from bridge.realtime.config import RealtimeSettings, RealtimeTarget
from bridge.realtime.dialects import APPEND_PREFIX, APPEND_SUFFIX, EventMapper
from bridge.realtime.profile import SessionProfile, TurnDetection

FRAME_BYTES = 960  # 20 ms of PCM16 mono at 24 kHz
#: The client logs each session at INFO; the benchmark opens many.
_QUIET = logging.getLogger("bridge.bench.realtime.client")
_QUIET.setLevel(logging.WARNING)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connects", type=int, default=20, help="sessions opened (default 20)")
    parser.add_argument("--frames", type=int, default=15000,
                        help="20 ms frames appended (default 15000 = 5 min of audio)")
    parser.add_argument("--turns", type=int, default=10, help="echo turns (default 10)")
    parser.add_argument("--turn-ms", type=int, default=3000,
                        help="length of each caller turn (default 3000)")
    parser.add_argument("--dialect", choices=("ga", "preview"), default="ga")
    parser.add_argument("--in-process", action="store_true",
                        help="run the emulator in this process (figures then include it)")
    parser.add_argument("--emulator-url", default="",
                        help="use this running emulator (ws://HOST:PORT) instead")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


# -------------------------------------------------------------------------- emulator

@contextlib.asynccontextmanager
async def _emulator(args: argparse.Namespace) -> AsyncIterator[tuple[str, str]]:
    """Yield (url, where) of an emulator for the run."""
    if args.emulator_url:
        yield args.emulator_url, "external process"
        return
    if args.in_process:
        from bridge.realtime.emulator import Emulator, EmulatorConfig  # noqa: PLC0415

        async with Emulator(EmulatorConfig(pace=0.0)) as emu:
            yield emu.url, "in-process (figures include the emulator)"
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "--log-level", "WARNING", "emulator",
        "--port", "0", "--pace", "0", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30.0)).decode()
        url = next((w for w in line.split() if w.startswith("ws://")), "")
        if not url:
            raise RuntimeError(f"the emulator did not print its URL (got {line!r})")
        yield url, f"separate process (pid {proc.pid})"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)


def _target(url: str, dialect: str) -> RealtimeTarget:
    if dialect == "preview":
        env = {"AZURE_OPENAI_ENDPOINT": url.replace("ws://", "http://"),
               "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-realtime", "AZURE_OPENAI_API_KEY": "bench",
               "AZURE_OPENAI_API_VERSION": "2025-04-01-preview"}
        return RealtimeSettings.from_env(env).target()
    return RealtimeSettings.from_env({}).target(emulator_url=url)


def _tone(ms: int, freq: float = 440.0, dbfs: float = -14.0) -> bytes:
    amp = 32767 * 10 ** (dbfs / 20)
    n = 24 * ms
    return struct.pack(f"<{n}h", *(int(amp * math.sin(2 * math.pi * freq * i / 24000))
                                   for i in range(n)))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -------------------------------------------------------------------------- measurements

async def _connects(target: RealtimeTarget, profile: SessionProfile, n: int) -> list[float]:
    times = []
    for _ in range(n):
        client = RealtimeClient(target, profile, log=_QUIET)
        started = time.perf_counter()
        await client.connect()
        times.append((time.perf_counter() - started) * 1000)
        await client.close()
    return times


async def _drain(client: RealtimeClient) -> None:
    """Let the loop flush the socket until the transport is empty."""
    # Polling is the point here: the transport has no "empty" event to wait on.
    while client.write_backlog > 0:  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def _append(client: RealtimeClient, frames: int) -> dict[str, float]:
    silence = b"\x00" * FRAME_BYTES
    batch = 50  # one second of audio, then let the loop flush
    call_cpu = 0.0
    total0 = time.process_time()
    sent = 0
    while sent < frames:
        t0 = time.process_time()
        for _ in range(min(batch, frames - sent)):
            client.append_audio(silence)
        call_cpu += time.process_time() - t0
        sent += batch
        # Back-pressure: wait for the socket to drain (a paced caller never gets ahead of
        # the upstream like this; without it the client would rightly drop frames).
        await _drain(client)
    total = time.process_time() - total0
    return {"call_us": call_cpu / frames * 1e6, "total_us": total / frames * 1e6}


async def _append_alternatives(client: RealtimeClient, frames: int) -> dict[str, float]:
    """The same frames sent three ways on the same connection, each followed by one return
    to the event loop -- as from a datagram callback, which runs once per packet."""
    conn = client._conn  # the benchmark sends on the client's own socket
    assert conn is not None
    ws = conn.ws
    loop = asyncio.get_running_loop()
    silence = b"\x00" * FRAME_BYTES
    out: dict[str, float] = {}

    def message() -> str:
        return (APPEND_PREFIX + base64.b64encode(silence) + APPEND_SUFFIX).decode()

    async def direct() -> None:
        for i in range(frames):
            client.append_audio(silence)
            await asyncio.sleep(0)
            if i % 50 == 49:
                await _drain(client)

    async def task_per_frame() -> None:
        pending: set[asyncio.Task[None]] = set()
        for i in range(frames):
            task = loop.create_task(ws.send(message()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(0)
            if i % 50 == 49:
                await _drain(client)
        await asyncio.gather(*pending)

    async def writer_queue() -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def writer() -> None:
            while (item := await queue.get()) is not None:
                await ws.send(item)

        task = loop.create_task(writer())
        for i in range(frames):
            queue.put_nowait(message())
            await asyncio.sleep(0)
            if i % 50 == 49:
                await _drain(client)
        queue.put_nowait(None)
        await task

    # Every 50 frames (1 s of audio) all three wait for the socket to drain, as the
    # append-only measurement does: the emulator is not paced, a caller is.
    for name, way in (("direct_us", direct), ("task_per_frame_us", task_per_frame),
                      ("writer_queue_us", writer_queue)):
        t0 = time.process_time()
        await way()
        await _drain(client)
        out[name] = (time.process_time() - t0) / frames * 1e6
    return out


async def _receive(client: RealtimeClient, turns: int, turn_ms: int) -> dict[str, float]:
    speech = _tone(turn_ms) + b"\x00" * (48 * 800)
    events = client.events()
    deltas = others = 0
    audio_bytes = 0
    cpu = 0.0
    for _ in range(turns):
        for i in range(0, len(speech), FRAME_BYTES):
            client.append_audio(speech[i:i + FRAME_BYTES])
        await _drain(client)
        # Wait for the turn to be detected before measuring: only the reply is counted.
        async for event in events:
            if isinstance(event, ev.ResponseCreated):
                break
        t0 = time.process_time()
        async for event in events:
            if isinstance(event, ev.AudioDelta):
                deltas += 1
                audio_bytes += len(event.audio)
            else:
                others += 1
            if isinstance(event, ev.ResponseDone):
                break
        cpu += time.process_time() - t0
    return {"deltas": deltas, "others": others, "audio_ms": audio_bytes / 48, "cpu_s": cpu,
            "per_delta_us": cpu / max(deltas, 1) * 1e6}


def _mapping_cost(n: int = 2000, repeats: int = 5) -> float:
    delta = base64.b64encode(b"\x01\x02" * 24 * 250).decode()
    message = json.dumps({"type": "response.output_audio.delta", "event_id": "e",
                          "response_id": "r", "item_id": "i", "output_index": 0,
                          "content_index": 0, "delta": delta})
    mapper = EventMapper("ga")
    best = math.inf
    for _ in range(repeats):  # best of N: the machine is shared
        t0 = time.process_time()
        for _ in range(n):
            mapper.feed(message)
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


async def _main(args: argparse.Namespace) -> int:
    profile = SessionProfile(turn_detection=TurnDetection(silence_duration_ms=300))
    async with _emulator(args) as (url, where):
        target = _target(url, args.dialect)
        print(f"Realtime client benchmark: emulator {where}, {target.describe()}")
        times = await _connects(target, profile, args.connects)
        print(f"connect -> session.updated: median {statistics.median(times):.1f} ms, "
              f"p90 {_pct(times, 0.9):.1f} ms, max {max(times):.1f} ms "
              f"({args.connects} sessions)")

        client = RealtimeClient(target, profile, log=_QUIET)
        await client.connect()
        try:
            append = await _append(client, args.frames)
            print(f"append 20 ms frame: {append['call_us']:.1f} µs CPU in append_audio, "
                  f"{append['total_us']:.1f} µs CPU per frame with the loop flushing the "
                  f"socket ({args.frames} frames, {client.stats.frames_dropped} dropped)")
            dropped = client.stats.frames_dropped
            alt = await _append_alternatives(client, min(args.frames, 5000))
            if client.stats.frames_dropped != dropped:
                print(f"  (warning: {client.stats.frames_dropped - dropped} frames dropped "
                      "during the comparison)")
            print(f"  one frame per loop turn (as from a datagram callback): "
                  f"append_audio {alt['direct_us']:.1f} µs, a task per ws.send "
                  f"{alt['task_per_frame_us']:.1f} µs, one writer task + queue "
                  f"{alt['writer_queue_us']:.1f} µs per frame (loop turn included)")
        finally:
            await client.close()

        client = RealtimeClient(target, profile, log=_QUIET)
        await client.connect()
        try:
            rx = await _receive(client, args.turns, args.turn_ms)
        finally:
            await client.close()
        per_frame = rx["cpu_s"] / max(rx["audio_ms"] / 20, 1) * 1e6
        print(f"receive: {rx['per_delta_us']:.1f} µs CPU per audio delta, "
              f"{per_frame:.1f} µs per 20 ms of audio received "
              f"({int(rx['deltas'])} deltas, {rx['audio_ms'] / 1000:.1f} s of audio, "
              f"{int(rx['others'])} other events, over {args.turns} echo turns)")
        print(f"mapping alone (EventMapper.feed, one 250 ms GA delta, best of 5): "
              f"{_mapping_cost():.1f} µs")
    return 0

