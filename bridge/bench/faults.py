"""``voicebridge bench faults``: a fault and abuse campaign against a real bridge.

Everything runs on loopback, bounded in time, against one ``voicebridge serve`` subprocess
whose Realtime upstream is a ``voicebridge emulator`` in a process of its own (both run
with ``PYTHONPATH=--serve-pythonpath`` when given, so the same campaign measures an older
checkout; only settings every version knows are passed). Scenarios (``--only``):

Upstream faults, each during ``--calls`` concurrent SIP calls placed from 127.0.1.N by the
in-process UACs of :mod:`bridge.bench.faults_uac` (1.5 s warbling turns, every 4 s before
the fault, at the fault's start and every 4 s during it, then 3 s after it ends and every
4 s after that; the emulator's VAD sees turns and echoes them):

* ``upstream-kill``: the emulator SIGKILLed ``--pre-s`` (9) s into the calls and never
  restarted;
* ``hang-20``: the emulator SIGSTOPped for 20 s, then SIGCONT (connections stay open,
  nothing answers);
* ``blip-1``, ``blip-5``, ``blip-15``: the emulator SIGKILLed and a new one started on
  the same port so that it listens again N s later (the new process is launched its
  measured start-up time early). "Unavailable for N s" is modelled by a kill and not a
  freeze because that is what an outage looks like to a client: connections reset,
  connects refused until it is back. The freeze is ``hang-20``.

For each call the received audio is cut into 20 ms frames (RMS below 200 = silence; a
gap in packets is silence too) and judged (:func:`~bridge.bench.faults_uac.judge`).
*Agent audio* is a voiced stretch of at least 0.4 s (the bridge's comfort beeps are
shorter; they do break a silence, as the caller hears them). *recovered*: agent audio
beginning from 0.5 s after the fault's end, no BYE/REFER from the bridge; *fell back*: the
bridge sent BYE or REFER; *lost*: neither. The longest silence runs from the fault's
start to the call's end (or the bridge's BYE).
*answered after fault*: agent audio beginning between the fault's end and the end of the first
turn after it (+0.3 s), in a call the bridge did not hang up -- an answer to a turn spoken
during the fault (a greeting from a reconnected session would count too; the fallback's
announcement does not).

SIP and HTTP abuse against the same serve (:mod:`bridge.bench.faults_floods`), each while
``--calls`` legitimate 6 s calls are placed from 127.0.1.N (ok = answered, agent audio
heard, not hung up by the bridge): ``malformed-udp``, ``idle-tcp``, ``slowloris``,
``invite-flood`` (max_calls unACKed INVITEs from 127.0.0.3 first) and ``webrtc-offers``
(anonymous ``POST /webrtc/offer``, no calls; Realtime sessions counted from the
emulator's log).

One table row per scenario: calls tried, recovered (ok), fell back, lost (failed),
longest caller-side silence (max, then per call), answered after fault, serve RSS
before -> after, serve log bytes written, duration; a notes line under it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.bench.faults_floods import RUNNERS
from bridge.bench.faults_uac import BURST_S, UacCall, caller_ip, judge, summary
from bridge.bench.faults_upstream import Upstream, add_serve_pythonpath, log_size, raise_nofile
from bridge.bench.sip import ServeProcess, free_rtp_range, rss_mib, run_in_workdir

UPSTREAM = ("upstream-kill", "blip-1", "blip-5", "blip-15", "hang-20")
FLOODS = ("malformed-udp", "idle-tcp", "slowloris", "invite-flood", "webrtc-offers")
SCENARIOS = UPSTREAM + FLOODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=10,
                        help="concurrent SIP calls per scenario (default 10)")
    parser.add_argument("--only", default="", metavar="A,B",
                        help=f"scenarios to run, comma-separated (default all: "
                        f"{','.join(SCENARIOS)})")
    add_serve_pythonpath(parser, "serve and emulator")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--max-calls", type=int, default=40,
                        help="the serve's [sip] max_calls, and the INVITE flood's size "
                        "(default 40)")
    parser.add_argument("--datagrams", type=int, default=100_000,
                        help="malformed UDP datagrams (default 100000)")
    parser.add_argument("--tcp-conns", type=int, default=2000,
                        help="idle TCP connections (default 2000)")
    parser.add_argument("--slowloris", type=int, default=200,
                        help="slowloris TCP connections (default 200)")
    parser.add_argument("--offers", type=int, default=50,
                        help="anonymous WebRTC offers (default 50)")
    parser.add_argument("--hold-s", type=float, default=12.0,
                        help="how long idle/slowloris connections are held (default 12)")
    parser.add_argument("--pre-s", type=float, default=9.0,
                        help="seconds of calls before an upstream fault (default 9)")
    parser.add_argument("--post-s", type=float, default=18.0,
                        help="seconds of calls after an upstream fault ends (default 18: "
                        "long enough to see a 10 s reconnect budget run out and the "
                        "fallback's announcement end; at least 5)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep the serve and emulator logs in DIR, and per scenario a "
                        "JSON of every call (turns sent, voiced audio received, BYE times)")


@dataclass
class Row:
    """One scenario's line of the table."""

    name: str
    calls: int = 0
    ok: int = 0
    fell_back: int = 0
    lost: int = 0
    silences: list[float] = field(default_factory=list)
    dead_airs: list[float] = field(default_factory=list)
    answered: int | None = None
    rss_before: float = 0.0
    rss_after: float = 0.0
    log_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    detail: dict[str, object] = field(default_factory=dict)      # for --keep's JSON


HEADER = (f"{'scenario':<14} {'calls':>5} {'recov':>5} {'fellbk':>6} {'lost':>5} "
          f"{'silence_max_s':>13} {'dead_air_s':>10} {'answered':>8} {'rss_mib':>13} "
          f"{'log_bytes':>10} "
          f"{'secs':>6}  silence per call (s)")


def format_row(row: Row) -> str:
    answered = "-" if row.answered is None else f"{row.answered}/{row.calls}"
    rss = f"{row.rss_before:.1f}->{row.rss_after:.1f}"
    silence = f"{max(row.silences):.2f}" if row.silences else "-"
    dead_air = f"{max(row.dead_airs):.2f}" if row.dead_airs else "-"
    per_call = " ".join(f"{s:.1f}" for s in row.silences) or "-"
    return (f"{row.name:<14} {row.calls:>5} {row.ok:>5} {row.fell_back:>6} {row.lost:>5} "
            f"{silence:>13} {dead_air:>10} {answered:>8} {rss:>13} {row.log_bytes:>10} "
            f"{row.seconds:>6.1f}  [{per_call}]")


@dataclass
class Campaign:
    """What every scenario needs: the serve, the upstream, the options."""

    args: argparse.Namespace
    workdir: Path
    upstream: Upstream
    serve: ServeProcess | None = None
    startup_s: float = 1.0            # the emulator's shortest measured start-up time
    restarts: int = 0

    def serve_env(self) -> dict[str, str]:
        env = {"VOICEBRIDGE_REALTIME_EMULATOR_URL": self.upstream.url,
               "VOICEBRIDGE_SIP_MAX_CALLS": str(self.args.max_calls),
               "VOICEBRIDGE_SIP_TRANSPORTS": "udp,tcp"}
        if self.args.serve_pythonpath:
            env["PYTHONPATH"] = self.args.serve_pythonpath
        return env

    def start_serve(self) -> ServeProcess:
        n = self.restarts
        serve = ServeProcess(self.workdir / f"serve-{n}", records=False,
                             rtp_ports=free_rtp_range(4 * self.args.max_calls + 80),
                             env=self.serve_env())
        try:
            serve.start()
        except BaseException:
            serve.stop()
            raise
        self.serve = serve
        return serve

    def ready(self) -> ServeProcess:
        """The serve, started again if a scenario killed it (counted in the notes)."""
        self.upstream.ensure()
        if self.serve is None or self.serve.proc is None or self.serve.proc.poll() is not None:
            if self.serve is not None:
                self.restarts += 1
            return self.start_serve()
        return self.serve

    def settle(self, limit_s: float = 40.0) -> None:
        """Wait (bounded) for the previous scenario's calls to be gone from the serve."""
        serve = self.serve
        deadline = time.monotonic() + limit_s
        while serve is not None and time.monotonic() < deadline:
            try:
                active = sum(serve.metric("voicebridge_calls_active", f'source="{s}"')
                             for s in ("sip", "webrtc"))
            except OSError:
                return
            if active <= 0:
                return
            time.sleep(0.5)


async def _until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))


def burst_plan(t0: float, fault_at: float, fault_end: float, end: float) -> list[float]:
    """Turn starts: every 4 s before the fault (back from it), at its start and every 4 s
    during it, then 3 s after its end and every 4 s after that."""
    times = []
    t = fault_at - 4.0
    while t >= t0 + 1.5:
        times.append(t)
        t -= 4.0
    t = fault_at
    while t < fault_end or t == fault_at:
        times.append(t)
        t += 4.0
    t = fault_end + 3.0
    while t + BURST_S < end - 0.5:
        times.append(t)
        t += 4.0
    return sorted(times)


async def upstream_fault(c: Campaign, name: str, row: Row) -> None:
    serve = c.serve
    assert serve is not None
    kind, _, arg = name.partition("-")
    fault_s = 0.0 if kind == "upstream" else float(arg)
    t0 = time.monotonic() + 0.3
    fault_at = t0 + max(c.args.pre_s, 2.0)
    planned_end = fault_at + fault_s
    end = planned_end + max(c.args.post_s, 5.0)
    bursts = burst_plan(t0, fault_at, planned_end, end)
    calls = [UacCall(i, serve.sip_port, bursts=bursts, local_ip=caller_ip(i))
             for i in range(c.args.calls)]
    tasks = [asyncio.ensure_future(call.run(end)) for call in calls]
    await _until(fault_at)
    fault_end = fault_at
    if kind == "upstream":
        c.upstream.kill()
        row.notes.append("emulator SIGKILLed, not restarted")
    elif kind == "hang":
        c.upstream.freeze()
        await _until(planned_end)
        c.upstream.thaw()
        fault_end = time.monotonic()
        row.notes.append(f"emulator SIGSTOPped for {fault_end - fault_at:.1f} s")
    else:
        c.upstream.kill()
        await _until(planned_end - c.startup_s)
        launched = time.monotonic()
        await asyncio.to_thread(c.upstream.start)
        fault_end = time.monotonic()
        # The shortest start-up seen: an outage runs N s or a little longer, never shorter.
        c.startup_s = min(c.startup_s, fault_end - launched)
        row.notes.append(f"emulator SIGKILLed, a new one listening on the same port "
                         f"{fault_end - fault_at:.1f} s later")
    answer_by = fault_end + 3.0 + BURST_S + 0.3
    outcomes = await asyncio.gather(*tasks)
    row.detail = {"fault_at": round(fault_at - t0, 3), "fault_end": round(fault_end - t0, 3),
                  "answer_by": round(answer_by - t0, 3),
                  "calls": [summary(out, t0) for out in outcomes]}
    answered = 0
    for out in outcomes:
        verdict = judge(out, fault_at, fault_end, answer_by)
        row.calls += 1
        row.ok += verdict.kind == "recovered"
        row.fell_back += verdict.kind == "fell back"
        row.lost += verdict.kind == "lost"
        if out.answered_at is not None:
            row.silences.append(verdict.silence_s)
            row.dead_airs.append(verdict.dead_air_s)
        answered += verdict.answered
    row.answered = answered if kind != "upstream" else None
    setup = sum(out.answered_at is not None for out in outcomes)
    if setup < len(outcomes):
        statuses = sorted({out.status or out.error or "none" for out in outcomes
                           if out.answered_at is None}, key=str)
        row.notes.append(f"{len(outcomes) - setup} calls not set up ({statuses})")


Runner = Callable[[Campaign, str, Row], Awaitable[None]]


def _runner(name: str) -> Runner:
    return upstream_fault if name in UPSTREAM else RUNNERS[name]


async def run_scenario(c: Campaign, name: str) -> Row:
    row = Row(name)
    await asyncio.to_thread(c.settle)
    restarts = c.restarts
    serve = await asyncio.to_thread(c.ready)
    if c.restarts != restarts:
        row.notes.append("serve had died and was started again first")
    sessions0 = c.upstream.sessions_opened()
    row.rss_before = rss_mib(serve.pid)
    log0 = log_size(serve.log_path)
    started = time.monotonic()
    await _runner(name)(c, name, row)
    row.seconds = time.monotonic() - started
    row.log_bytes = log_size(serve.log_path) - log0
    alive = serve.proc is not None and serve.proc.poll() is None
    row.rss_after = rss_mib(serve.pid) if alive else 0.0
    if not alive:
        row.notes.append(f"serve DIED (exit {serve.proc.poll() if serve.proc else None})")
    row.notes.append(f"{c.upstream.sessions_opened() - sessions0} Realtime sessions opened")
    return row


def _names(only: str) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    return names


async def _campaign(args: argparse.Namespace, workdir: Path) -> int:
    names = _names(args.only)
    random.seed(args.seed)
    soft, hard = raise_nofile()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    upstream = Upstream(port, workdir / "emulator.log", args.serve_pythonpath)
    c = Campaign(args, workdir, upstream)
    try:
        t = time.monotonic()
        await asyncio.to_thread(upstream.start)
        c.startup_s = time.monotonic() - t
        serve = await asyncio.to_thread(c.start_serve)
        print(f"serve pid {serve.pid} (SIP 127.0.0.1:{serve.sip_port} udp+tcp, "
              f"{serve.http_url}), PYTHONPATH={args.serve_pythonpath or '(this checkout)'}; "
              f"emulator {upstream.url} (starts in {c.startup_s:.1f} s); "
              f"RLIMIT_NOFILE {soft}/{hard}; seed {args.seed}", flush=True)
        print(HEADER, flush=True)
        for name in names:
            row = await run_scenario(c, name)
            if args.keep and row.detail:
                text = json.dumps(row.detail, indent=1)
                (workdir / f"{name}.json").write_text(text, encoding="utf-8")
            print(format_row(row), flush=True)
            print(f"  {name}: {'; '.join(row.notes)}", flush=True)
    finally:
        if c.serve is not None:
            await asyncio.to_thread(c.serve.stop)
        await asyncio.to_thread(upstream.stop)
    return 0


def run(args: argparse.Namespace) -> int:
    return run_in_workdir(_campaign, args, "bench-faults-", args.keep)


__all__ = ["Campaign", "Row", "SCENARIOS", "add_arguments", "burst_plan", "format_row", "run"]
