"""CPU placement for the benchmarks: the measured process on one core, load elsewhere.

"N calls on one core" is a claim about one core, so the process under test is pinned to
one CPU and the load generators (the emulator, SIPp) to the others. Unpinned on a small
machine, the scheduler now and then runs a load generator on the bridge's core for a few
milliseconds: the bridge's media clock then wakes late for reasons that are not its own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator


def add_pin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pin", choices=("auto", "off"), default="auto",
        help="auto (default): the bridge on one CPU, the load generators on the others "
             "(machines with 2+ CPUs); off: leave placement to the scheduler")


def plan(mode: str) -> tuple[set[int], set[int]] | None:
    """(bridge CPUs, load CPUs) for ``mode``, or None when not pinning."""
    if mode == "off" or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


@contextlib.contextmanager
def kept_affinity() -> Iterator[None]:
    """Restore this process's CPU affinity afterwards (a benchmark run from a test or
    another program must not leave its caller pinned to one CPU)."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def pin(pid: int, cpus: set[int]) -> bool:
    """Pin ``pid`` (0: this process) to ``cpus``; False when the system refuses."""
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def own_cpus() -> set[int] | None:
    """The CPUs this process may run on (None: unknown, or all of them)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    mine = set(os.sched_getaffinity(0))
    return None if len(mine) >= (os.cpu_count() or 0) else mine


def stolen_s(cpus: set[int] | None) -> float:
    """CPU time the hypervisor took from ``cpus`` (None: all CPUs) so far, seconds: the
    ``steal`` column of /proc/stat (NaN where there is none). On a virtual machine a
    busy vCPU is now and then descheduled for 10-30 ms at a time; a media clock tick due
    then is late by as much, whatever the process does."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return float("nan")
    names = {"cpu"} if cpus is None else {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in names and len(fields) > 8:
            ticks += int(fields[8])
    return ticks / os.sysconf("SC_CLK_TCK")


def describe(placement: tuple[set[int], set[int]] | None, load: str) -> str:
    if placement is None:
        return "not pinned"
    bridge, others = placement
    return (f"bridge on CPU {','.join(map(str, sorted(bridge)))}, {load} on CPU "
            f"{','.join(map(str, sorted(others)))}")


__all__ = ["add_pin_argument", "describe", "pin", "own_cpus", "plan", "stolen_s"]
