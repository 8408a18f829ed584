"""The ``voicebridge`` command.

Each subcommand lives in its own module, imported only when it runs, exposing::

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int

``COMMANDS`` and ``BENCHMARKS`` map a name to ``(module, one-line help)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from bridge import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("bridge.serve", "run the bridge: SIP, RTP, WebRTC and HTTP in one process"),
    "emulator": ("bridge.realtime.emulator.cli", "run the local Realtime emulator alone"),
    "check-dialplans": ("bridge.dialplans.check", "validate dialplan files and exit"),
    "dev-cert": ("bridge.devcert", "write a development CA, certificate and key for SIP/TLS"),
    "kamailio-list": ("bridge.kamailio_list", "write Kamailio's dispatcher list from "
                      "VOICEBRIDGE_NODES"),
}

BENCHMARKS: dict[str, tuple[str, str]] = {
    "media": ("bridge.bench.media", "µs per 20 ms frame of the media conversions"),
    "realtime": ("bridge.bench.realtime", "Realtime client cost against the emulator"),
    "emulator": ("bridge.realtime.emulator.loadtest", "N emulated calls against one emulator"),
    "call": ("bridge.bench.call", "N concurrent calls over in-memory legs"),
    "sip": ("bridge.bench.sip", "SIPp load with RTP both ways"),
    "cluster": ("bridge.bench.cluster", "SIPp load through Kamailio to nodes, against direct"),
    "webrtc": ("bridge.bench.webrtc", "N aiortc peers calling the bridge"),
    "path": ("bridge.bench.path", "functions one 20 ms frame passes through, each way"),
    "faults": ("bridge.bench.faults", "upstream faults and SIP/HTTP abuse against a real serve"),
    "setup": ("bridge.bench.setup", "INVITE -> first greeting audio, on a real serve"),
}


def _load(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only a missing subcommand module is tolerated (a build without that part);
        # a missing dependency *inside* the module is a real error and propagates.
        if exc.name is not None and (module + ".").startswith(exc.name + "."):
            return None
        raise


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, module: str,
         help_: str) -> None:
    mod = _load(module)
    if mod is None:
        return
    parser = sub.add_parser(name, help=help_, description=help_)
    mod.add_arguments(parser)
    parser.set_defaults(_run=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicebridge",
        description="Answer phone calls (SIP/RTP or WebRTC) with a Realtime voice agent.",
    )
    parser.add_argument("--version", action="version", version=f"voicebridge {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("VOICEBRIDGE_LOG_LEVEL", "INFO"),
                        help="logging level (env VOICEBRIDGE_LOG_LEVEL; default INFO)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        _add(sub, name, module, help_)
    bench = sub.add_parser("bench", help="benchmark programs that print figures",
                           description="Benchmark programs that print figures.")
    bench_sub = bench.add_subparsers(title="benchmarks", metavar="BENCHMARK")
    for name, (module, help_) in BENCHMARKS.items():
        _add(bench_sub, name, module, help_)

    def bench_help(_args: argparse.Namespace) -> int:
        bench.print_help()
        return 2

    bench.set_defaults(_run=bench_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
