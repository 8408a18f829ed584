"""``voicebridge bench faults``: the caller-side judgement, and a tiny campaign end to end.

The campaign's figures are for its reader (this machine's load would make any threshold
flaky): what is checked is that each row is there, well formed and sane -- calls tried as
asked, every call judged once, a silence measured per call, RSS and log bytes of a live
serve, and the notes that say what was done to it.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bridge.bench.faults import burst_plan
from bridge.bench.faults_uac import SILENT_RMS, CallOutcome, judge, longest_silence

ROW = re.compile(r"^(?P<name>[a-z0-9-]+)\s+(?P<calls>\d+)\s+(?P<ok>\d+)\s+(?P<fell>\d+)\s+"
                 r"(?P<lost>\d+)\s+(?P<silence>[\d.]+|-)\s+(?P<dead_air>[\d.]+|-)\s+"
                 r"(?P<answered>\S+)\s+"
                 r"(?P<rss0>[\d.]+)->(?P<rss1>[\d.]+)\s+(?P<log>-?\d+)\s+(?P<secs>[\d.]+)\s+"
                 r"\[(?P<per_call>[^\]]*)\]$", re.MULTILINE)


def _outcome(voiced: list[tuple[float, float]], *, bye_at: float | None = None) -> CallOutcome:
    """A call answered at 0 s, ended at 30 s, with voiced audio over the given spans."""
    out = CallOutcome(0, status=200, answered_at=0.0, ended_at=30.0, bridge_bye_at=bye_at)
    t = 0.0
    while t < 30.0:
        loud = any(a <= t < b for a, b in voiced)
        out.frames.append((t, SILENT_RMS * 10 if loud else 0.0))
        t += 0.02
    return out


def test_longest_silence_counts_quiet_frames_and_missing_packets() -> None:
    out = _outcome([(0.0, 5.0), (8.0, 9.0), (20.0, 30.0)])
    assert longest_silence(out, 0.0, 30.0) == pytest.approx(11.0, abs=0.05)
    assert longest_silence(out, 5.0, 8.5) == pytest.approx(3.0, abs=0.05)
    out.frames = [f for f in out.frames if not 21.0 <= f[0] < 25.0]     # packets stop
    assert longest_silence(out, 19.0, 30.0) == pytest.approx(4.0, abs=0.05)


def test_judge_tells_recovered_fell_back_and_lost_apart() -> None:
    # Fault 10..15 s; a turn answered at 16.5 s (before the first post-fault turn ends).
    recovered = judge(_outcome([(2.0, 4.0), (16.5, 30.0)]), 10.0, 15.0, 19.8)
    assert (recovered.kind, recovered.answered) == ("recovered", True)
    assert recovered.silence_s == pytest.approx(6.5, abs=0.05)
    late = judge(_outcome([(2.0, 4.0), (25.0, 26.0)]), 10.0, 15.0, 19.8)
    assert (late.kind, late.answered) == ("recovered", False)
    fell = judge(_outcome([(2.0, 4.0), (12.0, 14.0)], bye_at=14.5), 10.0, 10.0, 14.8)
    assert (fell.kind, fell.answered) == ("fell back", False)    # it heard an announcement
    assert judge(_outcome([(2.0, 4.0)]), 10.0, 15.0, 19.8).kind == "lost"


def test_comfort_beeps_are_not_agent_audio_but_do_break_a_silence() -> None:
    beeps = [(t, t + 0.2) for t in (12.0, 15.2, 17.0, 19.0, 21.0, 23.0, 25.0, 27.0)]
    waiting = judge(_outcome([(2.0, 4.0), *beeps]), 10.0, 15.0, 19.8)
    assert (waiting.kind, waiting.answered) == ("lost", False)
    assert waiting.silence_s == pytest.approx(3.0, abs=0.05)        # 12.2 .. 15.2 s


def test_dead_air_does_not_count_the_callers_own_turns() -> None:
    out = _outcome([(0.0, 2.0), (6.0, 8.0)])
    assert longest_silence(out, 0.0, 8.0) == pytest.approx(4.0, abs=0.05)
    out.bursts = [3.0]                   # the caller talked 3.0 .. 4.5 s
    assert longest_silence(out, 0.0, 8.0) == pytest.approx(4.0, abs=0.05)    # raw
    assert longest_silence(out, 0.0, 8.0, talking_counts=True) == pytest.approx(1.5, abs=0.05)


def test_the_quiet_tail_after_the_last_answered_turn_is_not_counted() -> None:
    # Turns at 5 and 9 s, answered at 7-8.5 and 11-12.5 s; the caller then says nothing
    # until the call ends at 30 s. One turn period after the last turn ends the window.
    out = _outcome([(7.0, 8.5), (11.0, 12.5)])
    out.bursts = [5.0, 9.0]
    verdict = judge(out, 6.0, 6.0, 14.0)
    assert verdict.silence_s == pytest.approx(2.5, abs=0.05)      # 8.5 .. 11.0 s
    assert verdict.dead_air_s == pytest.approx(0.5, abs=0.05)     # 8.5 .. 9.0 s


def test_a_quiet_hold_signal_breaks_a_silence_but_is_not_the_agent() -> None:
    out = _outcome([(2.0, 4.0)])
    out.frames = [(t, 500.0 if 10.0 <= t < 20.0 else rms) for t, rms in out.frames]
    held = judge(out, 10.0, 15.0, 19.8)
    assert (held.kind, held.answered) == ("lost", False)             # only the hold
    assert held.silence_s == pytest.approx(10.0, abs=0.05)           # 20 .. 30 s


def test_turns_are_spoken_before_during_and_after_the_fault() -> None:
    plan = burst_plan(0.0, 9.0, 14.0, 27.0)
    assert plan == [5.0, 9.0, 13.0, 17.0, 21.0]
    assert burst_plan(0.0, 9.0, 9.0, 22.0) == [5.0, 9.0, 12.0, 16.0]


@pytest.mark.slow
def test_a_tiny_campaign_prints_a_sane_row_per_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "--log-level", "WARNING", "bench", "faults",
         "--calls", "2", "--only", "blip-1,malformed-udp", "--datagrams", "2000",
         "--pre-s", "6", "--post-s", "6"],
        capture_output=True, text=True, timeout=150, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr[-3000:]}"
    rows = {m["name"]: m for m in ROW.finditer(out)}
    assert set(rows) == {"blip-1", "malformed-udp"}, out
    for name, row in rows.items():
        assert int(row["calls"]) == 2, out
        assert float(row["rss0"]) > 0 and float(row["rss1"]) > 0, out   # a live serve
        assert int(row["log"]) > 0 and float(row["secs"]) > 0, out
        per_call = [float(x) for x in row["per_call"].split()]
        assert len(per_call) <= 2, (name, out)                 # one per answered call
        assert all(0 <= s <= float(row["secs"]) for s in per_call), out
    blip = rows["blip-1"]
    assert int(blip["ok"]) + int(blip["fell"]) + int(blip["lost"]) == 2, out
    assert re.fullmatch(r"[0-2]/2", blip["answered"]), out
    per_call = [float(x) for x in blip["per_call"].split()]
    assert len(per_call) == 2, out                          # both calls set up and measured
    assert float(blip["silence"]) == pytest.approx(max(per_call), abs=0.06), out
    assert 0 <= float(blip["dead_air"]) <= float(blip["silence"]), out
    notes = re.search(r"blip-1: emulator SIGKILLed, a new one listening on the same port "
                      r"[\d.]+ s later; (\d+) Realtime sessions opened", out)
    assert notes is not None, out
    assert int(notes[1]) >= 2, out                          # the calls reached the emulator
    assert "malformed-udp: 2000 malformed datagrams sent" in out, out
