"""``voicebridge bench webrtc --calls N``: N aiortc peers call the bridge over WebRTC.

The peers run in this process; the bridge runs in another: a ``voicebridge serve`` this
program starts (with a separate ``voicebridge emulator`` process as its upstream, so the
emulator's work is not billed to the bridge), or one already running (``--url``, and
``--pid`` to measure its CPU and memory).

Each peer sends a looped pattern of speech-like tone bursts and silence (so the emulator's
VAD sees turns and echoes them: audio flows both ways) and records the arrival time of every
frame it receives. Figures, over a measuring window after all calls are up:

* CPU of the bridge process per leg (% of one core) and the legs one core would carry;
* memory (RSS) of the bridge, total and per leg;
* jitter of frame arrivals at the peers (deviation of inter-arrival from 20 ms: p50/p99/max)
  and frames received per second per call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
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
    pattern = _pattern()
    callers: list[WebRtcCaller] = []
    async with httpx.AsyncClient() as client:
        for i in range(args.calls):
            caller = WebRtcCaller(url, pcm=pattern[(i * 1600) % len(pattern):] + pattern,
                                  called="bench")
            await caller.call(client)
            callers.append(caller)
            await asyncio.sleep(args.ramp)
    print(f"{len(callers)} calls up ({callers[0].codec if callers else '?'}); settling 3 s")
    await asyncio.sleep(3)
    marks = [len(c.received.arrivals) for c in callers]
    frames0 = await _bridge_frames(url)
    cpu0 = _cpu_seconds(pid) if pid else 0.0
    wall0 = time.monotonic()
    await asyncio.sleep(args.seconds)
    wall = time.monotonic() - wall0
    cpu = (_cpu_seconds(pid) - cpu0) if pid else 0.0
    rss = _rss_mib(pid) if pid else 0.0
    frames1 = await _bridge_frames(url)
    deviations: list[float] = []
    frames = 0
    for caller, mark in zip(callers, marks, strict=True):
        arrivals = caller.received.arrivals[mark:]
        frames += len(arrivals)
        deviations += [abs((b - a) - 0.020) * 1000
                       for a, b in zip(arrivals, arrivals[1:], strict=False)]
    hung_up = sum(1 for c in callers if c.pc.connectionState != "connected")
    for caller in callers:
        await caller.hang_up()
    n = len(callers)
    print(f"calls: {n}, window {wall:.1f} s, peers not connected at the end: {hung_up}")
    if pid:
        per_leg = 100 * cpu / wall / max(n, 1)
        print(f"bridge CPU: {100 * cpu / wall:.1f} % of a core in total, {per_leg:.2f} % "
              f"per call -> {100 / per_leg if per_leg else float('inf'):.0f} calls per core")
        print(f"bridge memory: {rss:.0f} MiB RSS ({rss_idle:.0f} MiB idle, "
              f"{(rss - rss_idle) / max(n, 1):.2f} MiB per call)")
    rate_in, rate_out = ((frames1[i] - frames0[i]) / wall / max(n, 1) for i in (0, 1))
    print(f"bridge frames per call per second: in {rate_in:.1f}, out {rate_out:.1f} (50 = all)")
    print(f"frames received by the peers: {frames / wall / max(n, 1):.1f} per call per second")
    print(f"arrival jitter |Δt - 20 ms|: p50 {_percentile(deviations, 50):.2f} ms, "
          f"p99 {_percentile(deviations, 99):.2f} ms, max {max(deviations, default=0):.1f} ms")
    return 0


def run(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_bench(args))
    return 130
