"""Registrations inside a real SipService (loopback sockets) with a registrar the test plays
over UDP: REGISTERs ride the user agent's client transactions, and a stop is bounded even
when the registrar never answers."""

from __future__ import annotations

import time

import pytest

from bridge.sip.leg import SipLeg
from bridge.sip.lines import Account
from bridge.sip.message import Request, parse_message
from bridge.sip.registrations import UNREGISTER_WAIT_S
from bridge.sip.service import SipService
from bridge.sip.settings import SipSettings
from tests.support.sip_peers import udp_peer


async def no_call(leg: SipLeg) -> None:
    raise AssertionError("no call expected")


async def next_register(peer: object, limit: float = 10.0) -> Request:
    message = parse_message(await peer.recv(limit))  # type: ignore[attr-defined]
    assert isinstance(message, Request) and message.method == "REGISTER"
    return message


async def test_silent_registrar_retransmissions_and_a_bounded_unregister(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SILENT_PW", "pw")
    registrar = await udp_peer()
    account = Account(registrar=f"sip:127.0.0.1:{registrar.port}", user="3001",
                      password_env="TEST_SILENT_PW")
    svc = SipService(SipSettings(host="127.0.0.1", port=0, transports=("udp",),
                                 accounts=(account,)), no_call, rtp_ports=(31000, 31019))
    await svc.start()
    stopped = False
    try:
        first = await next_register(registrar)
        assert first.headers.get("Expires") == "600"
        contact = first.headers.get("Contact") or ""
        assert f"@127.0.0.1:{svc.port}>" in contact and "sip:vb-" in contact
        # Timer E: the same request again (same branch) after T1 = 0.5 s, unanswered.
        again = await next_register(registrar, 3.0)
        assert again.via[0].branch == first.via[0].branch
        assert again.cseq.seq == first.cseq.seq
        began = time.monotonic()
        await svc.stop()
        stopped = True
        took = time.monotonic() - began
        assert took < UNREGISTER_WAIT_S + 3, took     # not the 32 s of Timer F
        seen = []
        while not registrar.queue.empty():
            seen.append(parse_message(registrar.queue.get_nowait()))
        unregisters = [m for m in seen if isinstance(m, Request)
                       and m.headers.get("Expires") == "0"]
        assert unregisters and ";expires=0" in (unregisters[0].headers.get("Contact") or "")
        assert unregisters[0].call_id == first.call_id
        assert unregisters[0].cseq.seq > first.cseq.seq
    finally:
        if not stopped:
            await svc.stop()
        if registrar.transport is not None:
            registrar.transport.close()
