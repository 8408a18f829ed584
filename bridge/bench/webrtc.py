"""``voicebridge bench webrtc --calls N``: N aiortc peers call the bridge over WebRTC.

Three kinds of process, so that each figure is billed to the right one: the bridge (a
``voicebridge serve`` this program starts, or one already running: ``--url``, and ``--pid``
to measure its CPU and memory), its upstream (a separate ``voicebridge emulator``), and
``--peer-procs`` worker processes that run the peers (this process only coordinates).

The peers are light (``WebRtcCaller(light=True)``): G.711 sent pre-encoded and received
packets counted at the receiver's hook, so that on a small machine they keep sending at
the full rate instead of starving the measurement. Each peer sends a looped pattern of
speech-like tone bursts and silence (so the emulator's VAD sees turns and echoes them:
audio flows both ways) and records the arrival time of every packet it receives.

Figures, over a measuring window after all calls are up (the run says so plainly when the
rates fall short: the CPU figure is only meaningful at full rate):

* frames per second per call: sent by the peers, taken in and sent out by the bridge
  (its /metrics), received by the peers; 50 = every 20 ms frame;
* CPU of the bridge process only (``/proc/PID/stat``) per leg, as % of one core, and the
  legs one core would carry at that rate;
* memory (RSS) of the bridge, total and per leg;
* jitter of packet arrivals at the peers (|inter-arrival - 20 ms|: p50/p99/max).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import struct
import sys
import time
from pathlib import Path

import httpx

from bridge.webrtc.client import WebRtcCaller


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="measuring window once all calls are up (default 20)")
    parser.add_argument("--url", default=None,
                        help="a running bridge (default: start one, with its own emulator)")
    parser.add_argument("--pid", type=int, default=None,
                        help="process id of the bridge at --url, to measure its CPU/memory")
    parser.add_argument("--ramp", type=float, default=0.1,
                        help="seconds between call set-ups (default 0.1)")
    parser.add_argument("--peer-procs", type=int, default=2,
                        help="worker processes running the peers (default 2)")

#: Seconds the idle bridge is measured before the calls start.
IDLE_WINDOW_S = 3.0
#: A worker's result is one JSON line with every inter-arrival gap of the window.
RESULT_LINE_LIMIT = 1 << 26
#: Below this share of 50 frames/s a direction counts as starved in the summary.
FULL_RATE = 0.95


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks    # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pattern(rate: int = 8000) -> bytes:
    """1.2 s of a warbling tone (speech-like energy for the VAD), then 1.8 s of silence."""
    n = int(rate * 1.2)
    burst = struct.pack(f"<{n}h", *(int(7000 * math.sin(2 * math.pi * (220 + 80 * math.sin(
        2 * math.pi * 3 * i / rate)) * i / rate)) for i in range(n)))
    return burst + bytes(2 * int(rate * 1.8))


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p / 100) - 1))]


async def _wait_http(url: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{url}/healthz", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bridge at {url} did not come up")
            await asyncio.sleep(0.2)


async def _bridge_frames(url: str) -> tuple[float, float]:
    """The bridge's WebRTC frame counters (in, out) from its /metrics."""
    values = {"in": 0.0, "out": 0.0}
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics", timeout=5)).text
    for line in text.splitlines():
        for key in values:
            if line.startswith(f'voicebridge_frames_{key}_total{{source="webrtc"}}'):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values["in"], values["out"]


async def _bench(args: argparse.Namespace) -> int:
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    procs: list[asyncio.subprocess.Process] = []
    url, pid = args.url, args.pid
    # Offers need the operator's token (the peers read it from their environment); a
    # bridge given with --url takes the one in $VOICEBRIDGE_HTTP_TOKEN.
    args.token = os.environ.get("VOICEBRIDGE_HTTP_TOKEN") or secrets.token_urlsafe(24)
    try:
        if url is None:
            emu_port, http_port = _free_port(), _free_port()
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "--log-level", "WARNING", "emulator",
                "--port", str(emu_port)))
            env = dict(os.environ,
                       VOICEBRIDGE_REALTIME_EMULATOR_URL=f"ws://127.0.0.1:{emu_port}",
                       VOICEBRIDGE_RECORDS_PATH="", VOICEBRIDGE_HTTP_PORT=str(http_port),
                       VOICEBRIDGE_WEBRTC_MAX_LEGS=str(args.calls + 10),
                       VOICEBRIDGE_HTTP_TOKEN=args.token, VOICEBRIDGE_WEBRTC_RATE_PER_MINUTE="0",
                       VOICEBRIDGE_SIP_MAX_CALLS=str(args.calls + 10))
            for var in ("AZURE_OPENAI_ENDPOINT", "OPENAI_API_KEY", "VOICEBRIDGE_CONFIG"):
                env.pop(var, None)
            bridge = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "--log-level", "WARNING", "serve", "--no-sip",
                env=env, stdout=asyncio.subprocess.DEVNULL)
            procs.append(bridge)
            url, pid = f"http://127.0.0.1:{http_port}", bridge.pid
        await _wait_http(url, 30)
        return await _run_calls(args, url, pid)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()


async def _run_calls(args: argparse.Namespace, url: str, pid: int | None) -> int:
    rss_idle = _rss_mib(pid) if pid else 0.0
    # The bridge's own cost with no call (media clock, HTTP, timers), to tell the cost of
    # a leg from the fixed cost that the per-call average spreads over the calls.
    idle_cpu = 0.0
    if pid:
        cpu0, wall0 = _cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(IDLE_WINDOW_S)
        idle_cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    procs = max(1, min(args.peer_procs, args.calls))
    shares = [args.calls // procs + (1 if i < args.calls % procs else 0) for i in range(procs)]
    workers = []
    offset = 0
    for share in shares:
        spec = json.dumps({"url": url, "calls": share, "first": offset, "ramp": args.ramp * procs})
        offset += share
        workers.append(await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import bridge.bench.webrtc as b; b.peer_main()", spec,
            env=dict(os.environ, VOICEBRIDGE_HTTP_TOKEN=args.token),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=RESULT_LINE_LIMIT))
    try:
        ups = [json.loads(await _line(w)) for w in workers]
        n = sum(u["up"] for u in ups)
        codecs = sorted({c for u in ups for c in u["codecs"]})
        print(f"{n} calls up ({', '.join(codecs) or '?'}) from {procs} peer process(es); "
              "settling 3 s")
        await asyncio.sleep(3)
        for w in workers:
            _say(w, "start")
        frames0 = await _bridge_frames(url)
        cpu0 = _cpu_seconds(pid) if pid else 0.0
        wall0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu = (_cpu_seconds(pid) - cpu0) if pid else 0.0
        frames1 = await _bridge_frames(url)
        # One window for both: it starts after the first counter read and ends after the
        # second (a /metrics read may take a while on a loaded machine).
        wall = time.monotonic() - wall0
        rss = _rss_mib(pid) if pid else 0.0
        for w in workers:
            _say(w, "stop")
        results = [json.loads(await _line(w)) for w in workers]
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError, ConnectionError):
                _say(w, "quit")
        for w in workers:
            try:
                await asyncio.wait_for(w.wait(), 20)
            except TimeoutError:
                w.kill()
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    peer_wall = max((r["wall"] for r in results), default=wall) or wall
    deviations = [d for r in results for d in r["deviations"]]
    down = sum(r["not_connected"] for r in results)
    per = max(n, 1)
    rate_sent, rate_recv = sent / peer_wall / per, received / peer_wall / per
    rate_in, rate_out = ((frames1[i] - frames0[i]) / wall / per for i in (0, 1))
    print(f"calls: {n}, window {wall:.1f} s, peers not connected at the end: {down}")
    print(f"frames per call per second (50 = all): peers sent {rate_sent:.1f}, bridge took in "
          f"{rate_in:.1f}, bridge sent {rate_out:.1f}, peers received {rate_recv:.1f}")
    if pid:
        per_leg = 100 * cpu / wall / per
        marginal = max(0.0, 100 * (cpu / wall - idle_cpu) / per)
        print(f"bridge CPU (its own process): {100 * cpu / wall:.1f} % of a core in total, "
              f"{per_leg:.2f} % per call -> "
              f"{100 / per_leg if per_leg else float('inf'):.0f} calls per core")
        print(f"  idle bridge {100 * idle_cpu:.1f} % of a core; above idle {marginal:.2f} % "
              f"per call -> {100 / marginal if marginal else float('inf'):.0f} calls per core")
        print(f"bridge memory: {rss:.0f} MiB RSS ({rss_idle:.0f} MiB idle, "
              f"{(rss - rss_idle) / per:.2f} MiB per call)")
    print(f"arrival jitter at the peers |Δt - 20 ms|: p50 {_percentile(deviations, 50):.2f} ms, "
          f"p99 {_percentile(deviations, 99):.2f} ms, max {max(deviations, default=0):.1f} ms")
    starved = [name for name, rate in (("peers sending", rate_sent), ("bridge in", rate_in),
                                        ("bridge out", rate_out)) if rate < 50 * FULL_RATE]
    if starved or down:
        print(f"NOT AT FULL RATE ({', '.join(starved) or 'calls dropped'}): the machine was "
              "short of CPU; the per-call figure above is not a capacity figure")
        return 1
    return 0


def _say(proc: asyncio.subprocess.Process, word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{word}\n".encode())


async def _line(proc: asyncio.subprocess.Process, limit: float = 120.0) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), limit)
    if not line:
        raise RuntimeError("a peer process ended early")
    return line.decode()


# ---- peer worker process -------------------------------------------------------------------

def peer_main() -> None:
    """Entry of a peer process: JSON spec in argv[1]; commands on stdin; JSON lines out."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_peers(json.loads(sys.argv[1])))


async def _peers(spec: dict[str, object]) -> None:
    url, calls = str(spec["url"]), int(str(spec["calls"]))
    first, ramp = int(str(spec["first"])), float(str(spec["ramp"]))
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    pattern = _pattern()
    callers: list[WebRtcCaller] = []
    try:
        async with httpx.AsyncClient() as client:
            for i in range(first, first + calls):
                caller = WebRtcCaller(url, pcm=pattern[(i * 1600) % len(pattern):] + pattern,
                                      called="bench", light=True,
                                      token=os.environ.get("VOICEBRIDGE_HTTP_TOKEN", ""))
                await caller.call(client)
                callers.append(caller)
                await asyncio.sleep(ramp)
        _emit({"up": len(callers), "codecs": sorted({c.codec for c in callers})})
        while (await stdin.readline()).strip() not in (b"start", b""):
            pass
        sent0 = [c.source.sent for c in callers]
        marks = [len(c.received.arrivals) for c in callers]
        t0 = loop.time()
        while (await stdin.readline()).strip() not in (b"stop", b""):
            pass
        wall = loop.time() - t0
        deviations: list[float] = []
        received = 0
        for caller, mark in zip(callers, marks, strict=True):
            arrivals = caller.received.arrivals[mark:]
            received += len(arrivals)
            deviations += [round(abs((b - a) - 0.020) * 1000, 3)
                           for a, b in zip(arrivals, arrivals[1:], strict=False)]
        _emit({"wall": wall, "received": received, "deviations": deviations,
               "sent": sum(c.source.sent - s0 for c, s0 in zip(callers, sent0, strict=True)),
               "not_connected": sum(1 for c in callers if c.pc.connectionState != "connected")})
        await stdin.readline()             # "quit", or end of input
    finally:
        for caller in callers:
            with contextlib.suppress(Exception):
                await caller.hang_up()


def _emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def run(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_bench(args))
    return 130
