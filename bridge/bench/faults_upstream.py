"""The Realtime upstream of ``voicebridge bench faults``: a ``voicebridge emulator`` on a
fixed port that the campaign can kill, freeze and bring back on the same port.

Its log (INFO) is kept in a file: every WebSocket session it opens is one line
``emulator: session ... opened``, which is how the campaign counts the Realtime sessions
the bridge opened (the emulator has no stats route).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bridge.bench.sip import clean_env

_OPENED = re.compile(rb"emulator: session \S+ opened")


def add_serve_pythonpath(parser: argparse.ArgumentParser, what: str) -> None:
    """``--serve-pythonpath PATH``: run ``what`` from another checkout (before/after)."""
    parser.add_argument("--serve-pythonpath", default=None, metavar="PATH",
                        help=f"run {what} with PYTHONPATH=PATH (another checkout of the "
                        "bridge, to compare before and after a change)")


class Upstream:
    """``voicebridge emulator --port PORT`` with ``PYTHONPATH`` = ``pythonpath`` (if given)."""

    def __init__(self, port: int, log_path: Path, pythonpath: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.port = port
        self.log_path = log_path
        self.pythonpath = pythonpath
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, limit_s: float = 30.0) -> None:
        env = clean_env({"PYTHONPATH": self.pythonpath} if self.pythonpath else None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "--log-level", "INFO", "emulator",
                 "--port", str(self.port), *self.extra], env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log)
        self.stopped = False
        deadline = time.monotonic() + limit_s
        while True:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"voicebridge emulator did not start on port {self.port} "
                                   f"(exit {self.proc.poll()})")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: every connection dropped without a close frame, the port closed."""
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.stopped = False

    def freeze(self) -> None:
        """SIGSTOP: connections stay open (the kernel still accepts and ACKs), nothing
        answers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.stopped = True

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def ensure(self) -> None:
        """Running and answering (started again if a scenario left it dead or frozen)."""
        if self.stopped:
            self.thaw()
        if not self.alive:
            self.start()

    def sessions_opened(self) -> int:
        try:
            return len(_OPENED.findall(self.log_path.read_bytes()))
        except OSError:
            return 0

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if self.stopped:
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_nofile() -> tuple[int, int]:
    """RLIMIT_NOFILE soft limit raised to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def log_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


__all__ = ["Upstream", "log_size", "raise_nofile"]
