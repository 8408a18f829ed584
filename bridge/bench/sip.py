"""``voicebridge bench sip --calls N --seconds S``: SIPp load with RTP both ways.

This program starts a ``voicebridge emulator`` and a ``voicebridge serve`` pointed at it
(two processes, so the emulator's work is not billed to the bridge), then has SIPp place
``N`` calls at a rate that brings them all up within ``--ramp`` seconds. Every call streams
a looped µ-law pattern (warbling-tone bursts and silence: the emulator's VAD sees turns and
echoes them) with ``rtp_stream``, so RTP flows both ways for the whole call. Once all calls
are up it measures for ``S`` seconds:

* success: SIPp's own count of successful and failed calls (its ``-trace_stat`` file);
* CPU of the bridge process per call, from ``/proc/PID/stat`` (utime + stime) over the
  window, and how many calls one core would carry at that cost;
* memory: the bridge's RSS before the calls and during them;
* RTP send jitter: every packet the bridge sends to SIPp is captured on the loopback
  interface (an ``AF_PACKET`` socket with a BPF filter, kernel receive timestamps); per
  stream, the deviation of each inter-arrival gap from 20 ms, p50/p99/max over all calls
  (the spacing variation a receiver's jitter buffer sees), and the RFC 3550 §6.4.1
  interarrival jitter estimate per stream (from the RTP timestamps), mean and worst; plus
  the bridge's own ``voicebridge_late_frames_total`` counter. The media clock's grid is
  not on the wire, so its offset is only approximated: each packet's delay after the first
  packet of its tick (packets grouped by a pause of more than 5 ms) -- how far into a
  tick the calls served last go out.

The goal the bridge is held to: ≥ 200 concurrent calls per core, 0 failed, p99 ≤ 2 ms.

Raw sockets need root (or ``CAP_NET_RAW``) — as does SIPp's ``play_pcap_audio``.

The same tooling serves the SIP interop tests: :class:`ServeProcess` (a real
``voicebridge serve`` subprocess with its banner parsed and its log kept),
:class:`LoopbackCapture` (what really went over the wire, with kernel timestamps),
:class:`Scenario` (SIPp UAC scenarios with literal media paths) and :func:`run_sipp`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.bench import cpus
from bridge.bench.cpus import add_pin_argument
from bridge.codecs.g711 import alaw_decode, ulaw_decode, ulaw_encode
from bridge.codecs.level import dbfs
from bridge.errors import RtpError
from bridge.rtp.packet import RtpPacket

PT_PCMU, PT_PCMA, PT_DTMF = 0, 8, 101
PAYLOAD_TYPES = {"pcmu": PT_PCMU, "pcma": PT_PCMA}
_DECODERS = {PT_PCMU: ulaw_decode, PT_PCMA: alaw_decode}
#: Variables that would point a bridge at a real upstream or another settings file.
_FOREIGN_ENV = ("AZURE_OPENAI_", "OPENAI_", "VOICEBRIDGE_")
#: One label of a /metrics series: name="value".
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# ---- small helpers -----------------------------------------------------------------------

def free_udp_port(pair: bool = False) -> int:
    """A UDP port free on 127.0.0.1 now (with ``pair``: an even port whose +2 is free too,
    as SIPp binds ``-mp`` and ``-mp``+2)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        port &= ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 2))
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port pair")


def load_env(n: int, emulator_url: str) -> dict[str, str]:
    """A serve's settings for ``n`` bench calls from one caller on UDP, to ``emulator_url``:
    one load generator is one source, so the per-source limits would cap the load."""
    return {"VOICEBRIDGE_REALTIME_EMULATOR_URL": emulator_url,
            "VOICEBRIDGE_SIP_MAX_CALLS": str(n + 10),
            "VOICEBRIDGE_SIP_INVITE_RATE_PER_SOURCE": "0",
            "VOICEBRIDGE_SIP_MAX_UNACKED_PER_SOURCE": str(n + 10),
            "VOICEBRIDGE_SIP_MAX_UNACKED": str(n + 10),
            "VOICEBRIDGE_SIP_TRANSPORTS": "udp"}


def free_rtp_range(size: int) -> tuple[int, int]:
    """A port range below the ephemeral range for the bridge's RTP (busy ports in it are
    skipped by the bridge, so this only has to make collisions unlikely)."""
    low = 20000 + 2 * (int.from_bytes(os.urandom(2), "big") % 5000)
    return low, low + max(size, 20) - 1


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p / 100) - 1))]


@dataclass(frozen=True)
class WireJitter:
    """Pacing figures from captured RTP arrivals, milliseconds."""

    deviations: list[float]     # per stream |(t[n] - t[n-1]) - 20 ms|, all streams
    rfc3550: list[float]        # per stream: final RFC 3550 §6.4.1 jitter estimate
    tick_offsets: list[float]   # each packet's delay after the first packet of its burst


def wire_jitter(streams: Mapping[int, Sequence[tuple[float, int]]], *,
                clock_rate: int = 8000, period_s: float = 0.020,
                tick_gap_s: float = 0.001) -> WireJitter:
    """``streams``: per stream, (arrival time in seconds, RTP timestamp) in arrival order.

    RFC 3550 §6.4.1: D(i,j) = (Rj - Ri) - (Sj - Si) and J += (|D(i-1,i)| - J) / 16, with
    S the RTP timestamp in seconds (a skipped frame does not count as jitter there).

    ``tick_offsets``: packets less than ``tick_gap_s`` apart are one burst (the bridge
    sends a phase slot's packets back to back, slots 2 ms apart); each packet's delay
    after its burst's first packet shows how long a slot's sends take.
    """
    deviations: list[float] = []
    rfc: list[float] = []
    arrivals: list[float] = []
    for pkts in streams.values():
        j = 0.0
        for (ra, sa), (rb, sb) in zip(pkts, pkts[1:], strict=False):
            deviations.append(abs((rb - ra) - period_s) * 1000)
            d = (rb - ra) - ((sb - sa) & 0xFFFFFFFF) / clock_rate
            j += (abs(d) - j) / 16
        if len(pkts) > 1:
            rfc.append(j * 1000)
        arrivals += [at for at, _ in pkts]
    arrivals.sort()
    offsets: list[float] = []
    first = prev = -1.0
    for at in arrivals:
        if at - prev > tick_gap_s:
            first = at
        offsets.append((at - first) * 1000)
        prev = at
    return WireJitter(deviations, rfc, offsets)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without upstream credentials or bridge settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    env.update(extra or {})
    return env


def _http_get(url: str, token: str | None = None, limit: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=limit) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


# ---- a real ``voicebridge serve`` ------------------------------------------------------------

class ServeProcess:
    """``voicebridge serve`` as a subprocess on free ports, its log kept for failure messages.

    SIP and HTTP bind port 0 and the ports are read from the start-up banner; readiness is
    ``GET /readyz`` answering 200. ``env`` adds ``VOICEBRIDGE_*`` settings (anything from the
    caller's own environment that could select another upstream or settings file is
    removed first). Without ``VOICEBRIDGE_REALTIME_EMULATOR_URL`` the bridge runs its
    in-process emulator.
    """

    TOKEN = "interop-admin-token-0123456789"

    def __init__(self, workdir: Path, *, dialplans: Path | None = None,
                 rtp_ports: tuple[int, int] | None = None, records: bool = True,
                 env: Mapping[str, str] | None = None, log_level: str = "INFO") -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rtp_ports = rtp_ports or free_rtp_range(200)
        self.records_path = self.workdir / "calls.db" if records else None
        self.log_path = self.workdir / "serve.log"
        settings = {
            "VOICEBRIDGE_SIP_HOST": "127.0.0.1", "VOICEBRIDGE_SIP_PORT": "0",
            "VOICEBRIDGE_HTTP_HOST": "127.0.0.1", "VOICEBRIDGE_HTTP_PORT": "0",
            "VOICEBRIDGE_HTTP_TOKEN": self.TOKEN,
            "VOICEBRIDGE_RTP_PORT_LOW": str(self.rtp_ports[0]),
            "VOICEBRIDGE_RTP_PORT_HIGH": str(self.rtp_ports[1]),
            "VOICEBRIDGE_RECORDS_PATH": str(self.records_path or ""),
            "VOICEBRIDGE_LOG_LEVEL": log_level,
        }
        if dialplans is not None:
            settings["VOICEBRIDGE_DIALPLANS_PATH"] = str(Path(dialplans).resolve())
        settings.update(env or {})
        self.env = clean_env(settings)
        self.proc: subprocess.Popen[str] | None = None
        self.banner: list[str] = []
        self.sip_port = 0
        self.http_url = ""
        self._reader: threading.Thread | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, limit: float = 60.0) -> ServeProcess:
        self._log = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve"], cwd=self.workdir, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True)
        got_banner = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, args=(got_banner,),
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + limit
        while not got_banner.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"voicebridge serve did not start "
                                   f"(exit {self.proc.poll()}):\n{self.log_tail()}")
        text = "\n".join(self.banner)
        sip = re.search(r"sip:agent@[^:\s]+:(\d+)", text)
        http = re.search(r"metrics:\s+(http://\S+)/metrics", text)
        if sip is None or http is None:
            raise RuntimeError(f"unexpected banner:\n{text}")
        self.sip_port, self.http_url = int(sip.group(1)), http.group(1)
        while True:
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"voicebridge serve never became ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def _read_stdout(self, got_banner: threading.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if not got_banner.is_set():
                self.banner.append(line.rstrip("\n"))
                if line.lstrip().startswith("settings:"):    # the banner's last line
                    got_banner.set()
            if self._log is not None and not self._log.closed:
                self._log.write("[stdout] " + line)
                self._log.flush()

    def get(self, path: str, token: bool = False) -> tuple[int, bytes]:
        return _http_get(self.http_url + path, self.TOKEN if token else None)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of ``/metrics`` (``labels`` as written there, e.g. ``reason="source"``)."""
        _status, body = self.get("/metrics")
        wanted = set(_LABEL.findall(labels))
        for line in body.decode().splitlines():
            series, _, value = line.rpartition(" ")
            base, _, rest = series.partition("{")
            if base != name:
                continue
            have = set(_LABEL.findall(rest))
            if not any(key == "node" for key, _ in wanted):
                # A node of a cluster labels every series node="..." too: not a mismatch.
                have = {(key, v) for key, v in have if key != "node"}
            if have == wanted:
                return float(value)
        return 0.0

    def records(self) -> list[dict[str, Any]]:
        """Every call record in the bridge's SQLite store (read-only, newest first)."""
        if self.records_path is None or not self.records_path.exists():
            return []
        db = sqlite3.connect(f"file:{self.records_path}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT record FROM calls ORDER BY started_at DESC").fetchall()
        finally:
            db.close()
        return [dict(json.loads(row[0])) for row in rows]

    async def wait_record(self, leg_call_id: str, limit_s: float = 15.0) -> dict[str, Any]:
        """The finished record of the call whose SIP Call-ID is ``leg_call_id``."""
        deadline = time.monotonic() + limit_s
        while True:
            for record in self.records():
                if record.get("leg_call_id") == leg_call_id and record.get("ended_at"):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no finished record for Call-ID {leg_call_id}\n"
                                     f"{self.log_tail()}")
            await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no serve log)"
        return "--- voicebridge serve log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, limit: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self._log is not None:
            self._log.close()
        return proc.returncode

    def __enter__(self) -> ServeProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class EmulatorProcess:
    """``voicebridge emulator`` in its own process, for a bridge to use as its upstream."""

    def __init__(self, port: int | None = None, *, quiet: bool = False) -> None:
        self.port = port or _free_tcp_port()
        self.quiet = quiet          # its banner not on our stdout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--log-level", "WARNING", "emulator",
             "--port", str(self.port)], env=clean_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self.quiet else None)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), 0.5):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("voicebridge emulator did not start")
            time.sleep(0.1)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- what went over the loopback wire ----------------------------------------------------------

SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
ETH_P_ALL = 0x0003
ETH_HEADER = 14
PACKET_OUTGOING = 4
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4      # SKF_AD_OFF + SKF_AD_PKTTYPE (a BPF ancillary load)


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram seen on ``lo``: kernel receive time (CLOCK_REALTIME, seconds)."""

    at: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def _bpf(src_ports: Iterable[int], dst_ports: Iterable[int]) -> bytes:
    """A classic BPF program: IPv4 UDP, not a fragment, received (not the outgoing copy
    loopback also shows), source port in ``src_ports`` or destination in ``dst_ports``."""
    src, dst = sorted(set(src_ports)), sorted(set(dst_ports))
    DROP, ACCEPT = -1, -2                      # jump targets resolved at the end
    prog: list[tuple[int, int, int, int]] = []

    def ins(code: int, jt: int = 0, jf: int = 0, k: int = 0) -> None:
        prog.append((code, jt, jf, k))

    ins(0x20, k=_SKF_AD_PKTTYPE)              # ld pkttype
    ins(0x15, DROP, 0, PACKET_OUTGOING)       # the outgoing copy -> drop
    ins(0x28, k=12)                           # ldh [12]: ethertype
    ins(0x15, 0, DROP, 0x0800)                # IPv4, else drop
    ins(0x30, k=23)                           # ldb [23]: protocol
    ins(0x15, 0, DROP, 17)                    # UDP, else drop
    ins(0x28, k=20)                           # ldh [20]: flags + fragment offset
    ins(0x45, DROP, 0, 0x1FFF)                # a fragment -> drop
    ins(0xB1, k=ETH_HEADER)                   # ldxb 4*([14]&0xf): IP header length
    for offset, ports in ((ETH_HEADER, src), (ETH_HEADER + 2, dst)):
        if ports:
            ins(0x48, k=offset)               # ldh [x + offset]: UDP source/dest port
            for port in ports:
                ins(0x15, ACCEPT, 0, port)
    ins(0x06, k=0)                            # drop
    ins(0x06, k=0x40000)                      # accept (whole packet)
    where = {DROP: len(prog) - 2, ACCEPT: len(prog) - 1}
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        out += struct.pack("HBBI", code, where[jt] - i - 1 if jt < 0 else jt,
                           where[jf] - i - 1 if jf < 0 else jf, k)
    return bytes(out)


class LoopbackCapture:
    """Captures UDP datagrams on ``lo`` by port, with kernel timestamps, in the running
    asyncio loop (``async with``) or by explicit :meth:`open`/:meth:`poll` calls.

    Only datagrams whose source port is in ``src_ports`` or destination port is in
    ``dst_ports`` are kept (a BPF filter in the kernel does the choosing). ``keep`` may
    thin what is stored per datagram (the load benchmark keeps no payloads).
    """

    def __init__(self, *, src_ports: Iterable[int] = (), dst_ports: Iterable[int] = (),
                 keep_payload: bool = True) -> None:
        self.src_ports = tuple(src_ports)
        self.dst_ports = tuple(dst_ports)
        self.keep_payload = keep_payload
        self.datagrams: list[Datagram] = []
        self._sock: socket.socket | None = None
        self._filter: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drops = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why a capture cannot be opened here (None: it can)."""
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        except (PermissionError, OSError, AttributeError) as exc:
            return f"no raw packet socket ({exc}); needs root or CAP_NET_RAW"
        return None

    def open(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        program = _bpf(self.src_ports, self.dst_ports)
        self._filter = ctypes.create_string_buffer(program)
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(self._filter))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        sock.bind(("lo", 0))
        sock.setblocking(False)
        self._sock = sock
        # Packets queued between socket() and the filter: not ours to keep.
        self._drain(keep=False)

    def poll(self) -> int:
        """Read what is queued now; returns how many datagrams were kept."""
        return self._drain(keep=True)

    def _drain(self, keep: bool) -> int:
        sock = self._sock
        if sock is None:
            return 0
        kept = 0
        src_ports, dst_ports = set(self.src_ports), set(self.dst_ports)
        while True:
            try:
                frame, ancdata, _flags, _addr = sock.recvmsg(65536, 64)
            except (BlockingIOError, InterruptedError):
                return kept
            if not keep or len(frame) < ETH_HEADER + 28:
                continue
            at = time.time()
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    at = sec + nsec / 1e9
            ihl = (frame[ETH_HEADER] & 0x0F) * 4
            ip = frame[ETH_HEADER:]
            sport, dport = struct.unpack_from(">HH", ip, ihl)
            if sport not in src_ports and dport not in dst_ports:
                continue                        # (a datagram before the filter took hold)
            payload = bytes(ip[ihl + 8:]) if self.keep_payload else bytes(ip[ihl + 8:ihl + 20])
            self.datagrams.append(Datagram(at, (socket.inet_ntoa(ip[12:16]), sport),
                                           (socket.inet_ntoa(ip[16:20]), dport), payload))
            kept += 1

    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped because this capture did not read fast enough
        (PACKET_STATISTICS; reading it resets the kernel's counters, so it is summed)."""
        if self._sock is not None:
            packets, drops = struct.unpack("II", self._sock.getsockopt(263, 6, 8))
            self._drops += drops
        return self._drops

    def close(self) -> None:
        if self._sock is not None:
            _ = self.kernel_drops
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._drain(keep=True)
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> LoopbackCapture:
        self.open()
        assert self._sock is not None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self.poll)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    # -- views -------------------------------------------------------------------------

    def between(self, src_port: int | None = None,
                dst_port: int | None = None) -> list[Datagram]:
        return [d for d in self.datagrams
                if (src_port is None or d.src[1] == src_port)
                and (dst_port is None or d.dst[1] == dst_port)]

    def rtp(self, src_port: int | None = None, dst_port: int | None = None) -> RtpTrace:
        """The RTP packets among the datagrams (RTCP and non-RTP left out)."""
        packets: list[tuple[float, tuple[str, int], RtpPacket]] = []
        for d in self.between(src_port, dst_port):
            if len(d.payload) >= 2 and 200 <= d.payload[1] <= 204:
                continue                                 # RTCP
            try:
                packets.append((d.at, d.src, RtpPacket.parse(d.payload)))
            except RtpError:
                continue
        return RtpTrace(packets)

    def sip(self, src_port: int | None = None,
            dst_port: int | None = None) -> list[tuple[float, str]]:
        """SIP messages among the datagrams: (time, first line + body)."""
        out = []
        for d in self.between(src_port, dst_port):
            text = d.payload.decode("utf-8", "replace")
            if text.startswith("SIP/2.0") or re.match(r"[A-Z]+ sip:", text):
                out.append((d.at, text))
        return out


@dataclass
class RtpTrace:
    """RTP packets in arrival order, with the usual questions asked of them."""

    packets: list[tuple[float, tuple[str, int], RtpPacket]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.packets)

    @property
    def sources(self) -> set[tuple[str, int]]:
        return {src for _, src, _ in self.packets}

    @property
    def payload_types(self) -> set[int]:
        return {p.payload_type for _, _, p in self.packets}

    def only(self, src: tuple[str, int]) -> RtpTrace:
        return RtpTrace([x for x in self.packets if x[1] == src])

    def window(self, start: float, end: float) -> RtpTrace:
        return RtpTrace([x for x in self.packets if start <= x[0] < end])

    def gaps_ms(self) -> list[float]:
        times = [at for at, _, _ in self.packets]
        return [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]

    def timestamp_steps(self) -> list[int]:
        """Timestamp increments between packets that follow each other (same SSRC,
        next sequence number), in arrival order."""
        steps = []
        for (_, _, a), (_, _, b) in zip(self.packets, self.packets[1:], strict=False):
            if a.ssrc == b.ssrc and b.sequence == (a.sequence + 1) & 0xFFFF:
                steps.append((b.timestamp - a.timestamp) & 0xFFFFFFFF)
        return steps

    def audio(self) -> list[tuple[float, bytes]]:
        """(arrival, PCM16 8 kHz) of each G.711 packet."""
        return [(at, _DECODERS[p.payload_type](p.payload)) for at, _, p in self.packets
                if p.payload_type in _DECODERS]

    def levels(self, frame_ms: int = 100) -> list[tuple[float, float]]:
        """(time, dBFS) of consecutive ``frame_ms`` stretches of the audio."""
        out = []
        pcm, start = b"", None
        want = 16 * frame_ms
        for at, chunk in self.audio():
            if start is None:
                start = at
            pcm += chunk
            if len(pcm) >= want:
                out.append((start, dbfs(pcm)))
                pcm, start = b"", None
        return out


# ---- SIPp --------------------------------------------------------------------------------------

_CODEC_LINES = {"pcmu": "a=rtpmap:0 PCMU/8000", "pcma": "a=rtpmap:8 PCMA/8000"}


class Scenario:
    """A SIPp UAC scenario, step by step, with literal media paths (SIPp takes no field
    substitution inside ``play_pcap_audio``/``rtp_stream``).

    ``service`` is the user part dialled; ``codecs`` the offer in preference order (with
    telephone-event 101); ``media_port`` writes a literal port into the SDP instead of
    SIPp's ``[media_port]``.
    """

    def __init__(self, name: str, *, service: str = "echo", codecs: Sequence[str] = ("pcmu",),
                 media_port: int | None = None) -> None:
        self.name = name
        self.service = service
        self.codecs = tuple(codecs)
        self.media = str(media_port) if media_port is not None else "[media_port]"
        self.cseq = 1
        self.sdp_version = 1
        self.steps: list[str] = []

    def _headers(self, method: str, cseq: int, *, to_tag: bool) -> str:
        return (f"      {method} sip:{self.service}@[remote_ip]:[remote_port] SIP/2.0\n"
                "      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n"
                "      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00"
                "[call_number]\n"
                f"      To: <sip:{self.service}@[remote_ip]:[remote_port]>"
                f"{'[peer_tag_param]' if to_tag else ''}\n"
                "      Call-ID: [call_id]\n"
                f"      CSeq: {cseq} {method}\n"
                "      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>\n"
                "      Max-Forwards: 70\n")

    def _sdp(self, direction: str = "sendrecv") -> str:
        pts = " ".join(str(PAYLOAD_TYPES[c]) for c in self.codecs)
        lines = [
            "v=0",
            f"o=sipp 53655765 {self.sdp_version} IN IP[local_ip_type] [local_ip]",
            "s=-",
            "c=IN IP[media_ip_type] [media_ip]",
            "t=0 0",
            f"m=audio {self.media} RTP/AVP {pts} {PT_DTMF}",
            *(_CODEC_LINES[c] for c in self.codecs),
            f"a=rtpmap:{PT_DTMF} telephone-event/8000",
            f"a=fmtp:{PT_DTMF} 0-16",
            f"a={direction}",
        ]
        self.sdp_version += 1
        return "".join(f"      {line}\n" for line in lines)

    def _invite(self, direction: str, to_tag: bool, answer: str | None) -> None:
        cseq = self.cseq
        self.cseq += 1
        check = ""
        if answer:
            check = (f'\n    <action><ereg regexp="{answer}" search_in="body" check_it="true" '
                     f'assign_to="answer{cseq}"/></action>\n  ')
        self.steps.append(
            '  <send retrans="500">\n    <![CDATA[\n\n'
            + self._headers("INVITE", cseq, to_tag=to_tag)
            + "      Content-Type: application/sdp\n      Content-Length: [len]\n\n"
            + self._sdp(direction) + "\n    ]]>\n  </send>\n"
            '  <recv response="100" optional="true"/>\n'
            '  <recv response="180" optional="true"/>\n'
            f'  <recv response="200" rtd="true">{check}</recv>\n'
            '  <send>\n    <![CDATA[\n\n'
            + self._headers("ACK", cseq, to_tag=True)
            + "      Content-Length: 0\n\n    ]]>\n  </send>\n"
            + (f'  <Reference variables="answer{cseq}"/>\n' if answer else ""))

    def invite(self, answer: str | None = None) -> Scenario:
        """INVITE with our offer, 200 (its body must match the regexp ``answer``), ACK."""
        self._invite("sendrecv", False, answer)
        return self

    def reinvite(self, direction: str, answer: str | None = None) -> Scenario:
        """re-INVITE in the dialog with ``a=<direction>`` (hold: sendonly), 200, ACK."""
        self._invite(direction, True, answer)
        return self

    def play_pcap(self, path: str | Path) -> Scenario:
        self.steps.append(f'  <nop><action><exec play_pcap_audio="{path}"/></action></nop>\n')
        return self

    def rtp_stream(self, path: str | Path, loops: int = 1, payload_type: int = PT_PCMU) -> Scenario:
        self.steps.append(f'  <nop><action><exec rtp_stream="{path},{loops},{payload_type}"/>'
                          '</action></nop>\n')
        return self

    def pause(self, ms: int) -> Scenario:
        self.steps.append(f'  <pause milliseconds="{int(ms)}"/>\n')
        return self

    def bye(self) -> Scenario:
        cseq = self.cseq
        self.cseq += 1
        self.steps.append(
            '  <send retrans="500">\n    <![CDATA[\n\n' + self._headers("BYE", cseq, to_tag=True)
            + "      Content-Length: 0\n\n    ]]>\n  </send>\n"
            '  <recv response="200" crlf="true"/>\n')
        return self

    def wait_bye(self, timeout_ms: int = 20000) -> Scenario:
        """The bridge hangs up: wait for its BYE and answer 200."""
        self.steps.append(
            f'  <recv request="BYE" timeout="{timeout_ms}"/>\n'
            '  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n'
            "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n"
            "      Content-Length: 0\n\n    ]]>\n  </send>\n")
        return self

    def xml(self) -> str:
        return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
                '<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
                f'<scenario name="{self.name}">\n' + "".join(self.steps) + "</scenario>\n")

    def write(self, folder: Path) -> Path:
        path = Path(folder) / f"{self.name}.xml"
        path.write_text(self.xml(), encoding="iso-8859-1")
        return path


@dataclass
class SippRun:
    returncode: int
    output: str
    errors: str
    stats: dict[str, str]

    @property
    def successful(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", "0") or 0)

    @property
    def failed(self) -> int:
        return int(self.stats.get("FailedCall(C)", "0") or 0)

    def explain(self) -> str:
        return (f"SIPp exit {self.returncode}\n--- SIPp output ---\n{self.output[-3000:]}\n"
                f"--- SIPp errors ---\n{self.errors[-3000:]}")


#: What SIPp logs when it goes on past a message its scenario did not expect.
_CONTINUED = re.compile(r"Continuing call on unexpected message .*?received '([^\r\n']*)")


async def run_sipp(scenario: Path | str, sip_port: int, *, workdir: Path,
                   media_port: int | None = None, local_port: int | None = None,
                   calls: int = 1, rate: float | None = None, limit: int | None = None,
                   args: Sequence[str] = (), limit_s: float = 60.0,
                   call_id_prefix: str | None = None, sipp: str = "sipp",
                   late_provisional_ok: bool = False) -> SippRun:
    """Run SIPp as a UAC against ``127.0.0.1:sip_port`` until ``calls`` calls are done.

    ``scenario`` is a file, or a built-in scenario name (``uac``). SIPp's error log and
    statistics file are collected from ``workdir`` (which must exist). With
    ``call_id_prefix`` call number N gets the Call-ID ``<prefix>-N@127.0.0.1``.

    ``late_provisional_ok``: for calls through a proxy, which may relay a ``180`` after
    the ``200`` it follows (Kamailio's workers run in parallel). SIPp then goes on past an
    unexpected message instead of aborting the call, and the run counts as failed
    (``returncode`` 1) if any such message was something else than a provisional
    response.
    """
    stem = f"sipp-{os.getpid()}-{time.monotonic_ns()}"
    stats_file = workdir / f"{stem}.csv"
    errors_file = workdir / f"{stem}-errors.log"
    scenario_args = (["-sf", str(scenario)] if Path(str(scenario)).suffix == ".xml"
                     else ["-sn", str(scenario)])
    cmd = [shutil.which(sipp) or sipp, f"127.0.0.1:{sip_port}", *scenario_args,
           "-i", "127.0.0.1", "-mi", "127.0.0.1",
           "-p", str(local_port or free_udp_port()),
           "-mp", str(media_port or free_udp_port(pair=True)),
           "-m", str(calls), "-nostdin", "-timeout", f"{int(limit_s)}s",
           "-trace_err", "-error_file", str(errors_file),
           "-trace_stat", "-stf", str(stats_file), "-fd", "1"]
    if call_id_prefix is not None:
        cmd += ["-cid_str", f"{call_id_prefix}-%u@%s"]
    if rate is not None:
        cmd += ["-r", f"{rate:g}", "-rp", "1000"]
    if limit is not None:
        cmd += ["-l", str(limit)]
    if late_provisional_ok:
        cmd += ["-default_behaviors", "all,-abortunexp"]
    cmd += list(args)
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s + 15)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    except asyncio.CancelledError:      # the caller gave up on it: no SIPp left behind
        proc.kill()
        await asyncio.shield(proc.wait())
        raise
    errors = errors_file.read_text(errors="replace") if errors_file.exists() else ""
    returncode = proc.returncode if proc.returncode is not None else -1
    others = [m for m in _CONTINUED.findall(errors) if not re.match(r"SIP/2\.0 1\d\d ", m)]
    if others:
        returncode = returncode or 1
        errors += f"\nunexpected messages other than a late provisional response: {others}"
    return SippRun(returncode, out.decode(errors="replace"), errors, _last_stats(stats_file))


def _last_stats(path: Path) -> dict[str, str]:
    try:
        rows = [r for r in path.read_text(errors="replace").splitlines() if r.strip()]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    head, last = rows[0].split(";"), rows[-1].split(";")
    return dict(zip(head, last, strict=False))


# ---- the benchmark ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls (default 50)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="measuring window once all calls are up (default 20)")
    parser.add_argument("--ramp", type=float, default=None,
                        help="seconds to bring all calls up (default: calls / 25)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep the bridge's log, SIPp's files and the scenario in DIR")
    parser.add_argument("--srtp", action="store_true",
                        help="bridge CPU per call with SRTP (SDES) beside plain RTP, both "
                             "from a Python caller (SIPp streams plain RTP only)")
    parser.add_argument("--srtp-suite", default="AES_CM_128_HMAC_SHA1_80",
                        choices=("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"),
                        help="the suite the --srtp round offers")
    add_pin_argument(parser)


def _bench_pattern(seconds: float = 3.0) -> bytes:
    """µ-law: 1.2 s of a warbling tone (speech-like energy for the VAD), then silence."""
    rate = 8000
    n = int(rate * 1.2)
    burst = struct.pack(f"<{n}h", *(int(7000 * math.sin(2 * math.pi * (220 + 80 * math.sin(
        2 * math.pi * 3 * i / rate)) * i / rate)) for i in range(n)))
    return ulaw_encode(burst + bytes(2 * (int(rate * seconds) - n)))


async def _bench(args: argparse.Namespace, workdir: Path) -> int:
    n = args.calls
    ramp = args.ramp if args.ramp is not None else max(1.0, n / 25)
    hold_s = ramp + args.seconds + 4.0
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (Debian: sip-tester)", file=sys.stderr)
        return 2
    why = LoopbackCapture.unavailable()
    if why:
        print(f"cannot capture the bridge's RTP: {why}", file=sys.stderr)
        return 2
    pattern = workdir / "pattern.ulaw"
    pattern.write_bytes(_bench_pattern())
    scenario = (Scenario("bench", codecs=("pcmu",))
                .invite(answer=r"m=audio [0-9]+ RTP/AVP 0 101")
                .rtp_stream(pattern, loops=-1, payload_type=PT_PCMU)
                .pause(int(hold_s * 1000)).bye().write(workdir))
    media_port = free_udp_port(pair=True)
    # This process (the capture), and the emulator and SIPp it starts, on the load CPUs;
    # the bridge on its own one (moved there once started).
    placement = cpus.plan(args.pin)
    if placement is not None and not cpus.pin(0, placement[1]):
        placement = None
    with EmulatorProcess() as emulator, ServeProcess(
            workdir / "serve", rtp_ports=free_rtp_range(4 * n + 40), records=False,
            log_level="WARNING",
            env=load_env(n, emulator.url)) as bridge:
        pid = bridge.pid
        if placement is not None and not cpus.pin(pid, placement[0]):
            placement = None
        print(f"placement: {cpus.describe(placement, 'emulator, SIPp and the capture')}")
        rss_idle = rss_mib(pid)
        print(f"bridge pid {pid} (SIP 127.0.0.1:{bridge.sip_port}), emulator {emulator.url} "
              f"in its own process; {n} calls over {ramp:.1f} s, each {hold_s:.0f} s long")
        capture = LoopbackCapture(dst_ports=(media_port,), keep_payload=False)
        async with capture:
            sipp_task = asyncio.ensure_future(run_sipp(
                scenario, bridge.sip_port, workdir=workdir, media_port=media_port, calls=n,
                rate=n / ramp, limit=n, limit_s=hold_s + ramp + 30, sipp=sipp,
                args=("-rtp_threadtasks", "64")))
            await asyncio.sleep(ramp + 2.0)
            late0 = bridge.metric("voicebridge_late_frames_total")
            live = bridge.metric("voicebridge_calls_active", 'source="sip"')
            steal_cpus = placement[0] if placement is not None else None
            cpu0, wall0, t0 = cpu_seconds(pid), time.monotonic(), time.time()
            steal0 = cpus.stolen_s(steal_cpus)
            await asyncio.sleep(args.seconds)
            cpu, wall, t1 = cpu_seconds(pid) - cpu0, time.monotonic() - wall0, time.time()
            steal = cpus.stolen_s(steal_cpus) - steal0
            rss = rss_mib(pid)
            late = bridge.metric("voicebridge_late_frames_total") - late0
            run = await sipp_task
        streams: dict[int, list[float]] = {}
        stamped: dict[int, list[tuple[float, int]]] = {}
        for d in capture.datagrams:
            if t0 <= d.at < t1:
                streams.setdefault(d.src[1], []).append(d.at)
                ts = struct.unpack_from("!I", d.payload, 4)[0] if len(d.payload) >= 8 else 0
                stamped.setdefault(d.src[1], []).append((d.at, ts))
        packets = sum(len(times) for times in streams.values())
        wire = wire_jitter(stamped)
        deviations = wire.deviations
    if args.keep:
        with (workdir / "arrivals.json").open("w") as f:
            json.dump({str(k): v for k, v in streams.items()}, f)
    per_call = 100 * cpu / wall / max(n, 1)
    total = run.successful + run.failed
    print(f"calls: {n} wanted, {live:.0f} live at the window's start; SIPp: "
          f"{run.successful} successful, {run.failed} failed "
          f"({100 * run.successful / max(total, 1):.1f} % success)")
    print(f"bridge CPU: {100 * cpu / wall:.1f} % of a core in {wall:.1f} s, "
          f"{per_call:.3f} % per call -> {100 / per_call if per_call else float('inf'):.0f} "
          "calls per core")
    if cpu / wall >= 0.97:
        print("  (the bridge's core is saturated: its loop never idles, and under load it "
              "works in bigger batches, so calls per core from CPU time is a floor; the "
              "capacity test is whether every call still succeeds with its packets on time)")
    print(f"hypervisor steal on the bridge's CPU{'s' if placement is None else ''}: "
          f"{steal * 1000:.0f} ms in the window (a stolen 10-30 ms shows as late packets)")
    print(f"bridge memory: {rss:.0f} MiB RSS during the calls ({rss_idle:.0f} MiB idle, "
          f"{(rss - rss_idle) / max(n, 1):.2f} MiB per call)")
    print(f"RTP sent by the bridge, on the wire: {len(streams)} streams, "
          f"{packets / max(wall, 1e-9) / max(len(streams), 1):.1f} packets/s per stream "
          f"(50 = every 20 ms); capture lost {capture.kernel_drops} datagrams in the kernel")
    print(f"RTP send jitter |Δt - 20 ms|: p50 {percentile(deviations, 50):.3f} ms, "
          f"p99 {percentile(deviations, 99):.3f} ms, max {max(deviations, default=0):.1f} ms; "
          f"media clock ticks late by more than a frame: {late:.0f}")
    print(f"RFC 3550 jitter estimate per stream: mean "
          f"{sum(wire.rfc3550) / max(len(wire.rfc3550), 1):.3f} ms, "
          f"worst {max(wire.rfc3550, default=0):.3f} ms")
    print(f"offset into its burst (packets sent back to back, one burst per phase slot; "
          f"the grid itself is not on the wire): p50 {percentile(wire.tick_offsets, 50):.3f} ms, "
          f"p99 {percentile(wire.tick_offsets, 99):.3f} ms, "
          f"max {max(wire.tick_offsets, default=0):.1f} ms")
    goal = run.failed == 0 and run.successful == n and percentile(deviations, 99) <= 2.0
    print(f"goal (0 failed, p99 <= 2 ms at this load): {'met' if goal else 'NOT met'}")
    if run.returncode != 0 or run.failed:
        print(run.explain())
    return 0


def run(args: argparse.Namespace) -> int:
    with cpus.kept_affinity():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "srtp", False):
        from bridge.bench.sip_srtp import bench  # noqa: PLC0415 - it imports this module
        return run_in_workdir(bench, args, "bench-sip-srtp-", args.keep)
    return run_in_workdir(_bench, args, "bench-sip-", args.keep)


def run_in_workdir(main: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, int]],
                   args: argparse.Namespace, prefix: str, keep: str | None = None) -> int:
    """Run a bench program's ``main(args, workdir)``: in ``keep`` (made if need be, and
    kept), else in a temporary folder removed afterwards; Ctrl-C exits 130."""
    if keep:
        workdir = Path(keep)
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(main(args, workdir))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            return asyncio.run(main(args, Path(tmp)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


__all__ = [
    "Datagram", "EmulatorProcess", "LoopbackCapture", "RtpTrace", "Scenario", "ServeProcess",
    "SippRun", "WireJitter", "add_arguments", "cpu_seconds", "free_rtp_range",
    "free_udp_port", "percentile", "rss_mib", "run", "run_sipp", "wire_jitter",
]

