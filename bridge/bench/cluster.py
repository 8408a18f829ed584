"""Calls through a SIP proxy: SIPp scenarios that follow the Record-Route set.

A caller behind Kamailio (``deploy/kamailio/kamailio.cfg``) must send its in-dialog
requests (ACK, BYE, re-INVITE) with the Route set the 200 OK's Record-Route built and the
node's Contact as Request-URI (RFC 3261 §12.2.1.1), or the proxy cannot tell which node owns
the call. :class:`RoutedScenario` is :class:`~bridge.bench.sip.Scenario` doing that.

``voicebridge bench cluster`` runs the same SIPp load twice: straight to one node, then
through the shipped Kamailio configuration to ``--nodes`` nodes, and prints INVITE -> 200 OK
times and each process's CPU per call side by side, and from them how many calls a machine
of N cores serves with one node per core behind a local Kamailio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.bench.sip import (
    PT_PCMU,
    EmulatorProcess,
    Scenario,
    ServeProcess,
    clean_env,
    cpu_seconds,
    free_rtp_range,
    free_udp_port,
    percentile,
    run_in_workdir,
    run_sipp,
)


class RoutedScenario(Scenario):
    """A :class:`Scenario` whose in-dialog requests use ``[next_url]`` and ``[routes]``."""

    def _headers(self, method: str, cseq: int, *, to_tag: bool) -> str:
        head = super()._headers(method, cseq, to_tag=to_tag)
        if not to_tag:
            return head
        first, rest = head.split("\n", 1)
        first = first.replace(f"sip:{self.service}@[remote_ip]:[remote_port]", "[next_url]")
        return f"{first}\n      [routes]\n{rest}"

    def info(self, digit: str) -> RoutedScenario:
        """A key press as SIP INFO (``application/dtmf-relay``) in the dialog, then 200."""
        cseq = self.cseq
        self.cseq += 1
        self.steps.append(
            '  <send retrans="500">\n    <![CDATA[\n\n' + self._headers("INFO", cseq, to_tag=True)
            + "      Content-Type: application/dtmf-relay\n      Content-Length: [len]\n\n"
            + f"      Signal={digit}\n      Duration=160\n    ]]>\n  </send>\n"
            '  <recv response="200"/>\n')
        return self

    def transferred(self, timeout_ms: int = 20000) -> RoutedScenario:
        """Be transferred: the node's REFER gets 202, then a NOTIFY (RFC 3515) says the
        transfer succeeded (``SIP/2.0 200 OK`` sipfrag), answered 200 by the node."""
        cseq = self.cseq
        self.cseq += 1
        self.steps.append(
            f'  <recv request="REFER" timeout="{timeout_ms}"/>\n'
            '  <send>\n    <![CDATA[\n\n      SIP/2.0 202 Accepted\n      [last_Via:]\n'
            "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n"
            "      Contact: <sip:sipp@[local_ip]:[local_port]>\n"
            "      Content-Length: 0\n\n    ]]>\n  </send>\n"
            '  <send retrans="500">\n    <![CDATA[\n\n' + self._headers("NOTIFY", cseq, to_tag=True)
            + "      Event: refer\n      Subscription-State: terminated;reason=noresource\n"
            "      Content-Type: message/sipfrag\n      Content-Length: [len]\n\n"
            "      SIP/2.0 200 OK\n    ]]>\n  </send>\n"
            '  <recv response="200"/>\n')
        return self

    def _invite(self, direction: str, to_tag: bool, answer: str | None) -> None:
        super()._invite(direction, to_tag, answer)
        # Keep the 200's Record-Route (and Contact) for the requests that follow.
        self.steps[-1] = self.steps[-1].replace('<recv response="200" rtd="true"',
                                                '<recv response="200" rtd="true" rrs="true"')




# ---- the benchmark: through Kamailio against direct to one node ---------------------------------

#: The shipped configuration, when running from a source checkout.
KAMAILIO_CFG = Path(__file__).resolve().parents[2] / "deploy" / "kamailio" / "kamailio.cfg"
_MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/kamailio/modules",
                "/usr/lib/aarch64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules")


class KamailioProcess:
    """The shipped ``kamailio.cfg`` run in the foreground from ``folder``, in front of
    ``nodes`` (a dispatcher list written with ``voicebridge kamailio-list``)."""

    def __init__(self, folder: Path, cfg: Path, nodes: Sequence[ServeProcess],
                 ping_interval_s: int = 2) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.list_path = folder / "dispatcher.list"
        spec = ",".join(f"node{i + 1}=127.0.0.1:{n.sip_port}" for i, n in enumerate(nodes))
        subprocess.run([sys.executable, "-m", "bridge", "kamailio-list", "--out",
                        str(self.list_path)], env=clean_env({"VOICEBRIDGE_NODES": spec}),
                       check=True, timeout=60)
        mpath = next((d for d in _MODULE_DIRS if Path(d, "tm.so").is_file()), _MODULE_DIRS[0])
        listen = f"127.0.0.1:{self.port}"
        self.cmd = [shutil.which("kamailio") or "kamailio", "-DD", "-E", "-f", str(cfg),
                    "-A", f"LISTEN_UDP=udp:{listen}", "-A", f"LISTEN_TCP=tcp:{listen}",
                    "-A", f'DISPATCHER_LIST="{self.list_path}"',
                    "-A", f'CTL_SOCKET="tcp:127.0.0.1:{free_udp_port()}"',
                    "-A", f"DS_PING_INTERVAL={ping_interval_s}", "-A", f'MPATH="{mpath}/"',
                    "-Y", str(folder), "-P", str(folder / "kamailio.pid"), "-w", str(folder)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KamailioProcess:
        with (self.folder / "kamailio.log").open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.folder, start_new_session=True)
        time.sleep(1.5)            # its children fork and bind; probes mark nodes up
        if self.proc.poll() is not None:
            raise RuntimeError(f"kamailio exited: see {self.folder / 'kamailio.log'}")
        return self

    def cpu_seconds(self) -> float:
        """CPU time of all of Kamailio's processes (its process group)."""
        assert self.proc is not None
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:            # pgrp
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=40,
                        help="concurrent calls in each run (default 40)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="measuring window once all calls are up (default 15)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes behind Kamailio (2)")
    parser.add_argument("--kamailio-cfg", default=str(KAMAILIO_CFG),
                        help="the Kamailio configuration (default: the shipped one)")
    parser.add_argument("--answer-wait-ms", type=int, default=None,
                        help="[sip] answer_wait_ms of the nodes (default: theirs, 2000: the "
                             "200 waits for the Realtime session; 0 shows the SIP path alone)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep logs, SIPp's files and the scenario in DIR")


@dataclass
class Figures:
    """One run: INVITE -> 200 OK times (ms) and CPU % of a core per call, per process."""

    label: str
    ok: int
    failed: int
    setup_ms: list[float]
    per_call_cpu: dict[str, float]

    def line(self) -> str:
        cpu = ", ".join(f"{k} {v:.3f} %" for k, v in self.per_call_cpu.items())
        return (f"{self.label:<16} {self.ok:>4} ok {self.failed:>3} failed   INVITE->200 p50 "
                f"{percentile(self.setup_ms, 50):7.1f} ms p95 {percentile(self.setup_ms, 95):7.1f}"
                f" ms max {max(self.setup_ms, default=0):7.1f} ms   CPU per call: {cpu}")


def _node_env(args: argparse.Namespace, emulator: EmulatorProcess, node_id: str
              ) -> dict[str, str]:
    n = args.calls
    wait = ({} if args.answer_wait_ms is None
            else {"VOICEBRIDGE_SIP_ANSWER_WAIT_MS": str(args.answer_wait_ms)})
    return {**wait, "VOICEBRIDGE_REALTIME_EMULATOR_URL": emulator.url,
            "VOICEBRIDGE_CLUSTER_NODE_ID": node_id,
            "VOICEBRIDGE_SIP_MAX_CALLS": str(n + 10),
            "VOICEBRIDGE_SIP_TRUSTED_PROXIES": "127.0.0.1/32",
            "VOICEBRIDGE_SIP_INVITE_RATE_PER_SOURCE": "0",
            "VOICEBRIDGE_SIP_MAX_UNACKED_PER_SOURCE": str(n + 10),
            "VOICEBRIDGE_SIP_MAX_UNACKED": str(n + 10),
            "VOICEBRIDGE_SIP_TRANSPORTS": "udp"}


async def _load(label: str, target_port: int, workdir: Path, args: argparse.Namespace,
                procs: Mapping[str, Callable[[], float]]) -> Figures:
    """``args.calls`` calls to ``target_port``, held through the window; CPU per call of
    each of ``procs`` (name -> its CPU seconds so far) over the window."""
    n = args.calls
    ramp = max(1.0, n / 20)
    hold_s = ramp + args.seconds + 3.0
    audio = workdir / "caller.ulaw"
    audio.write_bytes(b"\xff" * 8000 * 2)
    folder = workdir / label
    folder.mkdir(parents=True, exist_ok=True)
    scenario = (RoutedScenario("bench", service="agent").invite()
                .rtp_stream(audio, loops=-1, payload_type=PT_PCMU)
                .pause(int(hold_s * 1000)).bye().write(folder))
    sipp = shutil.which("sipp") or "sipp"
    task = asyncio.ensure_future(run_sipp(
        scenario, target_port, workdir=folder, calls=n, rate=n / ramp, limit=n,
        limit_s=hold_s + ramp + 30, sipp=sipp, args=("-trace_rtt", "-rtt_freq", "1"),
        late_provisional_ok=True))
    await asyncio.sleep(ramp + 1.5)
    cpu0 = {k: f() for k, f in procs.items()}
    wall0 = time.monotonic()
    await asyncio.sleep(args.seconds)
    wall = time.monotonic() - wall0
    per_call = {k: 100 * (f() - cpu0[k]) / wall / max(n, 1) for k, f in procs.items()}
    run = await task
    setup: list[float] = []
    for rtt in folder.glob("*_rtt.csv"):
        for row in rtt.read_text(errors="replace").splitlines()[1:]:
            parts = row.split(";")
            with contextlib.suppress(IndexError, ValueError):
                setup.append(float(parts[1]))
    if run.returncode != 0 or run.failed:
        print(run.explain())
    return Figures(label, run.successful, run.failed, setup, per_call)


async def _bench(args: argparse.Namespace, workdir: Path) -> int:
    if shutil.which("sipp") is None or shutil.which("kamailio") is None:
        print("needs sipp (Debian: sip-tester) and kamailio", file=sys.stderr)
        return 2
    n = args.calls
    with EmulatorProcess(quiet=True) as emulator:
        with ServeProcess(workdir / "direct", records=False, log_level="WARNING",
                          rtp_ports=free_rtp_range(4 * n + 40),
                          env=_node_env(args, emulator, "direct")) as node:
            direct = await _load("direct", node.sip_port, workdir, args,
                                 {"node": lambda: cpu_seconds(node.pid)})
        nodes = [ServeProcess(workdir / f"node{i + 1}", records=False, log_level="WARNING",
                              rtp_ports=free_rtp_range(4 * n + 40),
                              env=_node_env(args, emulator, f"node{i + 1}"))
                 for i in range(args.nodes)]
        try:
            for node in nodes:
                node.start()
            with KamailioProcess(workdir / "kamailio", Path(args.kamailio_cfg),
                                 nodes) as kamailio:
                procs: dict[str, Callable[[], float]] = {
                    f"node{i + 1}": functools.partial(cpu_seconds, node.pid)
                    for i, node in enumerate(nodes)}
                procs["kamailio"] = kamailio.cpu_seconds
                proxied = await _load("via-kamailio", kamailio.port, workdir, args, procs)
                taken = {f"node{i + 1}": _sip_calls(node) for i, node in enumerate(nodes)}
        finally:
            for node in nodes:
                node.stop()
    print(f"{n} concurrent calls in each run, {args.seconds:.0f} s window; CPU in % of one "
          "core per call over the window")
    print(direct.line())
    print(proxied.line())
    print(f"calls per node through Kamailio: {taken}")
    _estimate(direct, proxied, args.nodes)
    return 0 if direct.failed == 0 and proxied.failed == 0 else 1


def _sip_calls(node: ServeProcess) -> int:
    """The node's ``voicebridge_calls_started_total{source="sip"}``, whatever other labels."""
    body = node.get("/metrics")[1].decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in body.splitlines()
               if line.startswith("voicebridge_calls_started_total{") and 'source="sip"' in line)


def _estimate(direct: Figures, proxied: Figures, nodes: int) -> None:
    """Calls a machine of N cores serves with one node per core behind a local Kamailio.

    The per-call figures are each process's CPU over the window divided by *all* calls,
    so the nodes' sum is what a call costs its node and Kamailio's is its share on top.
    """
    node_cpu = sum(v for k, v in proxied.per_call_cpu.items() if k != "kamailio")
    kam = proxied.per_call_cpu.get("kamailio", 0.0)
    per_call = node_cpu + kam
    if per_call <= 0:
        return
    direct_cpu = direct.per_call_cpu.get("node", 0.0)
    print(f"per call: its node {node_cpu:.3f} % of a core through Kamailio (direct "
          f"{direct_cpu:.3f} %), Kamailio {kam:.4f} %")
    for cores in (1, 2, 4, 8, 16, 32):
        print(f"  {cores:>2} cores, one node per core: ~{cores * 100 / per_call:.0f} calls at "
              f"100 % CPU, {0.7 * cores * 100 / per_call:.0f} at 70 %")


def run(args: argparse.Namespace) -> int:
    return run_in_workdir(_bench, args, "bench-cluster-", args.keep)


__all__ = ["Figures", "KamailioProcess", "RoutedScenario", "add_arguments", "run"]
