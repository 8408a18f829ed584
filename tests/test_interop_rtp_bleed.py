"""RTP bleed: packets from a second, unlatched source during a call never reach the
Realtime session.

The bridge runs in this test's event loop (``Bridge``: SIP service, call manager and the
in-process emulator, whose record shows what the agent was given). SIPp does the
signalling; its SDP names a Python socket as the caller's media address, and that socket
is the caller: it sends silence the whole call. Meanwhile an attacker socket blasts a
loud tone at the bridge's RTP port. The agent must hear silence only (no speech, no turn),
the drops must be counted as ``source``; then the caller itself sends the same tone and
the agent does hear it (so the check could have failed).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

from bridge import metrics
from bridge.bench.sip import LoopbackCapture, Scenario, free_udp_port, run_sipp
from bridge.codecs.g711 import ulaw_encode
from bridge.codecs.level import tone
from bridge.config import settings_from_mapping
from bridge.serve import Bridge
from tests.support.interop import require, require_binary
from tests.support.waiting import until

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
SILENCE = b"\xff" * 160
LOUD = ulaw_encode(tone(1000.0, 20, 8000, dbfs=-6.0))


class RtpSender:
    """A minimal RTP source: PT 0, 20 ms packets, its own SSRC and sequence."""

    def __init__(self, sock: socket.socket, dest: tuple[str, int], ssrc: int) -> None:
        self.sock, self.dest, self.ssrc = sock, dest, ssrc
        self.seq, self.ts, self.sent = 1000, 50000, 0

    def send(self, payload: bytes) -> None:
        header = struct.pack(">BBHII", 0x80, 0, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF,
                             self.ssrc)
        self.sock.sendto(header + payload, self.dest)
        self.seq += 1
        self.ts += 160
        self.sent += 1


async def _stream(sender: RtpSender, payload: bytes, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(int(seconds / 0.020)):
        sender.send(payload)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.020 - loop.time()))


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def test_unlatched_source_never_reaches_the_session(tmp_path: Path) -> None:
    require_binary("sipp", "SIP signalling")
    require(LoopbackCapture.unavailable() is None, "raw sockets for SIPp (CAP_NET_RAW)")
    low = free_udp_port() & ~1
    settings = settings_from_mapping({
        "sip": {"host": "127.0.0.1", "port": 0, "transports": ["udp"]},
        "http": {"host": "127.0.0.1", "port": 0},
        "rtp": {"port_low": low, "port_high": low + 19},
        "records": {"path": ""},
        "dialplans": {"path": str(DIALPLANS)},
    }, {})
    caller_sock, attacker_sock = _udp(), _udp()
    caller_port = caller_sock.getsockname()[1]
    dropped_source = metrics.RTP_DROPPED.labels(reason="source")
    try:
        async with Bridge(settings, env={}) as bridge:
            scenario = (Scenario("bleed", codecs=("pcmu",), media_port=caller_port)
                        .invite(answer=r"m=audio [0-9]+ RTP/AVP 0 101")
                        .pause(5000).bye().write(tmp_path))
            sipp = asyncio.ensure_future(run_sipp(scenario, bridge.sip.port, workdir=tmp_path))
            await until(lambda: bool(bridge.manager.calls) or sipp.done(),
                        what="the SIPp call at the bridge")
            if not bridge.manager.calls:
                assert not sipp.done(), (await sipp).explain()
            [call] = bridge.manager.calls.values()
            leg: Any = call.leg
            target = ("127.0.0.1", leg.rtp.local_port)
            caller = RtpSender(caller_sock, target, 0x11111111)
            attacker = RtpSender(attacker_sock, target, 0x22222222)
            before = dropped_source._value.get()
            emu = bridge.emulator
            await emu.wait_for(lambda r: bool(r.sessions), 5)
            session = emu.record.sessions[-1]

            # The caller (latched by its first packet) sends silence; the attacker a tone.
            caller.send(SILENCE)
            await asyncio.sleep(0.05)
            await asyncio.gather(_stream(caller, SILENCE, 1.8),
                                 _stream(attacker, LOUD, 1.2))
            stats = leg.rtp.stats
            assert stats.latched == caller_sock.getsockname(), stats
            assert stats.dropped.get("source", 0) >= attacker.sent, stats
            assert dropped_source._value.get() - before >= attacker.sent
            assert session.appended_audio_ms >= 1500, session
            assert session.user_items == [] and session.turns == 0, session.user_items
            assert not [r for r in session.responses if r.trigger == "vad"], session.responses

            # The same tone from the caller is heard: a turn is committed and answered.
            await _stream(caller, LOUD, 0.6)
            await _stream(caller, SILENCE, 1.0)
            await emu.wait_for(lambda r: r.sessions[-1].turns >= 1, 3)
            run = await sipp
            assert run.returncode == 0, run.explain()
    finally:
        caller_sock.close()
        attacker_sock.close()
