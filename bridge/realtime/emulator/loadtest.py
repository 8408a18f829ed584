"""Load test: N concurrent calls against one emulator process; prints figures.

``python -m bridge.realtime.emulator.loadtest --calls 200 --seconds 20``

The emulator runs as its own process (``voicebridge emulator``) so its CPU time can be read
from ``/proc``; the callers run here, on one event loop, each appending 20 ms of PCM16 in
real time (one shared 20 ms ticker, pre-encoded frames: the load is on the emulator, not on
building JSON) in a talk/pause pattern, and reading every event. Shaped like a
``bridge.bench`` module (``add_arguments`` / ``run``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect

from bridge.realtime.emulator.audio import PCM16, silence, tone

FRAME_MS = 20


@dataclass
class _Caller:
    ws: ClientConnection
    connect_s: float
    deltas: int = 0
    delta_bytes: int = 0
    responses: int = 0
    errors: int = 0
    stop_latency: list[float] = field(default_factory=list)
    last_silence_sent: float = 0.0


def _frames(talk_ms: int, pause_ms: int) -> list[str]:
    audio = tone(PCM16, talk_ms, freqs=(440.0,), dbfs=-20.0) + silence(PCM16, pause_ms)
    step = FRAME_MS * PCM16.bytes_per_ms
    return [json.dumps({"type": "input_audio_buffer.append",
                        "audio": base64.b64encode(audio[i:i + step]).decode("ascii")})
            for i in range(0, len(audio), step)]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _reader(c: _Caller) -> None:
    with contextlib.suppress(Exception):
        async for raw in c.ws:
            event = json.loads(raw)
            kind = event["type"]
            if kind == "response.output_audio.delta":
                c.deltas += 1
                c.delta_bytes += len(event["delta"]) * 3 // 4
            elif kind == "response.done":
                c.responses += 1
            elif kind == "input_audio_buffer.speech_stopped":
                c.stop_latency.append(time.perf_counter() - c.last_silence_sent)
            elif kind == "error":
                c.errors += 1


async def _open(url: str, silence_ms: int) -> _Caller:
    t0 = time.perf_counter()
    ws = await connect(url + "/openai/v1/realtime?model=gpt-realtime", compression=None,
                       max_queue=None)
    await ws.send(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": silence_ms,
            "prefix_padding_ms": 300}}}}}))
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "session.updated":
            break
    return _Caller(ws, time.perf_counter() - t0)


async def _callers(args: argparse.Namespace, url: str) -> dict[str, object]:
    """One client process: open ``args.calls`` calls, stream for ``args.seconds``."""
    frames = _frames(args.talk_ms, args.pause_ms)
    silence_from = (args.talk_ms + args.silence_ms) // FRAME_MS - 1  # the deciding append
    callers: list[_Caller] = []
    for i in range(0, args.calls, 20):  # connect in waves of 20
        callers += await asyncio.gather(*(_open(url, args.silence_ms)
                                          for _ in range(min(20, args.calls - i))))
    print("ready", flush=True)
    readers = [asyncio.create_task(_reader(c)) for c in callers]
    ticks = int(args.seconds * 1000 / FRAME_MS)
    late = 0
    start = time.perf_counter()
    for tick in range(ticks):
        for n, c in enumerate(callers):  # stagger the callers across the talk/pause cycle
            index = (tick + n * 7 + args.offset) % len(frames)
            if index == silence_from:
                c.last_silence_sent = time.perf_counter()
            await c.ws.send(frames[index])
        delay = start + (tick + 1) * FRAME_MS / 1000 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late += 1
    wall = time.perf_counter() - start
    await asyncio.sleep(0.5)  # let the last replies arrive
    for c in callers:
        await c.ws.close()
    for r in readers:
        r.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return {
        "calls": len(callers), "appends": ticks * len(callers), "wall": wall, "late": late,
        "ticks": ticks, "connect": [c.connect_s for c in callers],
        "stops": [x for c in callers for x in c.stop_latency],
        "responses": sum(c.responses for c in callers),
        "deltas": sum(c.deltas for c in callers),
        "audio_s": sum(c.delta_bytes for c in callers) / 48000,
        "errors": sum(c.errors for c in callers),
    }


async def _main(args: argparse.Namespace) -> int:
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "--log-level", "WARNING", "emulator", "--port", "0",
        "--pace", str(args.pace), stdout=asyncio.subprocess.PIPE)
    assert emulator.stdout is not None
    clients = []
    try:
        url = (await emulator.stdout.readline()).decode().split()[-1]
        per = [args.calls // args.procs + (i < args.calls % args.procs)
               for i in range(args.procs)]
        t0 = time.perf_counter()
        for i, n in enumerate(per):
            clients.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.realtime.emulator.loadtest", "--client", url,
                "--calls", str(n), "--seconds", str(args.seconds), "--offset", str(i * 3),
                "--talk-ms", str(args.talk_ms), "--pause-ms", str(args.pause_ms),
                "--silence-ms", str(args.silence_ms), stdout=asyncio.subprocess.PIPE))
        for c in clients:
            assert c.stdout is not None
            assert (await c.stdout.readline()).strip() == b"ready"
        setup_s = time.perf_counter() - t0
        cpu0, wall0 = _cpu_seconds(emulator.pid), time.perf_counter()
        outs = [json.loads((await c.communicate())[0]) for c in clients]
        cpu1, wall1 = _cpu_seconds(emulator.pid), time.perf_counter()
    finally:
        for c in clients:
            if c.returncode is None:
                c.kill()
        emulator.terminate()
        await emulator.wait()
    wall = wall1 - wall0
    appends = sum(o["appends"] for o in outs)
    connects = sorted(x for o in outs for x in o["connect"])
    stops = sorted(x for o in outs for x in o["stops"])
    late = sum(o["late"] for o in outs)
    ticks = sum(o["ticks"] for o in outs)
    print(f"calls                      {sum(o['calls'] for o in outs)} in {args.procs} client "
          f"process(es), all connected in {setup_s:.2f} s")
    print(f"connect -> session.updated p50 {statistics.median(connects) * 1e3:.1f} ms, "
          f"max {connects[-1] * 1e3:.1f} ms")
    print(f"streaming                  {wall:.1f} s wall, {appends} appends "
          f"({appends / wall:.0f}/s); senders late on {late}/{ticks} 20 ms ticks")
    print(f"emulator CPU               {cpu1 - cpu0:.2f} s = {100 * (cpu1 - cpu0) / wall:.0f}% "
          f"of one core; {1e6 * (cpu1 - cpu0) / appends:.1f} us per append, all work included")
    print(f"responses                  {sum(o['responses'] for o in outs)}; deltas "
          f"{sum(o['deltas'] for o in outs)} ({sum(o['audio_s'] for o in outs):.0f} s of "
          f"audio); errors {sum(o['errors'] for o in outs)}")
    if stops:
        print(f"speech_stopped after the deciding append (includes client-side lag): p50 "
              f"{stops[len(stops) // 2] * 1e3:.1f} ms, p99 "
              f"{stops[int(len(stops) * .99)] * 1e3:.1f} ms (n={len(stops)})")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--talk-ms", type=int, default=1500)
    parser.add_argument("--pause-ms", type=int, default=2500)
    parser.add_argument("--silence-ms", type=int, default=500)
    parser.add_argument("--pace", type=float, default=4.0)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.client:
        print(json.dumps(asyncio.run(_callers(args, args.client))), flush=True)
        return 0
    return asyncio.run(_main(args))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
