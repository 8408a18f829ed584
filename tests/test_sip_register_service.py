"""Registrations inside a real SipService (loopback sockets) with a registrar the test plays
over UDP: REGISTERs ride the user agent's client transactions, a stop is bounded even when
the registrar never answers, a 407 is answered with Proxy-Authorization, and draining
unregisters at once."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge.devcert import write_dev_cert
from bridge.errors import ConfigError
from bridge.sip.digest import parse_credentials, verify
from bridge.sip.events import Peer
from bridge.sip.leg import SipLeg
from bridge.sip.lines import Account
from bridge.sip.message import Headers, Request, Response, parse_message, parse_uri
from bridge.sip.registrations import UNREGISTER_WAIT_S
from bridge.sip.service import SipService
from bridge.sip.settings import SipSettings
from tests.support.sip_peers import udp_peer
from tests.support.waiting import until


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


def reply(request: Request, status: int, reason: str, *extra: tuple[str, str]) -> bytes:
    items = [("Via", request.headers.get("Via") or ""),
             ("From", request.headers.get("From") or ""),
             ("To", (request.headers.get("To") or "") + ";tag=r1"),
             ("Call-ID", request.call_id), ("CSeq", str(request.cseq)), *extra]
    return Response(status, reason, Headers(tuple(items))).serialize()


async def test_proxy_challenge_then_unregister_when_draining(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PROXY_PW", "proxy-pw")
    registrar = await udp_peer()
    assert registrar.transport is not None
    account = Account(registrar=f"sip:127.0.0.1:{registrar.port}", user="3002",
                      auth_user="bridge-3002", password_env="TEST_PROXY_PW", expires=120)
    svc = SipService(SipSettings(host="127.0.0.1", port=0, transports=("udp",),
                                 accounts=(account,)), no_call, rtp_ports=(31020, 31039))
    await svc.start()
    try:
        target = ("127.0.0.1", svc.port)
        first = await next_register(registrar)
        registrar.transport.sendto(reply(first, 407, "Proxy Authentication Required", (
            "Proxy-Authenticate", 'Digest realm="edge", nonce="n-407", qop="auth", '
                                  'algorithm=SHA-256')), target)
        second = await next_register(registrar)
        while second.cseq.seq == first.cseq.seq:           # a retransmission of the first
            second = await next_register(registrar)
        creds = parse_credentials(second.headers.get("Proxy-Authorization") or "")
        assert creds.username == "bridge-3002" and creds.algorithm == "SHA-256"
        assert verify(creds, method="REGISTER", password="proxy-pw")
        registrar.transport.sendto(reply(second, 200, "OK", ("Expires", "120")), target)
        await until(lambda: svc.registrations is not None
                    and svc.registrations.snapshot()[0]["registered"], 10)
        svc.drain()                                          # SIGTERM: unregister at once
        bye = await next_register(registrar)
        while bye.headers.get("Expires") != "0":
            bye = await next_register(registrar)
        assert bye.headers.get("Proxy-Authorization") is not None
        registrar.transport.sendto(reply(bye, 200, "OK"), target)
        await until(lambda: svc.registrations is not None
                    and svc.registrations.snapshot()[0]["state"] == "stopped", 10)
        began = time.monotonic()
    finally:
        await svc.stop()
        registrar.transport.close()
    assert time.monotonic() - began < 2.0        # nothing left to wait for


def test_an_account_on_a_transport_the_service_does_not_run_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TCP_PW", "pw")
    account = Account(registrar="sip:127.0.0.1:5999", user="3003", password_env="TEST_TCP_PW",
                      transport="tcp")
    with pytest.raises(ConfigError, match="3003: transport tcp, which"):
        SipService(SipSettings(host="127.0.0.1", port=0, transports=("udp",),
                               accounts=(account,)), no_call)


async def test_a_sips_registrar_is_reached_over_a_verified_tls_connection(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The registrar is a TLS server on loopback with a certificate for ``localhost`` from
    the CA the bridge trusts: the REGISTER arrives over TLS with a TLS Via and a sips:
    Contact, the 200 registers the account, and the stop unregisters over the same
    connection."""
    monkeypatch.setenv("TEST_TLS_PW", "pw")
    ca, cert, key = write_dev_cert(tmp_path / "pki", ("localhost",))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list[Request] = []

    async def registrar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request = parse_message(head)
            assert isinstance(request, Request)
            seen.append(request)
            expires = request.headers.get("Expires") or "600"
            writer.write(reply(request, 200, "OK", ("Expires", expires)))
            await writer.drain()

    server = await asyncio.start_server(registrar, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    account = Account(registrar=f"sips:localhost:{port}", user="3004",
                      password_env="TEST_TLS_PW")
    svc = SipService(SipSettings(host="127.0.0.1", port=0, transports=("udp", "tls"),
                                 tls_port=0, tls_cert=str(cert), tls_key=str(key),
                                 tls_ca=str(ca), accounts=(account,)),
                     no_call, rtp_ports=(31040, 31059))
    await svc.start()
    try:
        await until(lambda: svc.registrations is not None
                    and svc.registrations.snapshot()[0]["registered"], 15)
        first = seen[0]
        assert first.via[0].transport.upper() == "TLS"
        assert "sips:" in (first.headers.get("Contact") or "") or \
            "transport=tls" in (first.headers.get("Contact") or "")
        snap = svc.registrations.snapshot()[0]  # type: ignore[union-attr]
        assert snap["transport"] == "tls"
    finally:
        await svc.stop()
        server.close()
        await server.wait_closed()
    assert seen[-1].headers.get("Expires") == "0"           # unregistered on stop


async def test_a_call_through_an_account_answers_challenges_with_its_credentials(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Our BYE or REFER in a call that came through a registration is challenged by the
    registrar's proxy: the user agent's credential lookup gives the account's login and
    password for that call, and nothing for a call to another URI."""
    monkeypatch.setenv("TEST_ACCOUNT_PW", "account-pw")
    registrar = await udp_peer()
    account = Account(registrar=f"sip:127.0.0.1:{registrar.port}", user="3005",
                      auth_user="bridge-3005", password_env="TEST_ACCOUNT_PW")
    svc = SipService(SipSettings(host="127.0.0.1", port=0, transports=("udp",),
                                 accounts=(account,)), no_call, rtp_ports=(31060, 31079))
    await svc.start()
    try:
        first = await next_register(registrar)
        contact = parse_uri((first.headers.get("Contact") or "").split("<")[1].split(">")[0])
        assert svc.ua is not None and svc.ua._credentials is not None
        through = SimpleNamespace(invite=SimpleNamespace(uri=contact),
                                  peer=Peer("udp", ("127.0.0.1", registrar.port)))
        other = SimpleNamespace(invite=SimpleNamespace(uri=parse_uri("sip:3005@127.0.0.1")),
                                peer=Peer("udp", ("127.0.0.1", registrar.port)))
        assert svc.ua._credentials(through) == ("bridge-3005", "account-pw")  # type: ignore[arg-type]
        assert svc.ua._credentials(other) is None  # type: ignore[arg-type]
    finally:
        await svc.stop()
        if registrar.transport is not None:
            registrar.transport.close()
