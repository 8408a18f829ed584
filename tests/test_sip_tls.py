"""SIP over TLS on real loopback sockets: SipService's TLS listener against Python TLS
callers (a call, its BYE back over the same connection, junk and silence on the port,
client certificates required or not), its client connections against a Python TLS server
(verified, reused, refused when the certificate does not fit, a BYE to a ``sips:`` route),
the start-up errors for unusable files, and ``voicebridge dev-cert``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)

from bridge import metrics
from bridge.bench.sip import free_udp_port
from bridge.devcert import Issued, issue, make_ca
from bridge.errors import ConfigError
from bridge.sip.message import parse_request, parse_response
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings
from bridge.sip.tls import TlsConnectFailed
from tests.support.sip_peers import Recorder, SipSink, Uac, caller_sdp, respond, udp_peer
from tests.support.waiting import until


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path                # the CA the bridge trusts (tls_ca)
    cert: Path              # the bridge's certificate, for 127.0.0.1 and localhost
    key: Path
    client: Issued          # a client certificate that CA signed
    stranger: Issued        # a client certificate another CA signed
    wrong_name: Issued      # a server certificate of the right CA for another name
    other_ca: Issued


def _write(folder: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(issued.key_pem())
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(), make_ca("another CA")
    (folder / "ca.pem").write_bytes(ca.cert_pem())
    (folder / "other-ca.pem").write_bytes(other.cert_pem())
    cert, key = _write(folder, "server", issue(ca, ("127.0.0.1", "localhost")))
    return Pki(folder, folder / "ca.pem", cert, key,
               client=issue(ca, ("alice.test",), client=True),
               stranger=issue(other, ("mallory.test",), client=True),
               wrong_name=issue(ca, ("elsewhere.test",)), other_ca=other)


def client_context(pki: Pki, cert: Issued | None = None, name: str = "c") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(*_write(pki.folder, name, cert))
    return context


@contextlib.asynccontextmanager
async def service(pki: Pki, on_call: Callable[[SipLeg], Awaitable[None]],
                  **settings: object) -> AsyncIterator[SipService]:
    low = free_udp_port() & ~1
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": 0, "tls_port": 0, "transports": ("udp", "tls"),
        "tls_cert": str(pki.cert), "tls_key": str(pki.key), "tls_ca": str(pki.ca)}
    values.update(settings)
    svc = SipService(SipSettings(**values), on_call,  # type: ignore[arg-type]
                     rtp_ports=(low, low + 19))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def wait_for_hangup(leg: SipLeg, sink: SipSink) -> None:
    await sink.hangup.wait()


async def read_message(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def options(port: int, transport: str = "TLS", cseq: int = 1) -> bytes:
    return (f"OPTIONS sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bKopt{cseq}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\n"
            f"To: <sip:bob@127.0.0.1>\r\nCall-ID: opt-{port}\r\nCSeq: {cseq} OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


async def ask_options(port: int, context: ssl.SSLContext) -> int | None:
    """An OPTIONS over a new TLS connection: the answer's status, or None when the
    connection failed or closed without one."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname="127.0.0.1")
    except (ssl.SSLError, ConnectionError):
        return None
    try:
        writer.write(options(port))
        await writer.drain()
        return parse_response(await read_message(reader)).status
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def failures(side: str, reason: str) -> float:
    return metrics.SIP_TLS_HANDSHAKE_FAILED.labels(side=side, reason=reason)._value.get()


# ------------------------------------------------------------------------- server side


@pytest.mark.parametrize("scheme", ["sip", "sips"])
async def test_call_over_tls_is_answered_over_tls_and_its_bye_comes_back_on_it(
        pki: Pki, scheme: str) -> None:
    async def body(leg: SipLeg, sink: SipSink) -> None:
        await asyncio.sleep(0.05)

    rec = Recorder(body)
    async with service(pki, rec) as svc:
        rtp = await udp_peer()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", svc.tls_port, ssl=client_context(pki), server_hostname="127.0.0.1")
        alice = Uac(rport=True)
        invite = alice.invite(sdp=caller_sdp(rtp.port)).replace(b"/UDP", b"/TLS")
        if scheme == "sips":
            invite = invite.replace(b"INVITE sip:", b"INVITE sips:", 1)
        writer.write(invite)
        assert parse_response(await read_message(reader)).status == 100
        ok = parse_response(await read_message(reader))
        assert ok.status == 200
        contact = ok.headers.get("Contact")
        assert contact == (f"<sips:127.0.0.1:{svc.tls_port}>" if scheme == "sips" else
                           f"<sip:127.0.0.1:{svc.tls_port};transport=tls>"), contact
        writer.write(alice.ack(ok).replace(b"/UDP", b"/TLS"))
        await asyncio.wait_for(rec.started.wait(), 10)
        assert rec.legs[0].info.extra["transport"] == "tls"
        # The call's end: our BYE over the same connection, sent by our TLS address.
        bye = parse_request(await read_message(reader))
        assert bye.method == "BYE"
        assert str(bye.via[0]).startswith(f"SIP/2.0/TLS 127.0.0.1:{svc.tls_port};")
        writer.write(respond(bye, 200, "OK"))
        await writer.drain()
        await asyncio.wait_for(rec.finished.wait(), 10)
        await until(lambda: svc.ua is not None and svc.ua.hangups_in_flight() == 0)
        writer.close()


async def test_plain_tcp_on_the_tls_port_is_closed_counted_and_harmless(pki: Pki) -> None:
    before = failures("server", "protocol")
    async with service(pki, wait_for_hangup) as svc:
        assert svc.tls is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tls_port)
        writer.write(options(svc.tls_port, "TCP"))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(1000), 10) == b""     # closed, unanswered
        writer.close()
        await until(lambda: failures("server", "protocol") == before + 1)
        assert svc.tls.stats["handshake_failed"] == 1
        assert len(svc.tls.guard) == 0 and svc.ua is not None
        assert svc.ua.stats["received"] == 0
        # The service goes on: a TLS caller is answered.
        assert await ask_options(svc.tls_port, client_context(pki)) == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_below_1_2_is_refused(pki: Pki) -> None:
    before = failures("server", "protocol")
    old = client_context(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")        # let this client offer TLS 1.1 at all
    modern = client_context(pki)
    modern.maximum_version = modern.minimum_version = ssl.TLSVersion.TLSv1_2
    async with service(pki, wait_for_hangup) as svc:
        assert await ask_options(svc.tls_port, old) is None
        await until(lambda: failures("server", "protocol") == before + 1)
        assert await ask_options(svc.tls_port, modern) == 200


async def test_a_silent_connection_is_closed_at_the_handshake_timeout(pki: Pki) -> None:
    before = failures("server", "timeout")
    async with service(pki, wait_for_hangup, tls_handshake_timeout_s=1) as svc:
        assert svc.tls is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.tls_port)
        await until(lambda: len(svc.tls.guard) == 1 if svc.tls else False)
        assert await asyncio.wait_for(reader.read(1000), 15) == b""
        writer.close()
        await until(lambda: failures("server", "timeout") == before + 1)
        assert len(svc.tls.guard) == 0


async def test_client_certificates_required_when_verification_is_on(pki: Pki) -> None:
    before = failures("server", "certificate")
    async with service(pki, wait_for_hangup, tls_verify_client=True) as svc:
        port = svc.tls_port
        assert await ask_options(port, client_context(pki)) is None          # none
        assert await ask_options(port, client_context(pki, pki.stranger, "s")) is None
        assert await ask_options(port, client_context(pki, pki.client, "a")) == 200
        await until(lambda: failures("server", "certificate") == before + 2)
        assert svc.ua is not None and svc.ua.stats["received"] == 1


async def test_no_client_certificate_needed_when_verification_is_off(pki: Pki) -> None:
    async with service(pki, wait_for_hangup) as svc:
        assert await ask_options(svc.tls_port, client_context(pki)) == 200


async def test_a_crlf_ping_over_tls_gets_its_pong(pki: Pki) -> None:
    async with service(pki, wait_for_hangup) as svc:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", svc.tls_port, ssl=client_context(pki), server_hostname="127.0.0.1")
        writer.write(b"\r\n\r\n")                 # RFC 5626 §3.5.1
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"\r\n"
        writer.close()


# ------------------------------------------------------------------------- client side


@dataclass
class TlsServer:
    """A Python SIP/TLS peer: every message it receives, and how many connections."""

    connections: int = 0
    #: The subject names of the client certificates presented, one per connection.
    clients: list[str] = field(default_factory=list)
    messages: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        presented = writer.get_extra_info("peercert") or {}
        self.clients += [value for rdn in presented.get("subject", ()) for key, value in rdn
                         if key == "commonName"]
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError,
                                 TimeoutError):
            while True:
                await self.messages.put(await read_message(reader))


@contextlib.asynccontextmanager
async def tls_server(pki: Pki, cert: Issued | None = None, *, require_client: bool = False
                     ) -> AsyncIterator[tuple[TlsServer, int]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if require_client:
        context.load_verify_locations(cafile=str(pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    if cert is None:
        context.load_cert_chain(pki.cert, pki.key)
    else:
        context.load_cert_chain(*_write(pki.folder, "peer", cert))
    peer = TlsServer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0, ssl=context)
    try:
        yield peer, server.sockets[0].getsockname()[1]
    finally:
        for writer in peer.writers:
            writer.close()
        server.close()


async def test_client_connection_is_verified_and_reused(pki: Pki) -> None:
    async with service(pki, wait_for_hangup) as svc, tls_server(pki) as (peer, port):
        assert svc.tls is not None
        key = await svc.tls.connect("127.0.0.1", port)
        assert key == ("127.0.0.1", port)
        assert await svc.tls.connect("127.0.0.1", port) == key
        svc.tls.send(key, options(port, cseq=1))
        svc.tls.send(key, options(port, cseq=2))
        first = parse_request(await asyncio.wait_for(peer.messages.get(), 10))
        second = parse_request(await asyncio.wait_for(peer.messages.get(), 10))
        assert (first.cseq.seq, second.cseq.seq) == (1, 2)
        assert peer.connections == 1


async def test_send_opens_the_connection_it_needs(pki: Pki) -> None:
    async with service(pki, wait_for_hangup) as svc, tls_server(pki) as (peer, port):
        assert svc.tls is not None
        svc.tls.send(("localhost", port), options(port))        # checked against the name
        request = parse_request(await asyncio.wait_for(peer.messages.get(), 10))
        assert request.method == "OPTIONS" and peer.connections == 1


async def test_our_certificate_is_our_client_certificate(pki: Pki) -> None:
    """A server that requires client certificates (mutual TLS with a trunk) gets ours."""
    async with (service(pki, wait_for_hangup) as svc,
                tls_server(pki, require_client=True) as (peer, port)):
        assert svc.tls is not None
        key = await svc.tls.connect("127.0.0.1", port)
        svc.tls.send(key, options(port))
        assert parse_request(await asyncio.wait_for(peer.messages.get(), 10)).method == \
            "OPTIONS"
        assert peer.clients == ["127.0.0.1"]


@pytest.mark.parametrize("which", ["wrong_name", "other_ca"])
async def test_a_server_certificate_that_does_not_fit_is_refused(pki: Pki, which: str
                                                                  ) -> None:
    before = failures("client", "certificate")
    cert = pki.wrong_name if which == "wrong_name" else issue(pki.other_ca, ("127.0.0.1",))
    async with service(pki, wait_for_hangup) as svc, tls_server(pki, cert) as (peer, port):
        assert svc.tls is not None
        with pytest.raises(TlsConnectFailed, match="certificate"):
            await svc.tls.connect("127.0.0.1", port)
        assert failures("client", "certificate") == before + 1
        assert svc.tls.connections == {} and len(svc.tls.guard) == 0
        assert peer.messages.empty()


async def test_a_server_that_never_completes_the_handshake_is_given_up(pki: Pki) -> None:
    before = failures("client", "timeout")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()                     # accepts, says nothing, until closed
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with service(pki, wait_for_hangup, tls_handshake_timeout_s=1) as svc:
            assert svc.tls is not None
            with pytest.raises(TlsConnectFailed, match="timeout"):
                await svc.tls.connect("127.0.0.1", port)
            assert failures("client", "timeout") == before + 1
            assert len(svc.tls.guard) == 0
    finally:
        server.close()


async def test_bye_to_a_sips_route_goes_over_a_new_tls_connection(pki: Pki) -> None:
    """A call over UDP whose proxy record-routes with a ``sips:`` URI: our BYE goes to that
    proxy over TLS (RFC 5630), on a connection we open and verify."""
    async def body(leg: SipLeg, sink: SipSink) -> None:
        await asyncio.sleep(0.05)

    rec = Recorder(body)
    async with service(pki, rec) as svc, tls_server(pki) as (proxy, port):
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None
        alice = Uac(rport=True)
        route = f"<sips:127.0.0.1:{port};lr>"
        sip.transport.sendto(alice.invite(sdp=caller_sdp(rtp.port),
                                          extra=(f"Record-Route: {route}",)),
                             ("127.0.0.1", svc.port))
        assert (await sip.recv_sip()).status == 100
        ok = await sip.recv_sip()
        assert ok.status == 200
        # §12.1.1: a sips: top Record-Route asks for a SIPS Contact (our TLS address).
        assert ok.headers.get("Contact") == f"<sips:127.0.0.1:{svc.tls_port}>"
        sip.transport.sendto(alice.ack(ok), ("127.0.0.1", svc.port))
        bye = parse_request(await asyncio.wait_for(proxy.messages.get(), 10))
        assert bye.method == "BYE" and bye.headers.get("Route") == route
        assert str(bye.via[0]).startswith(f"SIP/2.0/TLS 127.0.0.1:{svc.tls_port};")
        proxy.writers[0].write(respond(bye, 200, "OK"))
        await until(lambda: svc.ua is not None and svc.ua.hangups_in_flight() == 0)
        await asyncio.wait_for(rec.finished.wait(), 10)


async def test_bye_goes_to_the_contact_once_the_callers_connection_is_gone(pki: Pki
                                                                         ) -> None:
    """RFC 3261 §18.1.1: the caller's TLS connection closed during the call, so our BYE
    goes to its Contact (``;transport=tls``) over a connection we open."""
    hang_up = asyncio.Event()

    async def body(leg: SipLeg, sink: SipSink) -> None:
        await hang_up.wait()

    rec = Recorder(body)
    async with service(pki, rec) as svc, tls_server(pki) as (phone, port):
        rtp = await udp_peer()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", svc.tls_port, ssl=client_context(pki), server_hostname="127.0.0.1")
        alice = Uac(rport=True)
        contact = f"Contact: <sip:alice@127.0.0.1:{port};transport=tls>".encode()
        writer.write(alice.invite(sdp=caller_sdp(rtp.port)).replace(b"/UDP", b"/TLS")
                     .replace(b"Contact: <sip:alice@client.atlanta.example.com>", contact))
        assert parse_response(await read_message(reader)).status == 100
        ok = parse_response(await read_message(reader))
        writer.write(alice.ack(ok).replace(b"/UDP", b"/TLS"))
        await asyncio.wait_for(rec.started.wait(), 10)
        writer.close()
        await until(lambda: svc.tls is not None and not svc.tls.connections)
        hang_up.set()
        bye = parse_request(await asyncio.wait_for(phone.messages.get(), 10))
        assert bye.method == "BYE" and str(bye.uri) == f"sip:alice@127.0.0.1:{port};transport=tls"
        assert str(bye.via[0]).startswith(f"SIP/2.0/TLS 127.0.0.1:{svc.tls_port};")
        phone.writers[0].write(respond(bye, 200, "OK"))
        await until(lambda: svc.ua is not None and svc.ua.hangups_in_flight() == 0)
        await asyncio.wait_for(rec.finished.wait(), 10)


# -------------------------------------------------------------------------- start-up


def test_unusable_files_are_named_at_start(pki: Pki, tmp_path: Path) -> None:
    async def on_call(leg: SipLeg) -> None:
        return None

    def build(**settings: object) -> None:
        values: dict[str, object] = {"transports": ("tls",), "tls_cert": str(pki.cert),
                                     "tls_key": str(pki.key)}
        values.update(settings)
        SipService(SipSettings(**values), on_call)  # type: ignore[arg-type]

    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=rf"tls_cert: cannot read {missing}: No such file"):
        build(tls_cert=str(missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a usable certificate and key"):
        build(tls_key=str(garbage))
    with pytest.raises(ConfigError, match="tls_key: needed"):
        build(tls_key=None)
    with pytest.raises(ConfigError, match="tls_verify_client: needs tls_ca"):
        build(tls_verify_client=True)
    with pytest.raises(ConfigError, match="tls_ca: .* holds no usable CA"):
        build(tls_verify_client=True, tls_ca=str(garbage))
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(load_pem_private_key(pki.key.read_bytes(), None).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="tls_key: the key is encrypted"):
        build(tls_key=str(encrypted))
    with pytest.raises(ConfigError, match="tls_handshake_timeout_s: must be above 0"):
        build(tls_handshake_timeout_s=0)
    build(tls_verify_client=True, tls_ca=str(pki.ca))                 # all usable


def test_serve_with_a_missing_certificate_exits_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBRIDGE_")}
    env.update({"VOICEBRIDGE_SIP_TRANSPORTS": "udp,tls", "VOICEBRIDGE_SIP_HOST": "127.0.0.1",
                "VOICEBRIDGE_SIP_PORT": "0", "VOICEBRIDGE_SIP_TLS_PORT": "0",
                "VOICEBRIDGE_HTTP_HOST": "127.0.0.1", "VOICEBRIDGE_HTTP_PORT": "0",
                "VOICEBRIDGE_SIP_TLS_CERT": str(tmp_path / "missing.pem"),
                "VOICEBRIDGE_SIP_TLS_KEY": str(tmp_path / "missing-key.pem")})
    done = subprocess.run([sys.executable, "-m", "bridge", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert f"tls_cert: cannot read {tmp_path / 'missing.pem'}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_dev_cert_writes_a_usable_certificate_and_a_private_key(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    done = subprocess.run([sys.executable, "-m", "bridge", "dev-cert", "--out", str(out),
                           "--host", "pbx.example.test", "--host", "10.1.2.3"],
                          capture_output=True, text=True, timeout=60, check=True)
    ca, cert, key = out / "ca.pem", out / "cert.pem", out / "key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert f'tls_cert = "{cert}"' in done.stdout and f'tls_key = "{key}"' in done.stdout
    assert "VOICEBRIDGE_SIP_TRANSPORTS=udp,tcp,tls" in done.stdout
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["pbx.example.test"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    # The pair loads as a server's, and a client trusting ca.pem verifies it.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(ca))
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert not any(out.glob("*ca-key*"))      # the CA's key is never written
