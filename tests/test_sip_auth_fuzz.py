"""Fuzzing the digest headers where they meet the wire: ``WWW-Authenticate``,
``Proxy-Authenticate``, ``Authorization`` and ``Proxy-Authorization`` values mutated from
real ones parse or raise ``DigestError`` (a ``SipParseError`` answered 400); the trunk
check answers every mutated INVITE with 400, 401 or 403 (or lets it in only with
credentials that verify), and the user agent fed mutated challenges to its REFER never
raises and never resends without credentials that answer the challenge it parsed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import SipParseError
from bridge.sip import digest
from bridge.sip.lines import Trunk
from bridge.sip.message import Request, parse_request, parse_response
from bridge.sip.sdp import answer_offer
from bridge.sip.settings import SipSettings
from bridge.sip.trunkauth import NonceMint, TrunkAuth
from bridge.sip.trunkcalls import call_credentials
from bridge.sip.ua import IncomingCall, UserAgent
from tests.support.sip_peers import ALICE, BOB, CountingIds, Uac, respond

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PBX = Trunk(name="pbx", match=("192.0.2.0/24",), auth_user="bridge", password_env="P",
            realm="pbx.example.com")
PASSWORD = "pw"
MINT = NonceMint(b"f" * 32)
NOW = 100.0

CHALLENGES = [
    'Digest realm="pbx.example.com", nonce="abc.def", algorithm=SHA-256, qop="auth"',
    'Digest realm="atlanta.example.com", domain="sip:ss1.example.com", qop="auth,auth-int", '
    'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5',
    'Digest realm="x\\"y, z", nonce="n", algorithm=MD5-sess, qop=auth, stale=true',
    'DIGEST REALM=r, NONCE=n',
]


def _credentials() -> list[str]:
    nonce = MINT.issue(ALICE[0], "pbx.example.com", NOW)
    out = []
    for algorithm in ("SHA-256", "MD5"):
        challenge = digest.Challenge("pbx.example.com", nonce, algorithm, ("auth",))
        out.append(digest.authorization(challenge, method="INVITE",
                                        uri="sip:bob@biloxi.example.com", username="bridge",
                                        password=PASSWORD, cnonce="c0ffee", nc=1))
    return out


CREDENTIALS = _credentials()


@st.composite
def mutated(draw: st.DrawFn, corpus: list[str]) -> str:
    text = list(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 6))):
        if not text:
            break
        pos = draw(st.integers(0, len(text) - 1))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "dup"]))
        piece = draw(st.sampled_from(['"', "\\", ",", "=", " ", "\t", "", "\x00", "é",
                                      "realm=", 'nonce="', "qop=auth", "nc=zz", ", ,",
                                      "algorithm=SHA-512", "response=", "uri=\"sip:x\""]))
        if kind == "replace":
            text[pos:pos + 1] = list(piece)
        elif kind == "insert":
            text[pos:pos] = list(piece)
        elif kind == "delete":
            del text[pos:pos + draw(st.integers(1, 15))]
        elif kind == "truncate":
            del text[pos:]
        else:
            text[pos:pos] = text[pos:pos + draw(st.integers(1, 30))]
    return "".join(text)


@FUZZ
@given(st.one_of(mutated(CHALLENGES), mutated(CREDENTIALS)))
def test_mutated_headers_parse_or_raise_digest_error(value: str) -> None:
    for parse in (digest.parse_challenge, digest.parse_credentials):
        try:
            parse(value)
        except digest.DigestError as exc:
            assert isinstance(exc, SipParseError) and exc.status == 400


def _invite(authorization: str) -> Request | None:
    data = Uac().invite(extra=(f"Authorization: {authorization}",))
    try:
        return parse_request(data)
    except SipParseError:
        return None            # the header broke the message itself (a CR, a NUL...)


@FUZZ
@given(mutated(CREDENTIALS))
def test_trunk_check_answers_400_401_403_or_proven_credentials(value: str) -> None:
    request = _invite(value)
    if request is None:
        return
    auth = TrunkAuth((PBX,), {"pbx": PASSWORD}, mint=MINT)
    refusal = auth.check(request, ALICE[0], NOW + 1)
    if refusal is not None:
        assert refusal.status in (400, 401, 403), refusal
        if refusal.status == 401:
            assert [k for k, _ in refusal.headers] == ["WWW-Authenticate"] * 2
        return
    creds = digest.parse_credentials(request.headers.get("Authorization") or "")
    assert creds.username == "bridge" and creds.realm == "pbx.example.com"
    assert digest.verify(creds, method="INVITE", password=PASSWORD)


def _established() -> tuple[UserAgent, IncomingCall]:
    auth = TrunkAuth((PBX,), {"pbx": PASSWORD}, mint=MINT)
    ua = UserAgent(SipSettings(trunks=(PBX,)), host=BOB[0], port=BOB[1], ids=CountingIds(),
                   credentials=call_credentials((PBX,), auth))
    alice = Uac()
    ua.receive(alice.invite(), ALICE, "udp", 0.0)
    (call,) = [e for e in ua.events() if isinstance(e, IncomingCall)]
    assert call.offer is not None
    sdp, media = answer_offer(call.offer, address=BOB[0], port=3456)
    ua.answer(call.call, sdp, 0.0, media)
    ok = [d for d, _ in ua.datagrams_to_send() if d.startswith(b"SIP/2.0 200")][0]
    ua.receive(alice.ack(parse_response(ok)), ALICE, "udp", 0.1)
    ua.events()
    return ua, call


@FUZZ
@given(st.sampled_from([401, 407]), mutated(CHALLENGES))
def test_ua_never_raises_on_mutated_challenges(status: int, value: str) -> None:
    ua, call = _established()
    ua.refer(call.call, "sip:desk@pbx.example.com", 1.0)
    (data, _), = ua.datagrams_to_send()
    refer = parse_request(data)
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    reply = respond(refer, status, "Challenge").replace(
        b"Content-Length: 0", f"{header}: {value}\r\nContent-Length: 0".encode(
            "utf-8", "surrogateescape"))
    ua.receive(reply, ALICE, "udp", 1.1)
    out = [d for d, _ in ua.datagrams_to_send()]
    ua.events()
    ua.handle_timer(100.0)
    if not out:
        return
    resent = parse_request(out[0])
    answer = "Authorization" if status == 401 else "Proxy-Authorization"
    creds = digest.parse_credentials(resent.headers.get(answer) or "")
    challenge = digest.parse_challenge(value)
    assert creds.nonce == challenge.nonce and creds.realm == challenge.realm
    assert digest.verify(creds, method="REFER", password=PASSWORD)
