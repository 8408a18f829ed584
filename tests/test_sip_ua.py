"""UAS core features beyond the basic flows: OPTIONS, rport, admission, offerless INVITE,
hold/resume re-INVITEs, INFO DTMF, REFER with NOTIFY sipfrag, 488, TCP framing."""

from __future__ import annotations

import itertools

from bridge.sip.message import parse_request, parse_response
from bridge.sip.sdp import Direction, answer_offer, make_offer, parse_sdp
from bridge.sip.settings import SipSettings
from bridge.sip.ua import (
    ByeReceived,
    CallEstablished,
    DtmfInfo,
    Hold,
    IncomingCall,
    MediaUpdated,
    Peer,
    ReferDone,
    ReferProgress,
    Rejection,
    Resume,
    UserAgent,
)
from tests.support.sip_peers import (
    ALICE,
    ALICE_SDP,
    BOB,
    CountingIds,
    Uac,
    UasHarness,
    respond,
    statuses,
)


def established() -> tuple[UasHarness, Uac, IncomingCall]:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    ok = h.answer(call)
    h.send(alice.ack(ok))
    assert isinstance(h.events()[0], CallEstablished)
    return h, alice, call


def test_options_answered_with_capabilities() -> None:
    h = UasHarness()
    alice = Uac()
    (data,) = h.send(alice.in_dialog("OPTIONS").replace(b";tag=None", b""))
    response = parse_response(data)
    assert response.status == 200
    assert response.headers.get("Allow") == ("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, "
                                             "NOTIFY, UPDATE, PRACK")
    assert response.headers.get("Accept") == "application/sdp"
    # Session timers (RFC 4028) and reliable provisionals (RFC 3262).
    assert response.headers.get("Supported") == "timer, 100rel"
    assert response.to.tag is not None


def test_rport_answers_to_the_source_port() -> None:
    h = UasHarness()
    alice = Uac(rport=True)
    h.ua.receive(alice.invite(), ("198.51.100.7", 34567), "udp", 0.0)
    ((data, addr),) = h.ua.datagrams_to_send()
    assert addr == ("198.51.100.7", 34567)  # RFC 3581 §4
    via = parse_response(data).via[0]
    assert (via.received, via.rport) == ("198.51.100.7", 34567)


def test_without_rport_answers_to_the_sent_by_port() -> None:
    h = UasHarness()
    alice = Uac()
    h.ua.receive(alice.invite(), ("198.51.100.7", 34567), "udp", 0.0)
    ((data, addr),) = h.ua.datagrams_to_send()
    assert addr == ("198.51.100.7", 5060)  # RFC 3261 §18.2.2
    via = parse_response(data).via[0]
    assert (via.received, via.rport, via.has_rport) == ("198.51.100.7", None, False)


def test_admission_capacity_and_allowlist() -> None:
    def admit(request: object, peer: Peer) -> Rejection | None:
        if peer.addr[0] != "192.0.2.101":
            return Rejection(403)
        return Rejection(503, headers=(("Retry-After", "30"),))

    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060, admission=admit,
                   ids=CountingIds())
    ua.receive(Uac().invite(), ("203.0.113.9", 5060), "udp", 0.0)
    assert statuses([d for d, _ in ua.datagrams_to_send()]) == [100, 403]
    other = Uac(call_id="other")
    next(other.branches)  # a new transaction, not a retransmission of the first
    ua.receive(other.invite(), ALICE, "udp", 0.0)
    sent = [d for d, _ in ua.datagrams_to_send()]
    assert statuses(sent) == [100, 503]
    assert parse_response(sent[1]).headers.get("Retry-After") == "30"
    assert ua.events() == []


def test_offerless_invite_offer_in_200_answer_in_ack() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite(sdp=None))
    call = h.incoming()
    assert call.offer is None
    offer = make_offer(address="192.0.2.200", port=4000, session_id="7", session_version=1)
    h.ua.answer(call.call, offer, h.now)
    (data,) = h.out()
    ok = parse_response(data)
    assert parse_sdp(ok.body).media[0].formats == ("0", "8", "101")
    answer = ALICE_SDP.replace(b"RTP/AVP 0\r\na=rtpmap:0 PCMU/8000",
                               b"RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
                               b"a=rtpmap:101 telephone-event/8000")
    h.send(alice.ack(ok, body=answer))
    (event,) = h.events()
    assert isinstance(event, CallEstablished) and event.media is not None
    assert (event.media.codec, event.media.payload_type, event.media.dtmf_payload_type) == (
        "pcma", 8, 101)
    assert (event.media.remote_address, event.media.remote_port) == ("192.0.2.101", 49172)


def test_offerless_invite_without_answer_in_ack_is_hung_up() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite(sdp=None))
    call = h.incoming()
    h.ua.answer(call.call, make_offer(address="192.0.2.200", port=4000), h.now)
    (data,) = h.out()
    sent = h.send(alice.ack(parse_response(data)))
    assert [d.split(b" ", 1)[0] for d in sent] == [b"BYE"]


def test_no_common_codec_is_488() -> None:
    h = UasHarness()
    alice = Uac()
    g729 = ALICE_SDP.replace(b"RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", b"RTP/AVP 18\r\n"
                             b"a=rtpmap:18 G729/8000")
    sent = h.send(alice.invite(sdp=g729))
    assert statuses(sent) == [100, 488]
    assert h.events() == []


def _reinvite(h: UasHarness, alice: Uac, sdp: bytes) -> bytes:
    sent = h.send(alice.in_dialog("INVITE", sdp))
    assert statuses(sent) == [100, 200]
    ok = parse_response(sent[1])
    h.send(alice.ack(ok))
    return ok.body


def test_hold_and_resume_by_reinvite() -> None:
    h, alice, call = established()
    base = ALICE_SDP.replace(b"2890844526 2890844526", b"2890844526 2890844527")
    body = _reinvite(h, alice, base + b"a=sendonly\r\n")
    answer = parse_sdp(body)
    assert answer.media[0].direction() is Direction.RECVONLY
    assert answer.origin.session_version == 2  # bumped from our 1 (RFC 3264 §8)
    assert answer.media[0].port == 3456         # same media port as before
    events = h.events()
    assert [type(e) for e in events] == [MediaUpdated, Hold]
    assert isinstance(events[0], MediaUpdated) and not events[0].media.may_send
    _reinvite(h, alice, base.replace(b"2890844527", b"2890844528") + b"a=sendrecv\r\n")
    assert [type(e) for e in h.events()] == [MediaUpdated, Resume]


def test_hold_with_old_style_zero_address() -> None:
    h, alice, call = established()
    sdp = ALICE_SDP.replace(b"c=IN IP4 192.0.2.101", b"c=IN IP4 0.0.0.0")
    _reinvite(h, alice, sdp)
    assert [type(e) for e in h.events()] == [MediaUpdated, Hold]


def test_reinvite_without_sdp_is_a_refresh() -> None:
    h, alice, call = established()
    sent = h.send(alice.in_dialog("INVITE"))
    ok = parse_response(sent[1])
    ours = parse_sdp(ok.body)
    assert ours.origin.session_version == 1  # unchanged offer keeps its version
    h.send(alice.ack(ok, body=ALICE_SDP + b"a=inactive\r\n"))
    assert [type(e) for e in h.events()] == [MediaUpdated, Hold]


def test_reinvite_with_unusable_offer_is_488_and_call_goes_on() -> None:
    h, alice, call = established()
    sent = h.send(alice.in_dialog("INVITE", b"v=0\r\n"))
    assert statuses(sent) == [100, 488]
    h.send(alice.ack(parse_response(sent[1])))
    assert statuses(h.send(alice.in_dialog("BYE"))) == [200]
    assert h.events() == [ByeReceived(call.call)]


def test_info_dtmf_both_formats() -> None:
    h, alice, call = established()
    relay = alice.in_dialog("INFO", b"Signal=5\r\nDuration=160\r\n")
    relay = relay.replace(b"application/sdp", b"application/dtmf-relay")
    assert statuses(h.send(relay)) == [200]
    plain = alice.in_dialog("INFO", b"#").replace(b"application/sdp", b"application/dtmf")
    assert statuses(h.send(plain)) == [200]
    other = alice.in_dialog("INFO", b"<x/>").replace(b"application/sdp",
                                                    b"application/media_control+xml")
    assert statuses(h.send(other)) == [415]
    assert h.events() == [DtmfInfo(call.call, "5", 160), DtmfInfo(call.call, "#", None)]


def _notify(alice: Uac, frag: bytes, state: str) -> bytes:
    return alice.in_dialog("NOTIFY", frag, extra=("Event: refer", f"Subscription-State: {state}")
                           ).replace(b"application/sdp", b"message/sipfrag;version=2.0")


def test_refer_success_followed_by_notify() -> None:
    h, alice, call = established()
    h.ua.refer(call.call, "sip:agent@pbx.example.com", h.now)
    (data,) = h.out()
    refer = parse_request(data)
    assert refer.method == "REFER"
    assert refer.headers.get("Refer-To") == "<sip:agent@pbx.example.com>"
    assert refer.headers.get("Referred-By") == "Bob <sip:bob@biloxi.example.com>"
    h.send(respond(refer, 202, "Accepted"))
    assert h.events() == [ReferProgress(call.call, 202, "Accepted")]
    assert statuses(h.send(_notify(alice, b"SIP/2.0 100 Trying\r\n", "active;expires=60"))) == [200]
    assert h.events() == [ReferProgress(call.call, 100, "Trying")]
    h.send(_notify(alice, b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource"))
    assert h.events() == [ReferDone(call.call, True, 200, "OK")]


def test_refer_failure_keeps_the_call() -> None:
    h, alice, call = established()
    h.ua.refer(call.call, "sip:agent@pbx.example.com", h.now)
    (data,) = h.out()
    h.send(respond(parse_request(data), 202, "Accepted"))
    h.events()
    h.send(_notify(alice, b"SIP/2.0 486 Busy Here\r\n", "terminated"))
    assert h.events() == [ReferDone(call.call, False, 486, "Busy Here")]
    # The call goes on: another transfer may be tried, and BYE still works.
    h.ua.refer(call.call, "sip:other@pbx.example.com", h.now)
    (data,) = h.out()
    h.send(respond(parse_request(data), 403, "Forbidden"))
    assert h.events() == [ReferDone(call.call, False, 403, "Forbidden")]


def test_refer_timeout_is_408() -> None:
    h, alice, call = established()
    h.ua.refer(call.call, "sip:agent@pbx.example.com", h.now)
    h.out()
    sent = h.advance_to(h.now + 40)
    # Timer E: 0.5, 1, 2, 4, 4, ... then Timer F at 64*T1.
    assert [round(w - sent[0][0] + 0.5, 3) for w, _ in sent[:5]] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert h.events() == [ReferDone(call.call, False, 408, "Request Timeout")]


def test_notify_without_refer_is_481() -> None:
    h, alice, call = established()
    assert statuses(h.send(_notify(alice, b"SIP/2.0 200 OK\r\n", "terminated"))) == [481]


def test_tcp_framing_error_closes_the_connection() -> None:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    bad = Uac().invite().replace(b"Content-Length: ", b"Content-Length: -")
    ua.receive(bad, ("192.0.2.101", 40000), "tcp", 0.0)
    assert ua.connections_to_close() == [("192.0.2.101", 40000)]
    assert statuses([d for d, _ in ua.data_to_send()]) == [400]
    # A fresh connection from the same peer starts clean.
    ua.receive(Uac().invite(), ("192.0.2.101", 40000), "tcp", 0.0)
    assert statuses([d for d, _ in ua.data_to_send()]) == [100]


def test_tcp_two_messages_in_one_chunk_and_keepalive() -> None:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    a, b = Uac(call_id="a"), Uac(call_id="b")
    next(b.branches)
    ua.receive(b"\r\n\r\n", ("192.0.2.101", 40000), "tcp", 0.0)
    assert ua.data_to_send() == [(b"\r\n", ("192.0.2.101", 40000))]
    ua.receive(a.invite() + b.invite(), ("192.0.2.101", 40000), "tcp", 0.0)
    assert statuses([d for d, _ in ua.data_to_send()]) == [100, 100]
    assert len(ua.events()) == 2


def test_receive_never_raises_on_garbage() -> None:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    for junk in (b"\x00\xff" * 10, b"INVITE", b"SIP/2.0 200\r\n\r\n", b"\r\n",
                 b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n"):
        ua.receive(junk, ALICE, "udp", 0.0)
        ua.receive(junk, ALICE, "tcp", 0.0)
    assert ua.events() == []


def test_each_call_advertises_the_local_host_its_invite_arrived_on() -> None:
    """A wildcard-bound adapter passes the address each request reached: a call keeps it
    in its Contact, the SDP built from the event, re-INVITE answers and the Via and
    Contact of requests we send in it; without one, the configured host is used."""
    h = UasHarness()
    lan, vpn = "10.0.0.5", "192.168.1.20"
    calls: list[tuple[Uac, IncomingCall, str]] = []
    for n, local in enumerate((lan, vpn, None), start=1):
        alice = Uac(call_id=f"call-{n}", from_tag=f"tag-{n}",
                    branches=itertools.count(100 * n))
        h.ua.receive(alice.invite(), ALICE, "udp", h.now, local_host=local)
        h.out()
        call = h.incoming()
        assert call.local_host == (local or BOB[0])
        calls.append((alice, call, call.local_host))
    for alice, call, host in calls:
        assert call.offer is not None
        sdp, media = answer_offer(call.offer, address=call.local_host, port=3456,
                                  session_id="1", session_version=1)
        h.ua.answer(call.call, sdp, h.now, media)
        (data,) = h.out()
        ok = parse_response(data)
        assert ok.headers.get("Contact") == f"<sip:{host}:{BOB[1]}>"
        assert f"c=IN IP4 {host}\r\n".encode() in ok.body
        h.send(alice.ack(ok))
    assert {e.call for e in h.events() if isinstance(e, CallEstablished)} == {
        c.call for _, c, _ in calls}
    # A re-INVITE keeps the call's address (its own arrival address is not asked for).
    alice, call, host = calls[0]
    (trying, reok) = h.send(alice.in_dialog("INVITE", ALICE_SDP))
    reanswer = parse_response(reok)
    assert reanswer.headers.get("Contact") == f"<sip:{lan}:{BOB[1]}>"
    assert f"c=IN IP4 {lan}\r\n".encode() in reanswer.body
    # Requests we originate: the Via sent-by and Contact carry that call's address.
    for _alice, call, host in calls[1:]:
        h.ua.bye(call.call, h.now)
        (data,) = h.out()
        bye = parse_request(data)
        assert bye.method == "BYE"
        assert bye.via[0].host == host and bye.via[0].port == BOB[1]
        assert bye.headers.get("Contact") == f"<sip:{host}:{BOB[1]}>"
