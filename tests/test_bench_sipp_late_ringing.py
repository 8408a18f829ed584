"""``run_sipp(late_provisional_ok=True)``: a SIPp caller survives a provisional response
that arrives after the 200 OK, and still fails on any other unexpected message.

A proxy in front of the bridge (Kamailio, several worker processes) may relay a node's
``180 Ringing`` and ``200 OK`` out of order; once seen through Kamailio after a failover,
it aborted the caller ("unexpected message while pausing"). The cluster tests call
through :meth:`tests.support.cluster.Cluster.call`, which sets it. Here a plain UDP
socket answers SIPp's INVITE with 200 first and then 180 (or a 486), takes the ACK and
the BYE.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from bridge.bench.sip import Scenario, SippRun, run_sipp
from tests.support.interop import require_binary


def _reply(request: str, status: str) -> bytes:
    """A response to ``request`` (its Via, From, Call-ID, CSeq; a To tag of ours)."""
    def header(name: str) -> str:
        m = re.search(rf"^{name}:.*$", request, re.MULTILINE | re.IGNORECASE)
        assert m is not None, request
        return m.group(0).rstrip("\r")

    to = header("To")
    if ";tag=" not in to:
        to += ";tag=uas1"
    return ("\r\n".join([f"SIP/2.0 {status}", header("Via"), header("From"), to,
                         header("Call-ID"), header("CSeq"),
                         "Contact: <sip:uas@127.0.0.1>", "Content-Length: 0", "", ""])
            .encode())


async def _answer_late(sock: socket.socket, late: str) -> list[str]:
    """Answer one INVITE with 100, 200, then ``late``; answer the BYE with 200. Returns
    the methods received, in order."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    while "BYE" not in seen:
        data, peer = await loop.sock_recvfrom(sock, 65535)
        request = data.decode("utf-8", "replace")
        method = request.split(" ", 1)[0]
        if method in seen and method == "INVITE":
            continue                                  # a retransmission
        seen.append(method)
        if method == "INVITE":
            for status in ("100 Trying", "200 OK", late):
                sock.sendto(_reply(request, status), peer)
        elif method == "BYE":
            sock.sendto(_reply(request, "200 OK"), peer)
    return seen


async def _call(tmp_path: Path, sipp: str, late: str, ok: bool) -> tuple[SippRun, list[str]]:
    path = Scenario("late").invite().pause(500).bye().write(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        uas = asyncio.create_task(_answer_late(sock, late))
        try:
            run = await run_sipp(path, sock.getsockname()[1], workdir=tmp_path, limit_s=15,
                                 sipp=sipp, late_provisional_ok=ok)
            done, _ = await asyncio.wait({uas}, timeout=2)
            return run, (uas.result() if done else [])
        finally:
            uas.cancel()
            await asyncio.gather(uas, return_exceptions=True)


@pytest.mark.interop
async def test_a_180_after_the_200_aborts_the_call_unless_allowed(tmp_path: Path) -> None:
    sipp = require_binary("sipp", "the caller")
    run, seen = await _call(tmp_path, sipp, "180 Ringing", ok=True)
    assert run.returncode == 0 and run.successful == 1 and run.failed == 0, run.explain()
    assert seen == ["INVITE", "ACK", "BYE"], seen
    run, _seen = await _call(tmp_path, sipp, "180 Ringing", ok=False)     # SIPp's default
    assert run.failed == 1 and "aborting call on unexpected" in run.errors.lower(), \
        run.explain()


@pytest.mark.interop
async def test_any_other_unexpected_message_still_fails_the_run(tmp_path: Path) -> None:
    sipp = require_binary("sipp", "the caller")
    run, seen = await _call(tmp_path, sipp, "486 Busy Here", ok=True)
    assert seen[:2] == ["INVITE", "ACK"], seen
    assert run.returncode != 0, run.explain()
    assert "other than a late provisional response" in run.errors, run.explain()
