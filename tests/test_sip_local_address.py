"""The address we advertise with SIP bound to a wildcard: per caller, the address of ours
it reached (Contact, in-dialog Via, SDP c=/o=), not one host-wide guess; a configured
public address still wins. Real sockets on this host only."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import bridge.sip.service as sip_service
from bridge.bench.sip import free_udp_port
from bridge.sip.addresses import plain_host
from bridge.sip.message import Request, Response, parse_message, parse_request, parse_response
from bridge.sip.sdp import parse_sdp
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings
from tests.support.sip_peers import Recorder, SipSink, Uac, UdpPeer, caller_sdp, udp_peer

#: What ``gethostbyname(gethostname())`` gives on a stock Debian/Ubuntu host.
DEBIAN_HOSTS_GUESS = "127.0.1.1"


@contextlib.asynccontextmanager
async def wildcard_service(on_call: Callable[[SipLeg], Awaitable[None]],
                           public_address: str | None = None) -> AsyncIterator[SipService]:
    low = free_udp_port() & ~1
    svc = SipService(SipSettings(host="0.0.0.0", port=0, public_address=public_address),
                     on_call, rtp_ports=(low, low + 19))
    await svc.start()
    try:
        yield svc
    finally:
        svc.hurry.set()           # these callers never answer our BYE: do not wait for it
        await svc.stop()


@pytest.fixture
def loopback_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the host-wide guess the Debian one, whatever this host's /etc/hosts says, so
    that advertising the guess instead of the reached address shows up here too."""
    monkeypatch.setattr(sip_service, "public_guess", lambda bound: DEBIAN_HOSTS_GUESS)


async def next_request(peer: UdpPeer) -> Request:
    while True:
        message = parse_message(await peer.recv())
        if isinstance(message, Request):
            return message


def contact_host(message: Response | Request) -> str:
    (contact,) = message.contact
    return str(contact.uri).split("@")[-1].removeprefix("sip:").split(":")[0]


async def hang_up_soon(leg: SipLeg, sink: SipSink) -> None:
    await asyncio.sleep(0.05)


async def udp_call(svc: SipService, host: str, call: int = 1) -> tuple[Response, Request]:
    """Caller number ``call`` on ``host`` calls ``host``:port; returns our 200 and BYE."""
    sip, rtp = await udp_peer(host), await udp_peer(host)
    assert sip.transport is not None
    try:
        alice = Uac(call_id=f"call-{call}", from_tag=f"tag-{call}", rport=True,
                    branches=itertools.count(100 * call))
        target = (host, svc.port)
        sip.transport.sendto(alice.invite(sdp=caller_sdp(rtp.port)), target)
        assert (await sip.recv_sip()).status == 100
        ok = await sip.recv_sip()
        assert ok.status == 200
        sip.transport.sendto(alice.ack(ok), target)
        bye = await next_request(sip)
        assert bye.method == "BYE"
        return ok, bye
    finally:
        sip.transport.close()
        if rtp.transport is not None:
            rtp.transport.close()


def assert_advertises(ok: Response, bye: Request, host: str) -> None:
    sdp = parse_sdp(ok.body)
    assert sdp.connection is not None and sdp.connection.address == host
    assert sdp.origin.address == host
    assert contact_host(ok) == host
    # Requests we originate in the dialog: Via sent-by and Contact are that address too.
    assert bye.via[0].host == host
    assert contact_host(bye) == host


async def test_wildcard_bind_advertises_the_address_the_caller_reached(
        loopback_guess: None) -> None:
    rec = Recorder(hang_up_soon)
    async with wildcard_service(rec) as svc:
        assert svc.public_address == DEBIAN_HOSTS_GUESS    # the guess is still the fallback
        ok, bye = await udp_call(svc, "127.0.0.1")
        assert_advertises(ok, bye, "127.0.0.1")
        assert b"c=IN IP4 127.0.0.1\r\n" in ok.body
        await asyncio.wait_for(rec.finished.wait(), 10)


async def test_wildcard_bind_over_tcp_uses_the_connection_address(
        loopback_guess: None) -> None:
    rec = Recorder(hang_up_soon)
    async with wildcard_service(rec) as svc:
        rtp = await udp_peer("127.0.0.1")
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        try:
            alice = Uac(rport=True)
            writer.write(alice.invite(sdp=caller_sdp(rtp.port)).replace(b"/UDP", b"/TCP"))

            async def read_message() -> bytes:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                return head + await reader.readexactly(length)

            assert parse_response(await read_message()).status == 100
            ok = parse_response(await read_message())
            assert ok.status == 200
            assert ok.headers.get("Contact") == f"<sip:127.0.0.1:{svc.port};transport=tcp>"
            writer.write(alice.ack(ok).replace(b"/UDP", b"/TCP"))
            bye = parse_request(await read_message())
            assert bye.method == "BYE"
            assert_advertises(ok, bye, "127.0.0.1")
        finally:
            writer.close()
            if rtp.transport is not None:
                rtp.transport.close()
        await asyncio.wait_for(rec.finished.wait(), 10)


def non_loopback_address() -> str | None:
    """One of this host's own non-loopback IPv4 addresses, if it has one (a UDP connect
    toward a documentation address picks it from the routing table and sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return None
        host = str(probe.getsockname()[0])
    return None if host.startswith("127.") else host


async def test_two_callers_on_two_of_our_addresses_each_get_their_own(
        loopback_guess: None) -> None:
    """The LAN case on one host: a caller reaching our LAN address gets the LAN address,
    a caller reaching loopback gets loopback, from the same service."""
    lan = non_loopback_address()
    if lan is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    rec = Recorder(hang_up_soon)
    async with wildcard_service(rec) as svc:
        ok, bye = await udp_call(svc, lan)
        assert_advertises(ok, bye, lan)
        ok, bye = await udp_call(svc, "127.0.0.1", call=2)
        assert_advertises(ok, bye, "127.0.0.1")
        await asyncio.wait_for(rec.finished.wait(), 10)


async def test_configured_public_address_wins_over_the_reached_one(
        loopback_guess: None) -> None:
    rec = Recorder(hang_up_soon)
    async with wildcard_service(rec, public_address="198.51.100.20") as svc:
        ok, bye = await udp_call(svc, "127.0.0.1")
        assert_advertises(ok, bye, "198.51.100.20")
        assert ok.headers.get("Contact") == f"<sip:198.51.100.20:{svc.port}>"
        await asyncio.wait_for(rec.finished.wait(), 10)


def test_ipv4_mapped_and_zoned_addresses_are_written_plainly() -> None:
    assert plain_host("::ffff:192.0.2.7") == "192.0.2.7"
    assert plain_host("fe80::1%eth0") == "fe80::1"
    assert plain_host("2001:db8::1") == "2001:db8::1"
