"""RFC 3665 basic call flows, UAC <-> UAS in memory on a virtual clock.

The UAC is a minimal sans-I/O driver written for these tests (``Uac``, with Bob's side as
``UasHarness``, in tests/support/sip_peers.py): it builds requests the way RFC 3665's Alice
does and parses what the UAS sends back. The clock is a float we move by
hand; every timer value asserted here is exact.
"""

from __future__ import annotations

from bridge.sip.message import Response, parse_message, parse_request, parse_response
from bridge.sip.sdp import parse_sdp
from bridge.sip.ua import (
    ByeReceived,
    CallCancelled,
    CallEnded,
    CallEstablished,
    CallKey,
)
from tests.support.sip_peers import ALICE_SDP, Uac, UasHarness, respond, statuses

# ----------------------------------------------------------------------- §2.1 success

EXPECTED_100 = (
    b"SIP/2.0 100 Trying\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf1\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Server: voicebridge/test\r\n"
    b"Content-Length: 0\r\n\r\n")

EXPECTED_180 = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf1\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=t1\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:192.0.2.200:5060>\r\n"
    b"Server: voicebridge/test\r\n"
    b"Content-Length: 0\r\n\r\n")

EXPECTED_200_SDP = (
    b"v=0\r\n"
    b"o=voicebridge 1111 1 IN IP4 192.0.2.200\r\n"
    b"s=voicebridge\r\n"
    b"c=IN IP4 192.0.2.200\r\n"
    b"t=0 0\r\n"
    b"m=audio 3456 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n")


def test_successful_session_2_1() -> None:
    h = UasHarness()
    alice = Uac()
    # F1 INVITE -> 100 Trying at once (§17.2.1).
    assert h.send(alice.invite()) == [EXPECTED_100]
    call = h.incoming()
    assert (call.caller, call.called) == ("alice", "bob")
    # F2 180 Ringing: our tag and Contact.
    h.ua.ringing(call.call, h.now)
    assert h.out() == [EXPECTED_180]
    # F3 200 OK with our answer.
    ok = h.answer(call)
    assert ok.serialize() == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf1\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
        "To: Bob <sip:bob@biloxi.example.com>;tag=t1\r\n"
        "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:192.0.2.200:5060>\r\n"
        "Server: voicebridge/test\r\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE, PRACK\r\n"
        "Accept: application/sdp\r\n"
        "Accept-Encoding: identity\r\n"
        "Accept-Language: en\r\n"
        "Supported: timer, 100rel\r\n"
        # RFC 4028: Alice does not know timers, so we refresh (by re-INVITE: no UPDATE in
        # her Allow), every 900 s.
        "Session-Expires: 1800;refresher=uas\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(EXPECTED_200_SDP)}\r\n\r\n").encode() + EXPECTED_200_SDP
    # F4 ACK -> established; the 2xx is no longer retransmitted.
    h.now = 0.2
    assert h.send(alice.ack(ok)) == []
    assert h.events() == [CallEstablished(call.call)]
    assert [when for when, _ in h.advance_to(40.0)] == []
    # F5/F6: BYE from our side, 200 from Alice.
    h.ua.bye(call.call, h.now)
    (bye_data,) = h.out()
    bye = parse_request(bye_data)
    assert bye.start_line == "BYE sip:alice@client.atlanta.example.com SIP/2.0"
    assert bye.headers.get("From") == "Bob <sip:bob@biloxi.example.com>;tag=t1"
    assert bye.headers.get("To") == "Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl"
    assert str(bye.cseq) == "1 BYE"
    assert bye.headers.get("Route") is None
    assert h.events() == [CallEnded(call.call, "hung up")]
    assert h.send(respond(bye, 200, "OK")) == []
    # Nothing left: the transactions linger (Timer K) then everything is forgotten.
    h.advance_to(100.0)
    assert h.ua.get_timer() is None
    assert h.ua.calls == {}


def test_bye_from_the_caller_2_2() -> None:
    """§2.2's shape (through a proxy that record-routes), BYE from the other side."""
    h = UasHarness()
    alice = Uac()
    rr = "Record-Route: <sip:ss1.atlanta.example.com;lr>"
    h.send(alice.invite(extra=(rr,)))
    call = h.incoming()
    ok = h.answer(call)
    assert ok.headers.get("Record-Route") == "<sip:ss1.atlanta.example.com;lr>"
    h.send(alice.ack(ok))
    assert isinstance(h.events()[0], CallEstablished)
    bye = alice.in_dialog("BYE")
    sent = h.send(bye)
    assert statuses(sent) == [200]
    assert h.events() == [ByeReceived(call.call)]
    # A retransmitted BYE gets the same 200 again (Timer J), and nothing else happens.
    assert h.send(bye) == sent
    assert h.events() == []
    # Our own BYE is impossible now.
    h.ua.bye(call.call, h.now)
    assert h.out() == []


def test_our_bye_follows_the_route_set() -> None:
    h = UasHarness(symmetric_requests=False)
    alice = Uac()
    h.send(alice.invite(extra=("Record-Route: <sip:p2.example.com;lr>",
                               "Record-Route: <sip:p1.example.com:5070;lr>")))
    call = h.incoming()
    ok = h.answer(call)
    h.send(alice.ack(ok))
    h.events()
    h.ua.bye(call.call, h.now)
    ((data, addr),) = h.ua.datagrams_to_send()
    bye = parse_request(data)
    # §12.2.1.1, loose routing: Request-URI is the remote target, Route is the route set.
    assert str(bye.uri) == "sip:alice@client.atlanta.example.com"
    assert bye.headers.get_lines("Route") == ["<sip:p2.example.com;lr>",
                                              "<sip:p1.example.com:5070;lr>"]
    assert addr == ("p2.example.com", 5060)


# ------------------------------------------------------------ 2xx retransmission timers

def test_200_retransmitted_until_ack() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    ok = h.answer(call)
    sent = h.advance_to(10.0)
    # §13.3.1.4: T1, then doubling: intervals 0.5, 1, 2, 4, 4 ... (T2 cap).
    assert [when for when, _ in sent] == [0.5, 1.5, 3.5, 7.5]
    assert all(d == ok.serialize() for _, d in sent)
    h.send(alice.ack(ok))
    assert isinstance(h.events()[0], CallEstablished)
    assert h.advance_to(31.9) == []


def test_no_ack_timer_h_then_bye() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    ok = h.answer(call)
    sent = h.advance_to(32.0)
    retransmit_times = [when for when, d in sent if d == ok.serialize()]
    assert retransmit_times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    # 64*T1 = 32 s without ACK: the session is ended with a BYE (§13.3.1.4).
    byes = [(when, parse_request(d)) for when, d in sent if d.startswith(b"BYE ")]
    assert [when for when, _ in byes] == [32.0]
    assert h.events() == [CallEnded(call.call, "no ACK")]
    # The BYE is itself retransmitted (Timer E) until Alice answers.
    again = h.advance_to(34.0)
    assert [when for when, _ in again] == [32.5, 33.5]
    h.send(respond(byes[0][1], 200, "OK"))
    assert h.advance_to(50.0) == []


def test_bye_waits_for_the_ack() -> None:
    """§15: no BYE before the ACK for our 2xx; it goes out when the ACK arrives."""
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    ok = h.answer(call)
    h.ua.bye(call.call, h.now)
    assert h.out() == []
    h.now = 0.3
    sent = h.send(alice.ack(ok))
    assert [d.split(b" ", 1)[0] for d in sent] == [b"BYE"]
    assert [type(e) for e in h.events()] == [CallEstablished, CallEnded]


# ------------------------------------------------------------------ CANCEL and rejects

def test_cancel_before_answer() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    h.ua.ringing(call.call, h.now)
    h.out()
    h.now = 1.0
    sent = h.send(alice.cancel())
    cancel_ok, terminated = (parse_response(d) for d in sent)
    assert (cancel_ok.status, cancel_ok.cseq.method) == (200, "CANCEL")
    assert (terminated.status, terminated.cseq.method) == (487, "INVITE")
    assert terminated.to.tag == "t1"  # the tag of the early dialog
    assert h.events() == [CallCancelled(call.call)]
    # Alice ACKs the 487 in the INVITE transaction: no more 487 retransmissions.
    h.now = 1.1
    assert h.send(alice.ack(terminated)) == []
    assert h.advance_to(40.0) == []
    assert h.ua.calls == {}


def test_cancel_of_unknown_invite_is_481() -> None:
    h = UasHarness()
    alice = Uac()
    alice.invite()
    assert statuses(h.send(alice.cancel())) == [481]


def test_busy_reject_timer_g_and_h() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    h.ua.reject(call.call, 486, h.now)
    (busy_data,) = h.out()
    busy = parse_response(busy_data)
    assert (busy.status, busy.reason) == (486, "Busy Here")
    sent = h.advance_to(40.0)
    # Timer G: T1 doubling to T2; Timer H gives up at 64*T1 = 32 s.
    assert [when for when, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5,
                                         27.5, 31.5]
    assert h.ua.get_timer() is None
    assert h.ua.calls == {}


def test_reject_acked_then_timer_i() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    h.ua.reject(call.call, 603, h.now, reason="Decline", headers=(("Retry-After", "60"),))
    (data,) = h.out()
    decline = parse_response(data)
    assert decline.headers.get("Retry-After") == "60"
    h.now = 0.7
    retrans = h.advance_to(0.7)
    assert [w for w, _ in retrans] == [0.5]
    assert h.send(alice.ack(decline)) == []
    # CONFIRMED absorbs ACK retransmissions; Timer I (T4 = 5 s) ends it.
    assert h.send(alice.ack(decline)) == []
    assert h.ua.get_timer() == 5.7
    h.advance_to(6.0)
    assert h.ua.get_timer() is None


def test_retransmitted_invite_gets_last_response() -> None:
    h = UasHarness()
    alice = Uac()
    invite = alice.invite()
    assert h.send(invite) == [EXPECTED_100]
    call = h.incoming()
    assert h.send(invite) == [EXPECTED_100]
    h.ua.ringing(call.call, h.now)
    h.out()
    assert h.send(invite) == [EXPECTED_180]
    assert h.events() == []


def test_tcp_final_not_retransmitted() -> None:
    """§17.2.1: Timer G runs on unreliable transports only; Timer I is zero on TCP."""
    h = UasHarness()
    alice = Uac()
    data = alice.invite()
    for i in range(0, len(data), 7):
        h.ua.receive(data[i:i + 7], ("192.0.2.101", 40000), "tcp", 0.0)
    out = h.ua.data_to_send()
    assert statuses([d for d, _ in out]) == [100]
    assert out[0][1] == ("192.0.2.101", 40000)
    call = h.incoming()
    h.ua.reject(call.call, 486, 0.0)
    (busy, _), = h.ua.data_to_send()
    h.advance_to(10.0)
    assert h.ua.data_to_send() == []
    h.ua.receive(alice.ack(parse_response(busy)), ("192.0.2.101", 40000), "tcp", 10.0)
    h.advance_to(10.0)
    assert h.ua.get_timer() is None


def test_reinvite_retransmission_and_glare() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    ok = h.answer(call)
    h.send(alice.ack(ok))
    h.events()
    reinvite = alice.in_dialog("INVITE", ALICE_SDP.replace(b"o=alice 2890844526 2890844526",
                                                          b"o=alice 2890844526 2890844527"))
    first = statuses(h.send(reinvite))
    assert first == [100, 200]
    # A second re-INVITE while the first awaits its ACK: 500 with Retry-After (§14.2).
    second = h.send(alice.in_dialog("INVITE", ALICE_SDP))
    assert statuses(second) == [100, 500]
    assert parse_response(second[1]).headers.get("Retry-After") is not None


def test_request_for_unknown_dialog_is_481() -> None:
    h = UasHarness()
    alice = Uac()
    alice.remote_tag = "nosuchtag"
    assert statuses(h.send(alice.in_dialog("BYE"))) == [481]
    assert statuses(h.send(alice.in_dialog("INFO"))) == [481]


def test_message_parsers_agree_with_what_we_send() -> None:
    """Everything the UAS wrote in these flows parses back with our own parser."""
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    h.ua.ringing(call.call, h.now)
    h.out()
    h.answer(call)
    h.advance_to(5.0)
    for _when, data in h.log:
        assert isinstance(parse_message(data), Response)
    sdp = parse_sdp(parse_response(h.log[-1][1]).body)
    assert sdp.media[0].port == 3456
    assert isinstance(call.call, str) and CallKey(call.call) == call.call
