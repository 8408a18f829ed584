"""Session timers (RFC 4028), UPDATE (RFC 3311) and PRACK (RFC 3262) in the UAS core, on
the virtual clock; the Session-Expires, Min-SE and RAck parsers, fuzzed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import settings_from_mapping
from bridge.errors import ConfigError, SipParseError
from bridge.sip.message import Response, parse_message, parse_response
from bridge.sip.sdp import answer_offer
from bridge.sip.session_timer import (
    ReliableProvisional,
    SessionExpires,
    parse_min_se,
    parse_rack,
    parse_session_expires,
)
from bridge.sip.ua import ByeReceived, CallEnded, CallEstablished, MediaUpdated
from tests.support.sip_peers import ALICE_SDP, BOB, Uac, UasHarness, respond, statuses

ALLOW_UPDATE = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"
TIMER = ("Supported: timer", "Session-Expires: 120;refresher=uac", ALLOW_UPDATE)


def _established(extra: tuple[str, ...] = TIMER, **config: object
                 ) -> tuple[UasHarness, Uac, Response, float]:
    """A call set up with ``extra`` in the INVITE: also our 2xx, and when it went out."""
    h = UasHarness(**config)
    alice = Uac()
    h.send(alice.invite(extra=extra))
    call = h.incoming()
    ok = h.answer(call)
    h.send(alice.ack(ok))
    assert any(isinstance(e, CallEstablished) for e in h.events())
    return h, alice, ok, h.now


# --------------------------------------------------------------------------- parsers

def test_session_expires_and_min_se_parse() -> None:
    assert parse_session_expires("1800") == SessionExpires(1800, None)
    assert parse_session_expires(" 90 ; refresher = UAS ;x=1") == SessionExpires(90, "uas")
    assert str(SessionExpires(90, "uac")) == "90;refresher=uac"
    assert parse_min_se("90;foo") == 90
    assert parse_rack("776656 1 INVITE") == (776656, 1, "INVITE")
    # The compact form of Session-Expires is "x" (RFC 4028 §4).
    request = parse_message(Uac().invite(extra=("x: 300;refresher=uac",)))
    assert parse_session_expires(request.headers.get("Session-Expires") or "").interval == 300


def test_malformed_values_raise_400() -> None:
    for text in ("", "abc", "-5", "1.5", "99999999999", "90;refresher=both", "90;;",
                 "90 91", "٣"):
        try:
            parse_session_expires(text)
        except SipParseError as exc:
            assert exc.status == 400
        else:
            raise AssertionError(f"{text!r} parsed")
    for text in ("", "x", "90 ;", "4294967296"):
        try:
            parse_min_se(text)
        except SipParseError as exc:
            assert exc.status == 400
        else:
            raise AssertionError(f"{text!r} parsed")


HEADER_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda n, tail: f"{n}{tail}", st.integers(-5, 2 ** 33),
              st.sampled_from(["", ";refresher=uac", ";refresher=UAS", ";refresher=",
                               ";refresher", ";;", ";a=\"b\"", " ;x", ",5", ";r=[::1]"])))


FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(HEADER_TEXT)
def test_fuzz_session_timer_parsers_raise_only_sip_parse_error(text: str) -> None:
    for parse in (parse_session_expires, parse_min_se, parse_rack):
        try:
            value = parse(text)
        except SipParseError as exc:
            assert exc.status == 400
            continue
        if isinstance(value, SessionExpires):
            assert 0 <= value.interval < 2 ** 32 and value.refresher in (None, "uac", "uas")
            assert parse_session_expires(str(value)) == value


@FUZZ
@given(HEADER_TEXT, HEADER_TEXT)
def test_fuzz_the_core_answers_any_timer_fields(se: str, min_se: str) -> None:
    """Whatever the INVITE's Session-Expires and Min-SE, the core answers (400, 422, or
    the call goes ahead) and never raises."""
    h = UasHarness(session_expires_s=100, min_se_s=90)
    se, min_se = (v.replace("\r", " ").replace("\n", " ") for v in (se, min_se))
    out = h.send(Uac().invite(extra=(f"Session-Expires: {se}", f"Min-SE: {min_se}")))
    codes = statuses(out)
    assert codes[0] in (100, 400, 422)
    if 422 in codes:
        assert parse_response(out[-1]).headers.get("Min-SE") == "90"


# ------------------------------------------------------------------------ negotiation

def test_settings_refuse_a_min_se_outside_1_to_session_expires() -> None:
    for sip in ({"min_se_s": 0}, {"min_se_s": 100, "session_expires_s": 90}):
        with pytest.raises(ConfigError, match=r"\[sip\] min_se_s: must be from 1"):
            settings_from_mapping({"sip": sip}, env={})
    lab = settings_from_mapping({}, env={"VOICEBRIDGE_SIP_SESSION_EXPIRES_S": "6",
                                         "VOICEBRIDGE_SIP_MIN_SE_S": "3"})
    assert (lab.sip.session_expires_s, lab.sip.min_se_s) == (6, 3)


def test_too_short_is_422_with_our_min_se_and_malformed_is_400() -> None:
    h = UasHarness(min_se_s=90)
    out = h.send(Uac().invite(extra=("Supported: timer", "Session-Expires: 60")))
    response = parse_response(out[-1])
    assert response.status == 422 and response.reason == "Session Interval Too Small"
    assert response.headers.get("Min-SE") == "90"
    assert not h.events()                           # no call was offered
    other = Uac(call_id="other", branches=itertools.count(50))
    out = h.send(other.invite(extra=("Session-Expires: soon",)))
    assert parse_response(out[-1]).status == 400


def test_caller_refresher_without_refresh_gets_bye_before_expiry() -> None:
    h, alice, ok, answered = _established()
    assert ok.headers.get("Session-Expires") == "120;refresher=uac"
    assert "timer" in ok.option_tags("Require")
    # RFC 4028 §10: BYE at 120 - min(32, 40) = 88 s after the 2xx.
    assert not [d for _, d in h.advance_to(answered + 87.9) if d.startswith(b"BYE")]
    sent = h.advance_to(answered + 88.1)
    assert [t for t, d in sent if d.startswith(b"BYE")][0] == answered + 88
    assert [e.reason for e in h.events() if isinstance(e, CallEnded)] == ["session-expired"]


def test_refresh_by_reinvite_or_update_restarts_the_timer() -> None:
    h, alice, _, answered = _established()
    h.advance_to(answered + 60)
    out = h.send(alice.in_dialog("INVITE", ALICE_SDP, TIMER))
    ok = parse_response(out[-1])
    assert ok.status == 200 and ok.headers.get("Session-Expires") == "120;refresher=uac"
    h.send(alice.ack(ok))
    h.advance_to(answered + 120)
    out = h.send(alice.in_dialog("UPDATE", extra=TIMER))
    update_ok = parse_response(out[-1])
    assert update_ok.status == 200 and not update_ok.body
    assert update_ok.headers.get("Session-Expires") == "120;refresher=uac"
    sent = h.advance_to(answered + 300)
    assert [t for t, d in sent if d.startswith(b"BYE")][0] == answered + 120 + 88


def test_update_with_an_offer_is_answered_like_a_reinvite() -> None:
    h, alice, _, _ = _established()
    offer = ALICE_SDP.replace(b"2890844526 IN", b"2890844527 IN") + b"a=sendonly\r\n"
    out = h.send(alice.in_dialog("UPDATE", offer, TIMER))
    ok = parse_response(out[-1])
    assert ok.status == 200 and b"a=recvonly" in ok.body and b" 2 IN IP4" in ok.body
    assert any(isinstance(e, MediaUpdated) for e in h.events())


def test_update_offer_during_our_pending_offer_is_491() -> None:
    h, alice, _, _ = _established()
    out = h.send(alice.in_dialog("INVITE", b"", TIMER))        # asks for our offer
    reinvite_ok = parse_response(out[-1])
    assert reinvite_ok.status == 200
    out = h.send(alice.in_dialog("UPDATE", ALICE_SDP, TIMER))
    assert statuses(out) == [491]


def test_update_outside_a_dialog_is_481() -> None:
    h = UasHarness()
    out = h.send(Uac().invite().replace(b"INVITE", b"UPDATE"))
    assert statuses(out) == [481]


def test_we_refresh_with_update_when_the_caller_lacks_timer() -> None:
    h, alice, ok, answered = _established((ALLOW_UPDATE,), session_expires_s=100,
                                          min_se_s=90)
    assert ok.headers.get("Session-Expires") == "100;refresher=uas"
    assert "Require" not in ok.headers                 # the caller does not know timer
    sent = h.advance_to(answered + 50.5)
    [(at, data), (again, _)] = [(t, d) for t, d in sent if d.startswith(b"UPDATE")]
    assert at == answered + 50                          # half the interval
    assert again == at + 0.5                            # Timer E until it is answered
    update = parse_message(data)
    assert update.headers.get("Session-Expires") == "100;refresher=uac"
    h.send(respond(update, 200, "OK"))               # Alice answers without a timer
    sent = h.advance_to(answered + 101)
    assert [t for t, d in sent if d.startswith(b"UPDATE")][0] == answered + 100.5
    # That refresh is never answered: the session refreshed at 50.5 s is ended before it
    # expires (100 - 32 s later), before the UPDATE's own Timer F (at 132.5 s).
    sent = h.advance_to(answered + 200)
    byes = [t for t, d in sent if d.startswith(b"BYE")]
    assert byes and byes[0] == answered + 50.5 + 100 - 32
    assert [e.reason for e in h.events() if isinstance(e, CallEnded)] == ["session-expired"]


def test_a_caller_that_names_us_the_refresher_gets_refreshed() -> None:
    h, _, ok, answered = _established(
        ("Supported: timer", "Session-Expires: 120;refresher=uas", ALLOW_UPDATE))
    assert ok.headers.get("Session-Expires") == "120;refresher=uas"
    assert "timer" in ok.option_tags("Require")
    sent = h.advance_to(answered + 60)
    assert [t for t, d in sent if d.startswith(b"UPDATE")] == [answered + 60]


def test_we_refresh_with_reinvite_when_the_caller_allows_no_update() -> None:
    """RFC 4028 §7.4: the same SDP (same version: nothing changed) in a re-INVITE; its 2xx
    is ACKed (retransmissions too) and restarts the timer."""
    h, alice, ok, answered = _established((), session_expires_s=100, min_se_s=90)
    assert ok.headers.get("Session-Expires") == "100;refresher=uas"
    sent = h.advance_to(answered + 50)
    [(at, data)] = [(t, d) for t, d in sent if d.startswith(b"INVITE")]
    assert at == answered + 50
    reinvite = parse_message(data)
    assert reinvite.body == ok.body                   # our SDP as it was, same o= version
    assert reinvite.headers.get("Session-Expires") == "100;refresher=uac"
    assert reinvite.from_.tag == ok.to.tag and reinvite.to.tag == alice.from_tag
    h.advance_to(answered + 50.2)
    reply = respond(reinvite, 200, "OK").replace(
        b"Content-Length: 0", b"Content-Type: application/sdp\r\nContent-Length: "
        + str(len(ALICE_SDP)).encode()) + ALICE_SDP
    (ack,) = h.send(reply)
    assert ack.startswith(b"ACK ") and b"CSeq: 1 ACK" in ack
    assert h.send(reply) == [ack]                     # a retransmitted 2xx: the same ACK
    sent = h.advance_to(answered + 101)
    assert [t for t, d in sent if d.startswith(b"INVITE")][0] == answered + 100.2
    assert not [d for _, d in sent if d.startswith(b"BYE")]


def test_our_update_answered_422_is_sent_again_with_its_min_se_and_481_hangs_up() -> None:
    h, _, _, answered = _established((ALLOW_UPDATE,), session_expires_s=100, min_se_s=90)
    [data] = [d for _, d in h.advance_to(answered + 50) if d.startswith(b"UPDATE")]
    update = parse_message(data)
    too_small = respond(update, 422, "Session Interval Too Small").replace(
        b"Content-Length: 0", b"Min-SE: 300\r\nContent-Length: 0")
    (again,) = h.send(too_small)
    retry = parse_message(again)
    assert retry.method == "UPDATE" and retry.cseq.seq == update.cseq.seq + 1
    assert retry.headers.get("Session-Expires") == "300;refresher=uac"
    # RFC 3261 §12.2.1.2: a 481 to a request inside the dialog: the dialog is gone.
    (bye,) = h.send(respond(retry, 481, "Call/Transaction Does Not Exist"))
    assert bye.startswith(b"BYE ")
    assert [e.reason for e in h.events() if isinstance(e, CallEnded)] == ["session-expired"]


def test_a_refresh_below_our_min_se_is_422_and_the_call_goes_on() -> None:
    h, alice, _, answered = _established()
    out = h.send(alice.in_dialog("UPDATE", extra=("Session-Expires: 10",)))
    assert statuses(out) == [422] and parse_response(out[0]).headers.get("Min-SE") == "90"
    # The timer set by the INVITE still runs: BYE 88 s after the answer.
    sent = h.advance_to(answered + 89)
    assert [t for t, d in sent if d.startswith(b"BYE")][0] == answered + 88


def test_our_reinvite_refused_491_lets_the_session_expire() -> None:
    h, _, _, answered = _established((), session_expires_s=100, min_se_s=90)
    [data] = [d for _, d in h.advance_to(answered + 50) if d.startswith(b"INVITE")]
    reinvite = parse_message(data)
    (ack,) = h.send(respond(reinvite, 491, "Request Pending"))
    assert ack.startswith(b"ACK ") and b"branch=" + reinvite.via[0].branch.encode() in ack
    sent = h.advance_to(answered + 100)
    assert [t for t, d in sent if d.startswith(b"BYE")][0] == answered + 100 - 32


# ---------------------------------------------------------------------------- PRACK

def test_required_100rel_ringing_is_reliable_and_the_2xx_waits_for_prack() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite(extra=("Require: 100rel",)))
    call = h.incoming()
    h.ua.ringing(call.call, h.now)
    (ringing,) = [parse_response(d) for d in h.out()]
    assert ringing.status == 180 and "100rel" in ringing.option_tags("Require")
    rseq = int(ringing.headers.get("RSeq") or "0")
    assert 1 <= rseq < 2 ** 31
    assert call.offer is not None
    sdp, media = answer_offer(call.offer, address=BOB[0], port=3456, session_id="1",
                              session_version=1)
    h.ua.answer(call.call, sdp, h.now, media)
    assert h.out() == []                                 # held until the PRACK
    # Retransmitted at T1, 2*T1 ...
    sent = h.advance_to(1.6)
    assert [t for t, _ in sent] == [0.5, 1.5]
    alice.remote_tag = ringing.to.tag
    out = h.send(alice.in_dialog("PRACK", extra=(f"RAck: {rseq} 1 INVITE",)))
    assert statuses(out) == [200, 200]
    assert parse_response(out[1]).cseq.method == "INVITE"
    # Another PRACK for it matches nothing now.
    assert statuses(h.send(alice.in_dialog("PRACK", extra=(f"RAck: {rseq} 1 INVITE",)))) \
        == [481]


def test_each_reliable_provisional_counts_rseq_up_by_one() -> None:
    rel = ReliableProvisional(0.5, first_rseq=7)
    first = rel.headers()
    rel.sent(parse_response(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
                            b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\n"
                            b"Call-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"), 0.0)
    assert not rel.acknowledge((7, 2, "INVITE"), 1)          # another INVITE's CSeq
    assert rel.acknowledge((7, 1, "INVITE"), 1) and not rel.waiting
    assert first.get("RSeq") == "7" and rel.headers().get("RSeq") == "8"


def test_hanging_up_while_the_2xx_waits_for_the_prack_is_480() -> None:
    h = UasHarness()
    h.send(Uac().invite(extra=("Require: 100rel",)))
    call = h.incoming()
    h.ua.ringing(call.call, h.now)
    h.out()
    assert call.offer is not None
    sdp, media = answer_offer(call.offer, address=BOB[0], port=3456, session_id="1",
                              session_version=1)
    h.ua.answer(call.call, sdp, h.now, media)
    h.ua.bye(call.call, h.now)
    assert statuses(h.out()) == [480]
    assert h.ua.calls[call.call].value == "ended"
    # Nothing more but the 480's own retransmissions (Timer G): no 180, no 200.
    assert set(statuses([d for _, d in h.advance_to(40)])) == {480}
    assert h.ua.get_timer() is None


def test_no_prack_is_500_after_64_t1() -> None:
    h = UasHarness()
    alice = Uac()
    h.send(alice.invite(extra=("Supported: 100rel", "Require: 100rel")))
    call = h.incoming()
    h.ua.ringing(call.call, h.now)
    h.out()
    sent = h.advance_to(40)
    finals = [(t, parse_response(d).status) for t, d in sent
              if parse_response(d).status >= 200]
    assert finals[0] == (32.0, 500)
    assert [e.reason for e in h.events() if isinstance(e, CallEnded)] == ["no PRACK"]


def test_supported_100rel_alone_keeps_provisionals_unreliable() -> None:
    h = UasHarness()
    h.send(Uac().invite(extra=("Supported: 100rel",)))
    call = h.incoming()
    h.ua.ringing(call.call, h.now)
    (ringing,) = [parse_response(d) for d in h.out()]
    assert "RSeq" not in ringing.headers and "Require" not in ringing.headers


def test_require_we_lack_is_420_listing_only_those() -> None:
    h = UasHarness()
    out = h.send(Uac().invite(extra=("Require: timer, foo", "Require: 100rel, bar")))
    response = parse_response(out[-1])
    assert response.status == 420 and response.headers.get("Unsupported") == "foo, bar"


def test_bye_from_caller_still_ends_a_timed_call() -> None:
    h, alice, _, answered = _established()
    h.send(alice.in_dialog("BYE"))
    assert any(isinstance(e, ByeReceived) for e in h.events())
    assert not [d for _, d in h.advance_to(answered + 500) if d.startswith(b"BYE")]
