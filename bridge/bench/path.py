"""``voicebridge bench path``: how many functions one 20 ms frame passes through.

A bridge runs in this process (SIP on loopback, the Realtime emulator in-process) and SIPp
places one call that streams µ-law RTP for the whole call; the emulator echoes the
caller's turns, so audio flows both ways. Once the call is steady, a profile hook
(``sys.setprofile``) counts the Python functions entered while one frame is handled:

* inbound: everything from the RTP datagram's arrival (``datagram_received`` in
  ``bridge/rtp/``) to the ``input_audio_buffer.append`` written on the WebSocket,
  including the upstream batch's run for that frame (``_run`` in ``bridge/call/batch.py``)
  when the frame is resampled (PCM16 sessions);
* outbound: everything from the call's playout tick (``Playout.on_tick``) to the RTP
  datagram sent, for ticks that hand the leg agent audio.

Each figure is the median over the frames seen; functions implemented in C (socket
sends, numpy, soxr) are counted apart. ``--format g711`` runs a dialplan whose session
audio is G.711 (passthrough), ``pcm16`` (the default) the resampled path.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.bench.sip import (
    PT_PCMU,
    Scenario,
    _bench_pattern,
    free_rtp_range,
    free_udp_port,
    run_sipp,
)

_PLAN = """
[match]
default = true

[agent]
instructions = "You are a test agent."
greeting = "Hello, this is the path benchmark."
audio_format = "{fmt}"
"""


class PathProfile:
    """Counts functions entered under each root call (sys.setprofile)."""

    def __init__(self, roots: dict[str, Callable[[types.CodeType], bool]]) -> None:
        self._roots = roots
        self._root: str | None = None
        self._depth = 0
        self._py = 0
        self._c = 0
        self._names: list[str] = []
        #: root name -> [(python calls, C calls, function names)]
        self.samples: dict[str, list[tuple[int, int, list[str]]]] = {k: [] for k in roots}

    def _hook(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call":
            if self._root is not None:
                self._depth += 1
                self._py += 1
                self._names.append(frame.f_code.co_qualname)
                return
            code = frame.f_code
            for name, match in self._roots.items():
                if match(code):
                    self._root, self._depth, self._py, self._c = name, 1, 1, 0
                    self._names = [code.co_qualname]
                    return
        elif event == "return":
            if self._root is not None:
                self._depth -= 1
                if self._depth == 0:
                    self.samples[self._root].append((self._py, self._c, self._names))
                    self._root = None
        elif event == "c_call" and self._root is not None:
            self._c += 1

    def start(self) -> None:
        sys.setprofile(self._hook)

    def stop(self) -> None:
        sys.setprofile(None)


def _code_match(name: str, path_part: str) -> Callable[[types.CodeType], bool]:
    return lambda code: code.co_name == name and path_part in code.co_filename


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("pcm16", "g711"), default="pcm16",
                        help="the session's audio format (g711: passthrough)")
    parser.add_argument("--seconds", type=float, default=3.0, help="profiled window")
    parser.add_argument("--show", action="store_true",
                        help="print the functions of one typical frame")


def _median(samples: list[tuple[int, int, list[str]]]) -> tuple[int, int, list[str]]:
    if not samples:
        return 0, 0, []
    py = int(statistics.median(s[0] for s in samples))
    typical = min(samples, key=lambda s: abs(s[0] - py))
    return py, int(statistics.median(s[1] for s in samples)), typical[2]


async def _measure(args: argparse.Namespace, workdir: Path) -> int:
    from bridge.config import load_settings  # noqa: PLC0415
    from bridge.serve import Bridge  # noqa: PLC0415

    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp is not installed (Debian: sip-tester)", file=sys.stderr)
        return 2
    plans = workdir / "plans"
    plans.mkdir()
    (plans / "path.toml").write_text(_PLAN.format(fmt=args.format))
    low, high = free_rtp_range(20)
    sip_port = free_udp_port()
    env = {"VOICEBRIDGE_SIP_HOST": "127.0.0.1", "VOICEBRIDGE_SIP_PORT": str(sip_port),
           "VOICEBRIDGE_SIP_TRANSPORTS": "udp", "VOICEBRIDGE_HTTP_HOST": "127.0.0.1",
           "VOICEBRIDGE_HTTP_PORT": "0", "VOICEBRIDGE_RTP_PORT_LOW": str(low),
           "VOICEBRIDGE_RTP_PORT_HIGH": str(high), "VOICEBRIDGE_RECORDS_PATH": "",
           "VOICEBRIDGE_DIALPLANS_PATH": str(plans), "VOICEBRIDGE_LOG_LEVEL": "WARNING"}
    settings = load_settings(None, env)
    pattern = workdir / "pattern.ulaw"
    pattern.write_bytes(_bench_pattern())
    hold_s = args.seconds + 6.0
    scenario = (Scenario("path", codecs=("pcmu",)).invite()
                .rtp_stream(pattern, loops=-1, payload_type=PT_PCMU)
                .pause(int(hold_s * 1000)).bye().write(workdir))
    profile = PathProfile({
        "inbound datagram": _code_match("datagram_received", "/bridge/rtp/"),
        "inbound batch": _code_match("_run", "/bridge/call/batch.py"),
        "outbound tick": _code_match("on_tick", "/bridge/call/playout.py"),
    })
    async with Bridge(settings, env):
        sipp_task = asyncio.ensure_future(run_sipp(
            scenario, sip_port, workdir=workdir, media_port=free_udp_port(pair=True),
            calls=1, rate=1, limit=1, limit_s=hold_s + 30, sipp=sipp))
        await asyncio.sleep(3.0)
        profile.start()
        try:
            await asyncio.sleep(args.seconds)
        finally:
            profile.stop()
        await sipp_task
    _report(args, profile)
    return 0


def _report(args: argparse.Namespace, profile: PathProfile) -> None:
    inbound, batch = profile.samples["inbound datagram"], profile.samples["inbound batch"]
    # Ticks that handed the leg agent audio (the buffer gave a frame), not silence.
    ticks = [s for s in profile.samples["outbound tick"] if "PlayoutBuffer.pop_frame" in s[2]]
    d_py, d_c, d_names = _median(inbound)
    b_py, b_c, b_names = _median(batch)
    t_py, t_c, t_names = _median(ticks)
    print(f"session audio: {args.format}; frames seen: {len(inbound)} in, {len(ticks)} out")
    print(f"inbound frame   python functions {d_py + b_py:4d}   (datagram {d_py}, batch {b_py})"
          f"   C calls {d_c + b_c}")
    print(f"outbound frame  python functions {t_py:4d}   C calls {t_c}")
    if args.show:
        for title, names in (("inbound datagram", d_names), ("inbound batch", b_names),
                             ("outbound tick", t_names)):
            print(f"-- {title}: " + ", ".join(names))


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="vb-path-") as tmp:
        return asyncio.run(_measure(args, Path(tmp)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="voicebridge bench path", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
