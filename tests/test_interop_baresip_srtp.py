"""Interop: baresip with its ``srtp`` module in mandatory mode (``mediaenc=srtp-mand``)
calls a ``voicebridge serve`` whose default SRTP policy is ``require`` (SDES over plain
UDP allowed: this is loopback). The call can only be SRTP (the bridge refuses any other
with 488), and baresip must hear its phrase echoed (envelope correlation), so both
directions are protected and unprotected with the negotiated keys. Meanwhile an SRTP
packet with a bad auth tag sent to the call's RTP port is dropped and counted on
/metrics, and the call goes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from pathlib import Path

from bridge.bench.sip import ServeProcess
from tests.support import baresip as phone
from tests.support.interop import require, require_binary
from tests.support.waiting import until

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
HAS_SRTP_MODULE = Path("/usr/lib/baresip/modules/srtp.so").exists()
AUTH = ("voicebridge_rtp_dropped_total", 'reason="srtp_auth"')


def rtp_ports_of(serve: ServeProcess) -> list[int]:
    """The UDP ports of the serve's RTP range its process has sockets on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{serve.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    low, high = serve.rtp_ports
    ports = []
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].rsplit(":", 1)[1], 16)
        if fields[9] in inodes and low <= port <= high:
            ports.append(port)
    return ports


async def forge_during_call(serve: ServeProcess) -> int:
    """Once the call is up, send three SRTP-looking packets whose 10-byte auth tags are
    wrong to the call's RTP port (the only RTP socket of this serve)."""
    await until(lambda: serve.metric("voicebridge_calls_active", 'source="sip"') >= 1, 30,
                what="the baresip call", poll_s=0.2)
    ports: list[int] = []

    def found() -> bool:
        ports[:] = rtp_ports_of(serve)
        return bool(ports)
    await until(found, 10, what="the call's RTP socket", poll_s=0.1)
    [port] = ports
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq in (40000, 40001, 40002):
            header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5EC0DE)
            sock.sendto(header + os.urandom(160) + os.urandom(10), ("127.0.0.1", port))
    return 3


async def test_baresip_srtp_mandatory_hears_its_phrase_echoed(tmp_path: Path) -> None:
    require_binary("baresip", "softphone interop")
    require(HAS_SRTP_MODULE, "baresip's srtp module is not installed")
    source = phone.phrase(tmp_path)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    cfg = phone.config(tmp_path, source, sounds, codecs=("g711", "srtp"),
                       account="<sip:bs@127.0.0.1>;mediaenc=srtp-mand")
    env = {"VOICEBRIDGE_SIP_SRTP": "require", "VOICEBRIDGE_SIP_SDES_OVER_PLAIN": "true",
           "VOICEBRIDGE_SIP_TRANSPORTS": "udp"}
    with ServeProcess(tmp_path / "serve", dialplans=DIALPLANS, env=env,
                      log_level="DEBUG") as serve:
        forger = asyncio.ensure_future(forge_during_call(serve))
        try:
            call = await phone.call(cfg, sounds, f"sip:echo@127.0.0.1:{serve.sip_port}",
                                    serve.records)
            record = call.record
            info = f"--- baresip ---\n{call.output[-2500:]}\n{serve.log_tail()}"
            forged = await forger
        finally:
            forger.cancel()
        phone.check_echo(sounds, info)
        log = serve.log_path.read_text()
        assert "SRTP AES_CM_128_HMAC_SHA1_" in log, info       # the answer's debug line
        assert "inline:" not in log                             # and never a key
        assert serve.metric(*AUTH) >= forged, f"forged packets not counted\n{info}"
        assert record["end_reason"] == "caller_hangup" and record["errors"] == [], record
        assert serve.metric("voicebridge_calls_rejected_total",
                            'reason="sip_srtp_required"') == 0
