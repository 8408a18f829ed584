"""``voicebridge bench sip --srtp``: the bridge's CPU per call with SRTP beside plain RTP.

SIPp cannot stream SRTP, so this bench places its calls with the Python caller of
:mod:`bridge.bench.uac`, twice against one ``voicebridge serve`` (SRTP policy ``accept``,
SDES over plain UDP allowed: loopback), with the emulator in its own process:

1. ``N`` plain RTP calls (RTP/AVP), each sending the bench's µ-law pattern every 20 ms
   and receiving the echo, for ``--seconds`` once all are up;
2. the same ``N`` calls with SRTP (RTP/SAVP, AES_CM_128_HMAC_SHA1_80, or ``_32`` with
   ``--srtp-suite``), so the bridge unprotects 50 and protects 50 packets a second each.

For each round: the bridge process's CPU (``/proc/PID/stat``) per call over the window,
calls per core at that cost, packets the callers received per call and second, the
packets they could not unprotect, and the bridge's SRTP drop counters. The difference
between the two rounds is what SRTP costs the bridge; both figures are printed, and the
caller's own CPU (this process) is not billed to the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.bench import cpus
from bridge.bench.sip import (
    EmulatorProcess,
    ServeProcess,
    _bench_pattern,
    cpu_seconds,
    free_rtp_range,
    load_env,
)
from bridge.bench.uac import CallMedia, SipCaller, stream

DROP = "voicebridge_rtp_dropped_total"


@dataclass
class Round:
    label: str
    calls: int
    up: int
    cpu_s: float
    wall_s: float
    sent_per_call_s: float
    received_per_call_s: float
    refused: int
    dropped: float

    @property
    def per_call(self) -> float:
        """Percent of one core per call."""
        return 100 * self.cpu_s / max(self.wall_s, 1e-9) / max(self.calls, 1)

    def report(self) -> str:
        per_call = self.per_call
        capacity = 100 / per_call if per_call else float("inf")
        return (f"{self.label:>5}: {self.up}/{self.calls} calls up; bridge CPU "
                f"{100 * self.cpu_s / self.wall_s:.1f} % of a core, {per_call:.3f} % per "
                f"call -> {capacity:.0f} calls per core; callers sent "
                f"{self.sent_per_call_s:.1f} and received {self.received_per_call_s:.1f} "
                f"packets/s per call, could not unprotect "
                f"{self.refused}; bridge SRTP drops {self.dropped:.0f}")


async def _round(bridge: ServeProcess, label: str, suite: str | None, *, n: int,
                 seconds: float, pattern: bytes) -> Round:
    caller = await SipCaller(("127.0.0.1", bridge.sip_port)).open()
    calls: list[CallMedia] = []
    sender: asyncio.Future[None] | None = None
    try:
        for _ in range(n):
            status, call = await caller.invite("echo", suite=suite)
            if status == 200:
                calls.append(call)
        # Media flows for the whole round: a warm-up, the window, and a tail.
        sender = asyncio.ensure_future(stream(calls, pattern, seconds + 6.0))
        await asyncio.sleep(3.0)
        drops0 = await _srtp_drops(bridge)
        got0, sent0 = sum(c.packets for c in calls), sum(c.sent for c in calls)
        cpu0, wall0 = cpu_seconds(bridge.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = cpu_seconds(bridge.pid) - cpu0, time.monotonic() - wall0
        got, sent = sum(c.packets for c in calls) - got0, sum(c.sent for c in calls) - sent0
        drops = await _srtp_drops(bridge) - drops0
        sender.cancel()
        for call in calls:
            await caller.bye(call)
    finally:
        if sender is not None:
            sender.cancel()
        caller.close()
    up = max(len(calls), 1)
    return Round(label, n, len(calls), cpu, wall, sent / up / wall, got / up / wall,
                 sum(c.refused for c in calls), drops)


async def _srtp_drops(bridge: ServeProcess) -> float:
    """The bridge's SRTP drops so far, read in a thread (the callers' loop keeps sending)."""
    def read() -> float:
        _status, body = bridge.get("/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith(DROP + '{reason="srtp_'))
    return await asyncio.to_thread(read)


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    n, seconds = args.calls, args.seconds
    pattern = _bench_pattern()
    placement = cpus.plan(args.pin)
    if placement is not None and not cpus.pin(0, placement[1]):
        placement = None
    with EmulatorProcess() as emulator, ServeProcess(
            workdir / "serve", rtp_ports=free_rtp_range(4 * n + 40), records=False,
            log_level="WARNING",
            env={**load_env(n, emulator.url), "VOICEBRIDGE_SIP_SRTP": "accept",
                 "VOICEBRIDGE_SIP_SDES_OVER_PLAIN": "true"}) as bridge:
        if placement is not None and not cpus.pin(bridge.pid, placement[0]):
            placement = None
        print(f"placement: {cpus.describe(placement, 'emulator and the callers')}")
        print(f"bridge pid {bridge.pid}; {n} calls per round from a Python caller, "
              f"{seconds:.0f} s measured per round; SRTP suite {args.srtp_suite}")
        rounds = [await _round(bridge, "plain", None, n=n, seconds=seconds,
                                pattern=pattern)]
        await asyncio.sleep(2.0)                  # the first round's calls wind down
        rounds.append(await _round(bridge, "srtp", args.srtp_suite, n=n,
                                    seconds=seconds, pattern=pattern))
    for r in rounds:
        print(r.report())
    plain, srtp = rounds
    print(f"SRTP costs the bridge {srtp.per_call - plain.per_call:+.3f} % of a core per call "
          f"({100 * (srtp.per_call / plain.per_call - 1) if plain.per_call else 0:+.0f} %)")
    ok = all(r.up == n and r.refused == 0 and r.dropped == 0 for r in rounds)
    return 0 if ok else 1


__all__ = ["Round", "bench"]
