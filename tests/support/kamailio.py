"""A real Kamailio for tests: started from a configuration text in a temporary folder.

Tests write the routing script they need (a registrar with digest auth, a dispatcher in
front of bridge nodes) and run it with :class:`Kamailio`. Each instance has its own
runtime folder, PID file and log, so several can run at once; the process runs in the
foreground (``-DD``) and logs to ``kamailio.log`` in its folder, which a failing test prints.

Module paths are found with :func:`module_dir`, so scripts can ``loadmodule "tm.so"``
after ``mpath`` is set to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.interop import require, require_binary

_MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/kamailio/modules",
                "/usr/lib/aarch64-linux-gnu/kamailio/modules",
                "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules")


def module_dir() -> str:
    """The folder holding Kamailio's modules (``tm.so``, ``dispatcher.so``...)."""
    for d in _MODULE_DIRS:
        if Path(d, "tm.so").is_file():
            return d
    require(False, "Kamailio's modules (tm.so) not found")
    raise AssertionError  # unreachable: require fails or skips


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for UDP and TCP on 127.0.0.1 at the moment of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port")


class Kamailio:
    """One Kamailio process running ``config`` (a kamailio.cfg text) from ``folder``."""

    def __init__(self, folder: Path, config: str, defines: Sequence[str] = ()) -> None:
        self.binary = require_binary("kamailio", "the SIP proxy/registrar tests run a real one")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "kamailio.cfg"
        self.config_path.write_text(config)
        self.log_path = folder / "kamailio.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: ``-A NAME=value`` pre-processor defines (the shipped configuration's settings).
        self.defines = [arg for d in defines for arg in ("-A", d)]

    def check(self) -> None:
        """Fail with Kamailio's own words if the configuration does not parse (``-c``)."""
        run = subprocess.run([self.binary, "-c", "-f", str(self.config_path), *self.defines],
                             capture_output=True, timeout=30, check=False)
        if run.returncode != 0:
            raise AssertionError("kamailio -c refused the configuration:\n"
                                 + run.stderr.decode(errors="replace")[-3000:])

    def start(self, wait_port: tuple[str, int] | None = None, timeout_s: float = 15.0) -> None:
        """Start it; with ``wait_port`` (a UDP listen address), wait until it answers there."""
        self.check()
        runtime = self.folder / "run"
        runtime.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-DD", "-E", "-f", str(self.config_path), *self.defines,
             "-Y", str(runtime),
             "-P", str(self.folder / "kamailio.pid"), "-w", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)
        log.close()
        if wait_port is not None:
            self._wait_options(wait_port, timeout_s)

    def _wait_options(self, addr: tuple[str, int], timeout_s: float) -> None:
        """Send OPTIONS until any SIP answer comes back (the script is then running)."""
        deadline = time.monotonic() + timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.3)
            port = s.getsockname()[1]
            n = 0
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"kamailio exited:\n{self.log_tail()}")
                n += 1
                s.sendto(_options(addr, port, n), addr)
                with contextlib.suppress(TimeoutError):
                    data = s.recv(65535)
                    if data.startswith(b"SIP/2.0 "):
                        return
        raise AssertionError(f"kamailio did not answer on {addr}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


@contextlib.contextmanager
def running(folder: Path, config: str, wait_port: tuple[str, int] | None = None
            ) -> Iterator[Kamailio]:
    """Run Kamailio for the ``with`` block; its log tail is printed if the block fails."""
    k = Kamailio(folder, config)
    k.start(wait_port)
    try:
        yield k
    except BaseException:
        print(f"--- kamailio log ({k.log_path}) ---\n{k.log_tail()}")
        raise
    finally:
        k.stop()


def _options(addr: tuple[str, int], port: int, n: int) -> bytes:
    host, kport = addr
    return (f"OPTIONS sip:{host}:{kport} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-probe{n}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p{n}\r\n"
            f"To: <sip:{host}:{kport}>\r\nCall-ID: probe-{n}@127.0.0.1\r\n"
            f"CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


__all__ = ["Kamailio", "free_port", "module_dir", "running"]
