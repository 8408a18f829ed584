"""``voicebridge bench call``: N concurrent calls over in-memory legs on one core.

The emulator runs in ANOTHER process (``python -m bridge.cli emulator --port P``) so the
figures are this process's own: every call's media pump, playout pacing, Realtime client
and call logic, all on the one shared media clock. Each ``MemoryLeg`` plays a script of
speech-like bursts (paced by the clock, silence in between, as a phone sends RTP); the
echo agent replies, and every other cycle the caller talks over the reply (barge-in).

Printed figures:

* CPU per call: ``process_time`` of this process over the measured window / N / seconds,
  and the whole process as % of one core;
* pacing, two figures:
  - grid offset: |hand-off - grid time| of every frame to every leg (p50/p99/max). With N
    calls served one after another in one tick, the last call's frames go out a fixed
    couple of milliseconds after the grid every tick: an offset no receiver can see;
  - inter-frame jitter, what a receiver's jitter buffer sees: per leg, the variation of
    the spacing of consecutive hand-offs, |(t[n] - t[n-1]) - 20 ms| (20 ms = the grid
    step between the two ticks) over all legs' frames (p50/p99/max), and the RFC 3550
    §6.4.1 running interarrival jitter estimate (J += (|D| - J)/16) averaged over legs;
  late ticks (catch-up after a stalled loop) and skipped ticks;
* memory per call: RSS growth from before the calls to the end of the window / N;
* barge-in: speech_started reaching the bridge -> the first tick that hands the leg no
  agent audio (what the caller hears stop);
* turn latency split: speech_stopped -> first reply delta (upstream) and first delta ->
  first frame handed to the leg (the bridge's own pipeline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from bridge.aio import cancel_and_wait
from bridge.bench import cpus
from bridge.bench.cpus import add_pin_argument
from bridge.bench.sip import EmulatorProcess
from bridge.call.call import Call
from bridge.call.clock import MediaClock, percentile
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager, client_factory
from bridge.call.memory import MemoryLeg, PacingFigures
from bridge.call.records import MemoryRecordStore
from bridge.codecs import g711
from bridge.dialplans.loader import load_dialplans
from bridge.dialplans.plan import DialplanSet
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.recovery import RecoveryPolicy

_PLAN = """
description = "bench: echo agent, no greeting"
tools = []

[match]
default = true

[agent]
instructions = "bench"
audio_format = "{audio_format}"

[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 300

[limits]
max_call_s = 3600
"""
#: ``--analysis``: every caller turn transcribed and analysed (an out-of-band response)
_ANALYSIS = """
[agent.transcription]
model = "whisper-1"

[analysis]
max_concurrent = 2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls (default 50)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="measured window in seconds (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after the last call connected before measuring")
    parser.add_argument("--port", type=int, default=0, help="emulator port (default: free)")
    parser.add_argument("--emulator-url", default="",
                        help="use this running emulator instead of starting one")
    parser.add_argument("--leg-rate", type=int, default=8000, choices=(8000, 16000, 48000))
    parser.add_argument("--audio-format", default="pcm16", choices=("pcm16", "g711"))
    parser.add_argument("--append-ms", type=int, default=20, choices=(20, 40),
                        help="caller audio per input_audio_buffer.append (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--analysis", action="store_true",
                        help="live call analysis on every caller turn (transcription and "
                             "one out-of-band response per turn, as [analysis] does)")
    add_pin_argument(parser)


# -------------------------------------------------------------------------- caller audio
def _burst(rate: int, ms: int) -> bytes:
    """Speech-like audio: a 150 Hz buzz with harmonics, syllable-modulated at 4 Hz."""
    import array  # noqa: PLC0415

    n = rate * ms // 1000
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        t = i / rate
        env = 0.55 + 0.45 * math.sin(2 * math.pi * 4 * t)
        fade = min(1.0, i / (rate * 0.01), (n - 1 - i) / (rate * 0.01))
        s = sum(math.sin(2 * math.pi * 150 * k * t) / k for k in (1, 2, 3, 4))
        out[i] = int(3000 * env * fade * s)
    return out.tobytes()


class CallerScript:
    """Keeps a leg's inbound script topped up: talk, wait for the echo, sometimes barge in.

    Cycle A (plain turn): speak 900 ms, silence 2600 ms (the echo plays back meanwhile).
    Cycle B (barge-in):   speak 900 ms, silence 900 ms (the echo starts), speak 500 ms over
    it, silence 2200 ms.
    """

    def __init__(self, leg: MemoryLeg, burst: list[bytes], short: list[bytes],
                 silence: bytes, rng: random.Random) -> None:
        self.leg = leg
        self.burst, self.short, self.silence = burst, short, silence
        self.cycle = 0
        self.barge_starts: list[int] = []        # frame index where a barge-in burst starts
        self._frames_queued = 0
        # Stagger the calls so their turns do not line up.
        self._queue_silence(rng.randint(10, 150))

    def _queue_silence(self, frames: int) -> None:
        self._queue([self.silence] * frames)

    def _queue(self, frames: list[bytes]) -> None:
        self.leg.play_frames(frames)
        self._frames_queued += len(frames)

    def top_up(self) -> None:
        if self.leg.script_ms > 2000:
            return
        self._queue(self.burst)
        if self.cycle % 2:
            self._queue_silence(45)
            self.barge_starts.append(self._frames_queued)
            self._queue(self.short)
            self._queue_silence(110)
        else:
            self._queue_silence(130)
        self.cycle += 1


# -------------------------------------------------------------------------- emulator
def _runqueue_wait_s() -> float:
    """Seconds this process has spent runnable but waiting for a CPU (Linux schedstat):
    how much other load on the machine held the media loop back."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


class GcPauses:
    """Wall time of each garbage collection, per generation (a full collection of a busy
    heap stops the loop, and with it every call's media, for as long as it runs)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses[int(info["generation"])].append(time.perf_counter() - self._t)

    def summary(self) -> str:
        return "; ".join(f"gen{g} {len(p)} x max {max(p, default=0.0) * 1000:.1f} ms"
                         for g, p in self.pauses.items())


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


# -------------------------------------------------------------------------- run
async def _run_calls(args: argparse.Namespace, plans: DialplanSet, url: str) -> int:
    n = args.calls
    rng = random.Random(args.seed)
    rate = args.leg_rate
    target = RealtimeSettings.from_env({}).target(emulator_url=url)
    clock = MediaClock()
    store = MemoryRecordStore()
    manager = CallManager(plans, client_factory(
            target, recovery=RecoveryPolicy(budget_s=0, connect_attempts=1)), store, clock,
                          max_calls=n, call_options={"append_ms": args.append_ms})
    frame = 2 * rate // 50
    burst_pcm = _burst(rate, 900)
    burst = [burst_pcm[i:i + frame] for i in range(0, len(burst_pcm), frame)]
    short = burst[:25]
    silence = bytes(frame)

    rss0 = _rss_bytes()
    legs: list[MemoryLeg] = []
    scripts: list[CallerScript] = []
    tasks: list[asyncio.Task[Any]] = []
    print(f"starting {n} calls against {url} (leg {rate} Hz, {args.audio_format}, "
          f"{args.append_ms} ms appends) ...",
          flush=True)
    for i in range(n):
        info = LegInfo(call_id=f"bench-{i}", source=Source.MEMORY, caller=f"+1555{i:06d}",
                       called="100")
        leg = MemoryLeg(info, sample_rate=rate, clock=clock, keep_audio=False)
        legs.append(leg)
        tasks.append(asyncio.create_task(manager.handle(leg)))
        if i % 20 == 19:
            await asyncio.sleep(0.05)      # do not open 200 sockets in one burst

    # Wait until every call has a session.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        calls = list(manager.calls.values())
        if len(calls) == n and all(c.record.connected_at for c in calls):
            break
        if all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.1)
    calls_by_leg: dict[int, Call] = {id(c.leg): c for c in manager.calls.values()}
    connected = sum(1 for c in calls_by_leg.values() if c.record.connected_at)
    print(f"{connected}/{n} calls connected", flush=True)
    if connected < n:
        for c in calls_by_leg.values():
            c.end("shutdown", "bench aborted")
        await asyncio.gather(*tasks, return_exceptions=True)
        print("not all calls connected; no figures", file=sys.stderr)
        return 1

    # A leg that carries G.711 (a G.711 session: passthrough) is fed what a phone sends.
    carried: dict[str, tuple[list[bytes], list[bytes], bytes]] = {"pcm16": (
        burst, short, silence)}
    for leg in legs:
        if leg.carry not in carried:
            law = leg.carry
            carried[law] = ([g711.encode(law, f) for f in burst],
                            [g711.encode(law, f) for f in short], g711.encode(law, silence))
        scripts.append(CallerScript(leg, *carried[leg.carry], rng))
    # What 'serve' does after start-up: everything alive now (modules, dialplans, the
    # calls' set-up) goes to the permanent generation, so a full collection during calls
    # walks only what the calls allocate since (measured: 136 ms gen2 pauses at 200 calls).
    gc.collect()
    gc.freeze()

    def top_up_all() -> None:
        for s in scripts:
            s.top_up()

    async def feeder() -> None:
        while True:
            top_up_all()
            await asyncio.sleep(0.5)

    feed_task = asyncio.create_task(feeder())
    await asyncio.sleep(args.warmup)

    # ---- measured window
    for leg in legs:
        leg.stats.timeline = array("d")     # two C-level appends per frame, figures after
    for c in calls_by_leg.values():
        c.playout.stop_latencies.clear()
        c.barge_in_seen.clear()
    frames0 = sum(leg.stats.frames_out for leg in legs)
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    clock.reset_stats()
    mine = cpus.own_cpus()
    cpu0, wall0, rq0 = time.process_time(), time.monotonic(), _runqueue_wait_s()
    steal0 = cpus.stolen_s(mine)
    await asyncio.sleep(args.seconds)
    cpu1, wall1, rq1 = time.process_time(), time.monotonic(), _runqueue_wait_s()
    steal1 = cpus.stolen_s(mine)
    rss1 = _rss_bytes()
    gc.callbacks.remove(gc_pauses)
    st = clock.stats()
    pacing = PacingFigures()
    for leg in legs:
        if leg.stats.timeline is not None:
            pacing.add(leg.stats.timeline)
        leg.stats.timeline = None
    handoff, spacing = pacing.handoff, pacing.spacing
    rfc_jitter = sorted(pacing.jitter)
    frames = sum(leg.stats.frames_out for leg in legs) - frames0
    stops = sorted(x for c in calls_by_leg.values() for x in c.playout.stop_latencies)
    barges = sum(len(c.barge_in_seen) for c in calls_by_leg.values())
    turns = [t for c in calls_by_leg.values() for t in c.record.turns]
    analyses = [a for c in calls_by_leg.values() for a in c.record.analysis]
    dropped_up = 0
    for c in calls_by_leg.values():
        stats = getattr(c.client, "stats", None)
        dropped_up += getattr(stats, "frames_dropped", 0)

    await cancel_and_wait(feed_task)
    await manager.shutdown("shutdown", grace_s=10)
    await asyncio.gather(*tasks, return_exceptions=True)

    wall = wall1 - wall0
    cpu = cpu1 - cpu0
    ms = 1000.0
    print()
    print(f"calls                  {n} concurrent, {wall:.1f} s measured")
    print(f"CPU                    {cpu / wall * 100:.1f} % of one core for the process; "
          f"{cpu / n / wall * ms:.2f} ms CPU per call per second "
          f"({cpu / n / wall * 100:.3f} % of a core per call)")
    print(f"CPU contention         {rq1 - rq0:.1f} s of the {wall:.1f} s spent runnable but "
          f"waiting for a CPU (other processes; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); hypervisor steal on "
          f"this process's CPUs {(steal1 - steal0) * 1000:.0f} ms")
    print(f"frames to legs         {frames} ({frames / n / wall:.1f} per call per second; "
          f"50 expected)")
    print(f"pacing |hand-off-grid| p50 {handoff.percentile(50) * ms:.2f} ms, "
          f"p99 {handoff.percentile(99) * ms:.2f} ms, max {handoff.max * ms:.2f} ms "
          f"({handoff.n} frames) -- grid offset: a call's constant offset is invisible "
          "to the far end")
    print(f"inter-frame jitter     per call |(t[n] - t[n-1]) - 20 ms| "
          f"p50 {spacing.percentile(50) * ms:.2f} ms, p99 {spacing.percentile(99) * ms:.2f} ms, "
          f"max {spacing.max * ms:.2f} ms ({spacing.n} spacings); RFC 3550 jitter estimate "
          f"mean {sum(rfc_jitter) / max(len(rfc_jitter), 1) * ms:.2f} ms, "
          f"worst call {(rfc_jitter[-1] if rfc_jitter else 0.0) * ms:.2f} ms")
    drift = max((abs(d) for d in pacing.drift), default=0.0)
    print(f"drift                  {st.ticks} clock ticks in {wall:.3f} s of monotonic time "
          f"({wall / clock.period:.1f} periods); per call, hand-off offset from its grid at "
          f"the end minus at the start: max {drift * ms:.2f} ms")
    print(f"clock                  {st.ticks} ticks, {st.wakeups} wake-ups "
          f"({clock.preempted} preempting other work), "
          f"tick |offset| p50 {st.lateness_p50_ms:.3f} / p99 {st.lateness_p99_ms:.3f} / "
          f"max {st.lateness_max_ms:.3f} ms")
    print(f"late frames            {st.late_ticks} late ticks x {n} legs = "
          f"{st.late_ticks * n} frames; {st.skipped_ticks} ticks skipped; "
          f"{st.backlog_dropped} inbound ticks dropped")
    print(f"gc pauses              {gc_pauses.summary()}")
    print(f"memory                 {(rss1 - rss0) / n / 1024:.0f} KiB RSS per call "
          f"({(rss1 - rss0) / 2**20:.1f} MiB for {n} calls)")
    print(f"barge-ins              {barges} in the window; speech_started -> agent audio "
          f"stopped at the leg: p50 {percentile(stops, 50) * ms:.1f} ms, "
          f"p99 {percentile(stops, 99) * ms:.1f} ms, "
          f"max {(stops[-1] if stops else 0) * ms:.1f} ms")
    if turns:
        up = sorted(t.upstream_ms for t in turns)
        pipe = sorted(t.pipeline_ms for t in turns)
        print(f"turn latency           {len(turns)} replies (whole calls): upstream wait "
              f"p50 {percentile(up, 50):.0f} ms; bridge pipeline p50 "
              f"{percentile(pipe, 50):.1f} ms, p99 {percentile(pipe, 99):.1f} ms")
    if args.analysis:
        outcomes: dict[str, int] = {}
        for a in analyses:
            outcomes[a["status"]] = outcomes.get(a["status"], 0) + 1
        lat = sorted(a["latency_ms"] for a in analyses if a["latency_ms"] is not None)
        print(f"analysis               {len(analyses)} turns analysed (whole calls): "
              + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
              + f"; asked -> result p50 {percentile(lat, 50):.0f} ms, "
              f"p99 {percentile(lat, 99):.0f} ms")
    print(f"caller frames dropped  {dropped_up} (upstream not draining)")
    return 0


def run(args: argparse.Namespace) -> int:
    with cpus.kept_affinity():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bench.toml").write_text(_PLAN.replace("{audio_format}", args.audio_format)
                                           + (_ANALYSIS if args.analysis else ""))
        plans = load_dialplans(Path(tmp))
    placement = cpus.plan(args.pin)
    with contextlib.ExitStack() as stack:
        url = args.emulator_url
        emulator: EmulatorProcess | None = None
        if not url:
            emulator = stack.enter_context(EmulatorProcess(args.port or None, quiet=True))
            url = emulator.url
        if placement is not None and not (cpus.pin(0, placement[0]) and (
                emulator is None or cpus.pin(emulator.pid, placement[1]))):
            placement = None
        print(f"placement              {cpus.describe(placement, 'emulator')}", flush=True)
        return asyncio.run(_run_calls(args, plans, url))
