"""A 401/407 to the bridge's own session refresh (RFC 4028 §7.4), sans-I/O on the virtual
clock: the refreshing UPDATE is sent again with credentials like a REFER or BYE, and a
challenged re-INVITE is ACKed in its transaction (RFC 3261 §17.1.1.3) and followed by a
new re-INVITE, next CSeq, with credentials (§22.2). Either way the refresh then counts:
the session timer restarts and the call stays up."""

from __future__ import annotations

from bridge.sip import digest
from bridge.sip.events import CallKey, Challenged
from bridge.sip.lines import Trunk
from bridge.sip.message import Request, parse_request
from bridge.sip.settings import SipSettings
from bridge.sip.trunkauth import TrunkAuth
from bridge.sip.trunkcalls import call_credentials
from bridge.sip.ua import CallEnded, CallEstablished, UserAgent
from tests.support.sip_peers import ALICE_SDP, BOB, CountingIds, Uac, UasHarness, respond

PBX = Trunk(name="pbx", match=("192.0.2.0/24",), auth_user="bridge",
            password_env="PBX_PASSWORD", realm="pbx.example.com")
PASSWORD = "s3cret-pbx"
ALLOW_UPDATE = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"
#: Session-Expires 100 s, we refresh at half of it; the BYE comes 32 s before expiry.
EXPIRES, HALF, BYE_BEFORE = 100, 50, 32


def _established(extra: tuple[str, ...], *, password: str | None = PASSWORD
                 ) -> tuple[UasHarness, float, CallKey]:
    """A call from the PBX trunk whose INVITE lacks ``timer``: we are the refresher."""
    h = UasHarness()
    auth = TrunkAuth((PBX,), {"pbx": password} if password else {})
    h.ua = UserAgent(SipSettings(user_agent="voicebridge/test", trunks=(PBX,),
                                 session_expires_s=EXPIRES, min_se_s=90),
                     host=BOB[0], port=BOB[1], ids=CountingIds(),
                     credentials=call_credentials((PBX,), auth if password else None))
    alice = Uac()
    h.send(alice.invite(extra=extra))
    call = h.incoming()
    ok = h.answer(call)
    assert ok.headers.get("Session-Expires") == f"{EXPIRES};refresher=uas"
    h.send(alice.ack(ok))
    assert isinstance(h.events()[0], CallEstablished)
    return h, h.now, call.call


def _first(sent: list[tuple[float, bytes]], method: str) -> Request:
    return parse_request(next(d for _, d in sent if d.startswith(method.encode() + b" ")))


def _challenge(request: Request, status: int, *, nonce: str = "n0nce") -> bytes:
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    text = respond(request, status, "Unauthorized" if status == 401 else
                   "Proxy Authentication Required", to_tag="alice-tag").decode()
    value = f'Digest realm="pbx.example.com", nonce="{nonce}", algorithm=MD5, qop="auth"'
    return text.replace("Content-Length: 0", f"{header}: {value}\r\nContent-Length: 0").encode()


def _check(request: Request, header: str, *, nc: int, method: str | None = None) -> None:
    creds = digest.parse_credentials(request.headers.get(header) or "")
    assert creds.username == "bridge" and creds.nc == f"{nc:08x}"
    assert digest.verify(creds, method=method or request.method, password=PASSWORD)


def _ok_with_sdp(request: Request) -> bytes:
    return respond(request, 200, "OK").replace(
        b"Content-Length: 0", b"Content-Type: application/sdp\r\nContent-Length: "
        + str(len(ALICE_SDP)).encode()) + ALICE_SDP


def test_refreshing_update_challenged_401_is_resent_and_restarts_the_timer() -> None:
    h, answered, key = _established((ALLOW_UPDATE,))
    update = _first(h.advance_to(answered + HALF), "UPDATE")
    assert update.headers.get("Authorization") is None
    (again,) = h.send(_challenge(update, 401))
    resent = parse_request(again)
    assert resent.method == "UPDATE" and resent.cseq.seq == update.cseq.seq + 1
    assert resent.via[0].branch != update.via[0].branch
    assert resent.headers.get("Session-Expires") == f"{EXPIRES};refresher=uac"
    _check(resent, "Authorization", nc=1)
    assert h.events() == [Challenged(key, "UPDATE", 401, True)]
    h.advance_to(answered + HALF + 0.2)
    assert h.send(respond(resent, 200, "OK")) == []
    # The 200 to the resend is the refresh: the next one comes half an interval after
    # it, with credentials at once (the nonce remembered, nc 2), and no BYE ever.
    sent = h.advance_to(answered + HALF + 0.2 + HALF)
    nxt = _first(sent, "UPDATE")
    _check(nxt, "Authorization", nc=2)
    assert [t for t, d in sent if d.startswith(b"UPDATE")] == [answered + HALF + 0.2 + HALF]
    assert not [d for _, d in sent if d.startswith(b"BYE")]


def test_reinvite_challenged_407_is_acked_then_sent_again_with_credentials() -> None:
    h, answered, key = _established(())
    reinvite = _first(h.advance_to(answered + HALF), "INVITE")
    ack, again = h.send(_challenge(reinvite, 407))
    # §17.1.1.3: the 407 is ACKed in the INVITE's transaction (its branch and CSeq).
    assert ack.startswith(b"ACK ")
    acked = parse_request(ack)
    assert acked.via[0].branch == reinvite.via[0].branch
    assert acked.cseq.seq == reinvite.cseq.seq and acked.cseq.method == "ACK"
    resent = parse_request(again)
    assert resent.method == "INVITE" and resent.cseq.seq == reinvite.cseq.seq + 1
    assert resent.via[0].branch != reinvite.via[0].branch
    assert resent.body == reinvite.body                     # the same SDP, same version
    assert resent.headers.get("Session-Expires") == f"{EXPIRES};refresher=uac"
    assert resent.from_.tag == reinvite.from_.tag and resent.to.tag == reinvite.to.tag
    _check(resent, "Proxy-Authorization", nc=1)
    assert h.events() == [Challenged(key, "INVITE", 407, True)]
    # A retransmitted 407 is ACKed again and resends nothing.
    assert h.send(_challenge(reinvite, 407)) == [ack]
    h.advance_to(answered + HALF + 0.3)
    (ack2,) = h.send(_ok_with_sdp(resent))
    acked2 = parse_request(ack2)
    # §13.2.2.4: the ACK of the 2xx has the INVITE's CSeq number and its credentials.
    assert acked2.cseq.seq == resent.cseq.seq and acked2.cseq.method == "ACK"
    assert acked2.headers.get("Proxy-Authorization") == \
        resent.headers.get("Proxy-Authorization")
    sent = h.advance_to(answered + HALF + 0.3 + HALF)
    nxt = _first(sent, "INVITE")
    assert [t for t, d in sent if d.startswith(b"INVITE")] == [answered + HALF + 0.3 + HALF]
    _check(nxt, "Proxy-Authorization", nc=2)                # the nonce reused at once
    assert not [d for _, d in sent if d.startswith(b"BYE")]
    assert not [e for e in h.events() if isinstance(e, CallEnded)]


def test_reinvite_challenged_twice_is_not_sent_a_third_time_and_the_session_expires() -> None:
    h, answered, key = _established(())
    reinvite = _first(h.advance_to(answered + HALF), "INVITE")
    _, again = h.send(_challenge(reinvite, 401))
    resent = parse_request(again)
    # The credentials were refused (a new nonce, not stale): ACK, and nothing more.
    (ack,) = h.send(_challenge(resent, 401, nonce="other"))
    assert ack.startswith(b"ACK ") and parse_request(ack).cseq.seq == resent.cseq.seq
    assert h.events() == [Challenged(key, "INVITE", 401, True),
                          Challenged(key, "INVITE", 401, False)]
    sent = h.advance_to(answered + EXPIRES)
    assert not [d for _, d in sent if d.startswith(b"INVITE")]
    byes = [t for t, d in sent if d.startswith(b"BYE")]
    assert byes[0] == answered + EXPIRES - BYE_BEFORE       # the answer's timer ran out


def test_without_credentials_a_challenged_refresh_is_not_resent() -> None:
    for extra, method in (((ALLOW_UPDATE,), "UPDATE"), ((), "INVITE")):
        h, answered, key = _established(extra, password=None)
        request = _first(h.advance_to(answered + HALF), method)
        out = h.send(_challenge(request, 407))
        assert [d.split(b" ", 1)[0] for d in out] == ([b"ACK"] if method == "INVITE" else [])
        assert h.events() == [Challenged(key, method, 407, False)]
        sent = h.advance_to(answered + EXPIRES)
        assert [t for t, d in sent if d.startswith(b"BYE")][0] == \
            answered + EXPIRES - BYE_BEFORE


def test_reinvite_challenged_stale_gets_one_more_new_reinvite() -> None:
    """A second challenge saying ``stale=true`` (the nonce expired, not the credentials
    refused) gets one more re-INVITE with the new nonce; a third challenge ends it."""
    h, answered, key = _established(())
    reinvite = _first(h.advance_to(answered + HALF), "INVITE")
    _, again = h.send(_challenge(reinvite, 401))
    stale = _challenge(parse_request(again), 401, nonce="fresh").replace(
        b'qop="auth"', b'qop="auth", stale=true')
    ack, third = h.send(stale)
    assert ack.startswith(b"ACK ")
    resent = parse_request(third)
    assert resent.cseq.seq == reinvite.cseq.seq + 2
    assert digest.parse_credentials(resent.headers.get("Authorization") or "").nonce == "fresh"
    _check(resent, "Authorization", nc=1)
    (last_ack,) = h.send(_challenge(resent, 401, nonce="again"))
    assert last_ack.startswith(b"ACK ")
    assert [e for e in h.events() if isinstance(e, Challenged)] == [
        Challenged(key, "INVITE", 401, True), Challenged(key, "INVITE", 401, True),
        Challenged(key, "INVITE", 401, False)]
