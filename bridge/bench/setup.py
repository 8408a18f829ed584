"""``voicebridge bench setup``: how soon a SIP caller hears the agent.

A real ``voicebridge serve`` with a ``voicebridge emulator`` upstream in its own process (as
``bench faults`` runs them) takes ``--calls`` calls one after another from a Python UAC on
loopback (``bridge.bench.faults_uac``): INVITE with a µ-law offer, ACK, RTP both ways. For
each call it times, on the caller's side:

* INVITE sent -> 200 OK received (signalling);
* 200 OK -> the first voiced RTP frame (RMS of -44 dBFS or more): the greeting;
* INVITE -> the first voiced frame: what the caller waits in all.

and prints median, p90 and worst of each. The emulator opens each session after
``--open-ms`` (600 ms: TLS, a region's round trips and the service's own set-up, as a
cloud session takes) and answers the greeting's ``response.create`` at once, so the figure
is the bridge's set-up path (a real model adds its first-audio latency).
``--serve-pythonpath`` runs the serve from another checkout (the emulator always from
this one), to compare before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from pathlib import Path

from bridge.bench.faults_uac import SILENT_RMS, UacCall
from bridge.bench.faults_upstream import Upstream, add_serve_pythonpath
from bridge.bench.sip import ServeProcess, free_rtp_range, run_in_workdir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=20, help="calls, one after another")
    add_serve_pythonpath(parser, "serve (the emulator always from this checkout)")
    parser.add_argument("--ring-ms", type=int, default=0,
                        help="the serve's [sip] ring_ms (180 Ringing, then answer)")
    parser.add_argument("--open-ms", type=int, default=600,
                        help="the emulator takes this long to open a session, as a cloud "
                        "service does (default 600; the emulator always runs from this "
                        "checkout)")


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):6.0f} ms   p90 {p90:6.0f} ms   max {ms[-1]:6.0f} ms"


async def _measure(args: argparse.Namespace, workdir: Path) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    upstream = Upstream(port, workdir / "emulator.log", None,
                        ("--open-delay-ms", str(args.open_ms)))
    await asyncio.to_thread(upstream.start)
    env = {"VOICEBRIDGE_REALTIME_EMULATOR_URL": upstream.url,
           "VOICEBRIDGE_SIP_TRANSPORTS": "udp", "VOICEBRIDGE_SIP_RING_MS": str(args.ring_ms)}
    if args.serve_pythonpath:
        env["PYTHONPATH"] = args.serve_pythonpath
    serve = ServeProcess(workdir / "serve", records=False, rtp_ports=free_rtp_range(40),
                         env=env)
    answer, greet, total, failed = [], [], [], 0
    try:
        await asyncio.to_thread(serve.start)
        print(f"serve {serve.http_url} PYTHONPATH={args.serve_pythonpath or '(this checkout)'}"
              f", ring_ms {args.ring_ms}, session opening takes {args.open_ms} ms, "
              f"{args.calls} calls", flush=True)
        for n in range(args.calls):
            out = await UacCall(n, serve.sip_port).run(time.monotonic() + 3.0)
            first = next((at for at, rms in out.frames if rms >= SILENT_RMS), None)
            if out.answered_at is None or first is None:
                failed += 1
                continue
            answer.append(out.answered_at - out.started_at)
            greet.append(first - out.answered_at)
            total.append(first - out.started_at)
            await asyncio.sleep(0.3)
    finally:
        await asyncio.to_thread(serve.stop)
        await asyncio.to_thread(upstream.stop)
    print(f"INVITE -> 200 OK          {_stats(answer)}")
    print(f"200 OK -> first greeting  {_stats(greet)}")
    print(f"INVITE -> first greeting  {_stats(total)}")
    print(f"calls {args.calls}, without a greeting {failed}")
    return 0 if failed == 0 else 1


def run(args: argparse.Namespace) -> int:
    return run_in_workdir(_measure, args, "bench-setup-")


__all__ = ["add_arguments", "run"]
