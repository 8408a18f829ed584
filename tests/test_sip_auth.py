"""Digest authentication on trunks, sans-I/O: the inbound check of a trunk's INVITEs
(bridge.sip.trunkauth) and the user agent answering a 401/407 to its own REFER and BYE
(bridge.sip.authclient), on a virtual clock."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.bench.sip import free_udp_port
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.sip import digest
from bridge.sip.admission import Gate
from bridge.sip.events import Challenged
from bridge.sip.lines import Trunk
from bridge.sip.message import Request, Response, parse_request, parse_response
from bridge.sip.service import SipService
from bridge.sip.settings import SipSettings
from bridge.sip.trunkauth import NonceCounts, NonceMint, TrunkAuth, load_passwords
from bridge.sip.trunkcalls import call_credentials, trunk_extra
from bridge.sip.ua import CallEstablished, IncomingCall, ReferDone, ReferProgress, UserAgent
from tests.support.sip_peers import (
    ALICE,
    BOB,
    CountingIds,
    Recorder,
    SipSink,
    Uac,
    UasHarness,
    UdpPeer,
    caller_sdp,
    respond,
    udp_peer,
)

PBX = Trunk(name="pbx", match=("192.0.2.0/24",), auth_user="bridge",
            password_env="PBX_PASSWORD", realm="pbx.example.com", dialplan="front-desk")
CARRIER = Trunk(name="carrier", match=("198.51.100.0/24",))
PASSWORD = "s3cret-pbx"


def _invite(extra: tuple[str, ...] = ()) -> Request:
    return parse_request(Uac().invite(extra=extra))


def _answer(challenge_value: str, *, password: str = PASSWORD, user: str = "bridge",
            nc: int = 1, uri: str = "sip:bob@biloxi.example.com") -> str:
    challenge = digest.parse_challenge(challenge_value)
    return digest.authorization(challenge, method="INVITE", uri=uri, username=user,
                                password=password, cnonce="0a4f113b", nc=nc)


def _auth(ttl: float = 300.0, memory: int = 4096) -> TrunkAuth:
    return TrunkAuth((PBX, CARRIER), {"pbx": PASSWORD}, mint=NonceMint(b"k" * 32, ttl_s=ttl),
                     counts=NonceCounts(memory))


# ------------------------------------------------------------------------------ inbound

def test_invite_without_credentials_gets_two_challenges() -> None:
    refusal = _auth().check(_invite(), ALICE[0], 10.0)
    assert refusal is not None and refusal.status == 401
    assert refusal.reason == "sip_auth_required"
    challenges = [digest.parse_challenge(v) for k, v in refusal.headers
                  if k == "WWW-Authenticate"]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.realm == "pbx.example.com" and c.qop == ("auth",) and not c.stale
               for c in challenges)


@pytest.mark.parametrize("which", [0, 1])       # SHA-256 and MD5
def test_right_credentials_let_the_invite_in(which: int) -> None:
    auth = _auth()
    challenge = auth.challenge(PBX, ALICE[0], 10.0)[which][1]
    invite = _invite((f"Authorization: {_answer(challenge)}",))
    assert auth.check(invite, ALICE[0], 11.0) is None


def test_wrong_password_or_user_is_403() -> None:
    auth = _auth()
    challenge = auth.challenge(PBX, ALICE[0], 10.0)[0][1]
    for header in (_answer(challenge, password="guess"), _answer(challenge, user="admin")):
        refusal = auth.check(_invite((f"Authorization: {header}",)), ALICE[0], 11.0)
        assert refusal is not None and (refusal.status, refusal.reason) == (
            403, "sip_auth_failed")


def test_stale_nonce_is_401_stale_and_foreign_nonce_a_fresh_challenge() -> None:
    auth = _auth(ttl=60)
    challenge = auth.challenge(PBX, ALICE[0], 10.0)[0][1]
    late = auth.check(_invite((f"Authorization: {_answer(challenge)}",)), ALICE[0], 75.0)
    assert late is not None and (late.status, late.reason) == (401, "sip_auth_stale")
    assert all(digest.parse_challenge(v).stale for _, v in late.headers)
    # The same nonce from another address, or a nonce of another process: not ours.
    other = auth.check(_invite((f"Authorization: {_answer(challenge)}",)), "192.0.2.77", 11.0)
    assert other is not None and (other.status, other.reason) == (401, "sip_auth_nonce")
    foreign = _auth().challenge(PBX, ALICE[0], 10.0)[0][1].replace("k", "q")
    forged = TrunkAuth((PBX,), {"pbx": PASSWORD}, mint=NonceMint(b"z" * 32)).check(
        _invite((f"Authorization: {_answer(foreign)}",)), ALICE[0], 11.0)
    assert forged is not None and forged.reason == "sip_auth_nonce"


def test_replayed_nonce_count_is_refused() -> None:
    auth = _auth()
    challenge = auth.challenge(PBX, ALICE[0], 10.0)[0][1]
    first = _invite((f"Authorization: {_answer(challenge, nc=1)}",))
    assert auth.check(first, ALICE[0], 11.0) is None
    replay = auth.check(first, ALICE[0], 12.0)
    assert replay is not None and (replay.status, replay.reason) == (401, "sip_auth_replay")
    assert auth.check(_invite((f"Authorization: {_answer(challenge, nc=2)}",)),
                      ALICE[0], 13.0) is None


def test_nonce_memory_is_bounded_and_forgotten_nonces_stay_refused() -> None:
    auth = _auth(memory=2)
    nonces = [auth.challenge(PBX, ALICE[0], float(t))[0][1] for t in (1, 2, 3)]
    for value in nonces:
        assert auth.check(_invite((f"Authorization: {_answer(value)}",)), ALICE[0], 5.0) is None
    assert len(auth.counts) == 2
    # The first nonce fell out of memory: its replay must not come back in.
    again = auth.check(_invite((f"Authorization: {_answer(nonces[0], nc=1)}",)), ALICE[0], 6.0)
    assert again is not None and again.status == 401


@pytest.mark.parametrize("header", [
    'Digest username="bridge", realm="pbx.example.com"',                 # no nonce etc.
    'Basic Zm9vOmJhcg==',
    'Digest username="bridge", realm="pbx.example.com", nonce="1.2", uri="sip:x@y", '
    'response="00", qop=auth',                                            # qop without nc
    'Digest username="bridge" realm',
])
def test_malformed_authorization_is_400(header: str) -> None:
    refusal = _auth().check(_invite((f"Authorization: {header}",)), ALICE[0], 1.0)
    assert refusal is not None and (refusal.status, refusal.reason) == (400, "sip_auth_malformed")


def test_uri_is_hashed_and_must_be_a_uri_but_may_differ_from_the_request_uri() -> None:
    """A proxy may rewrite the Request-URI and SIPp writes its next hop there: the uri is
    only checked through the hash (and for being a URI at all)."""
    auth = _auth()
    challenge = auth.challenge(PBX, ALICE[0], 10.0)[0][1]
    header = _answer(challenge, uri="sip:192.0.2.200:5060")
    assert auth.check(_invite((f"Authorization: {header}",)), ALICE[0], 11.0) is None
    garbage = _answer(challenge, uri="not a uri", nc=2)
    refusal = auth.check(_invite((f"Authorization: {garbage}",)), ALICE[0], 12.0)
    assert refusal is not None and refusal.status == 400
    tampered = _answer(challenge, nc=3).replace("sip:bob@biloxi.example.com", "sip:x@y.z")
    refusal = auth.check(_invite((f"Authorization: {tampered}",)), ALICE[0], 13.0)
    assert refusal is not None and refusal.status == 403


def test_other_sources_and_methods_are_not_challenged() -> None:
    auth = _auth()
    assert auth.check(_invite(), "198.51.100.7", 1.0) is None     # a trunk without auth
    assert auth.check(_invite(), "203.0.113.9", 1.0) is None      # no trunk at all
    options = parse_request(Uac().in_dialog("OPTIONS").replace(b";tag=None", b""))
    assert auth.check(options, ALICE[0], 1.0) is None


def test_passwords_come_from_the_environment() -> None:
    assert load_passwords((PBX, CARRIER), {"PBX_PASSWORD": "x"}) == {"pbx": "x"}
    with pytest.raises(ConfigError, match="PBX_PASSWORD is not set"):
        load_passwords((PBX,), {})
    assert TrunkAuth.from_env((CARRIER,), {}) is None


def test_trunk_names_the_dialplan_and_passes_the_allowlist() -> None:
    assert trunk_extra((PBX, CARRIER), "192.0.2.5") == {"trunk": "pbx",
                                                         "dialplan": "front-desk"}
    assert trunk_extra((PBX, CARRIER), "198.51.100.5") == {"trunk": "carrier"}
    assert trunk_extra((PBX, CARRIER), "203.0.113.5") == {}
    gate = Gate(SipSettings(allow_from=("10.0.0.0/8",), trunks=(PBX,)))
    assert gate.allowed("10.1.2.3") and gate.allowed("192.0.2.9")
    assert not gate.allowed("203.0.113.5")
    assert Gate(SipSettings(trunks=(PBX,))).allowed("203.0.113.5")   # no allowlist: all


# ------------------------------------------------------------------------------ outbound

def _established(password: str | None = PASSWORD) -> tuple[UasHarness, Uac, IncomingCall]:
    h = UasHarness()
    auth = TrunkAuth((PBX,), {"pbx": password} if password else {})
    h.ua = UserAgent(SipSettings(user_agent="voicebridge/test", trunks=(PBX,)),
                     host=BOB[0], port=BOB[1], ids=CountingIds(),
                     credentials=call_credentials((PBX,), auth if password else None))
    alice = Uac()
    h.send(alice.invite())
    call = h.incoming()
    h.send(alice.ack(h.answer(call)))
    assert isinstance(h.events()[0], CallEstablished)
    return h, alice, call


def _challenge(request: Request, status: int, *, nonce: str = "n0nce", stale: bool = False,
               algorithm: str = "MD5") -> bytes:
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    text = respond(request, status, "Unauthorized" if status == 401 else
                   "Proxy Authentication Required").decode()
    value = (f'Digest realm="pbx.example.com", nonce="{nonce}", algorithm={algorithm}, '
             f'qop="auth"' + (", stale=true" if stale else ""))
    return text.replace("Content-Length: 0", f"{header}: {value}\r\nContent-Length: 0").encode()


def _check(request: Request, header: str, *, nc: int) -> digest.Credentials:
    creds = digest.parse_credentials(request.headers.get(header) or "")
    assert creds.username == "bridge" and creds.nc == f"{nc:08x}"
    assert creds.uri == str(request.uri)
    assert digest.verify(creds, method=request.method, password=PASSWORD)
    return creds


def test_refer_challenged_with_407_is_resent_and_succeeds() -> None:
    h, alice, call = _established()
    h.ua.refer(call.call, "sip:desk@pbx.example.com", h.now)
    (data,) = h.out()
    refer = parse_request(data)
    assert refer.headers.get("Proxy-Authorization") is None
    (again,) = h.send(_challenge(refer, 407))
    resent = parse_request(again)
    assert resent.method == "REFER" and resent.cseq.seq == refer.cseq.seq + 1
    assert resent.call_id == refer.call_id and resent.from_.tag == refer.from_.tag
    assert resent.headers.get("Refer-To") == "<sip:desk@pbx.example.com>"
    assert resent.via[0].branch != refer.via[0].branch
    _check(resent, "Proxy-Authorization", nc=1)
    assert h.events() == [Challenged(call.call, "REFER", 407, True)]   # no failure
    h.send(respond(resent, 202, "Accepted"))
    assert h.events() == [ReferProgress(call.call, 202, "Accepted")]
    notify = alice.in_dialog("NOTIFY", b"SIP/2.0 200 OK\r\n",
                             extra=("Event: refer", "Subscription-State: terminated")
                             ).replace(b"application/sdp", b"message/sipfrag;version=2.0")
    h.send(notify)
    assert h.events() == [ReferDone(call.call, True, 200, "OK")]
    # The BYE that follows reuses the nonce at once, with the next nonce count.
    h.ua.bye(call.call, h.now)
    (data,) = h.out()
    _check(parse_request(data), "Proxy-Authorization", nc=2)


def test_bye_challenged_with_401_is_resent_once_then_gives_up() -> None:
    h, alice, call = _established()
    h.ua.bye(call.call, h.now)
    (data,) = h.out()
    bye = parse_request(data)
    (again,) = h.send(_challenge(bye, 401, algorithm="SHA-256"))
    resent = parse_request(again)
    assert resent.method == "BYE" and resent.cseq.seq == bye.cseq.seq + 1
    assert digest.parse_credentials(resent.headers.get("Authorization") or "").algorithm \
        == "SHA-256"
    _check(resent, "Authorization", nc=1)
    assert h.ua.hangups_in_flight() == 1
    # Challenged again with a new nonce (not stale): the credentials were refused.
    assert h.send(_challenge(resent, 401, nonce="other")) == []
    assert h.ua.hangups_in_flight() == 0
    assert h.events()[-2:] == [Challenged(call.call, "BYE", 401, True),
                               Challenged(call.call, "BYE", 401, False)]


def test_stale_challenge_gets_one_more_resend() -> None:
    h, alice, call = _established()
    h.ua.bye(call.call, h.now)
    (data,) = h.out()
    (first,) = h.send(_challenge(parse_request(data), 401))
    (second,) = h.send(_challenge(parse_request(first), 401, nonce="fresh", stale=True))
    creds = _check(parse_request(second), "Authorization", nc=1)
    assert creds.nonce == "fresh"
    assert h.send(_challenge(parse_request(second), 401, nonce="again", stale=True)) == []


def test_without_credentials_a_challenge_fails_the_request_as_before() -> None:
    h, alice, call = _established(password=None)
    h.ua.refer(call.call, "sip:desk@pbx.example.com", h.now)
    (data,) = h.out()
    assert h.send(_challenge(parse_request(data), 407)) == []
    assert h.events() == [Challenged(call.call, "REFER", 407, False),
                          ReferDone(call.call, False, 407, "Proxy Authentication Required")]


def test_challenge_allowing_only_auth_int_is_not_answered() -> None:
    h, alice, call = _established()
    h.ua.bye(call.call, h.now)
    (data,) = h.out()
    challenge = _challenge(parse_request(data), 401).replace(b'qop="auth"', b'qop="auth-int"')
    assert h.send(challenge) == []
    assert parse_response(challenge).status == 401


def test_sess_without_qop_is_not_answered() -> None:
    """MD5-sess mixes in the client nonce, which is only sent with qop: no usable answer."""
    challenge = digest.parse_challenge('Digest realm="r", nonce="n", algorithm=MD5-sess')
    with pytest.raises(digest.DigestError, match="-sess"):
        digest.authorization(challenge, method="BYE", uri="sip:x", username="u",
                             password="p", cnonce="c")


# ------------------------------------------------------------------------------ start-up

def _serve(tmp_path: Path, settings: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "voicebridge.toml"
    config.write_text(settings)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VOICEBRIDGE_", "AZURE_OPENAI_", "OPENAI_"))}
    clean.update(VOICEBRIDGE_RECORDS_PATH="", VOICEBRIDGE_SIP_HOST="127.0.0.1",
                 VOICEBRIDGE_SIP_PORT="0", VOICEBRIDGE_HTTP_PORT="0", **env)
    return subprocess.run([sys.executable, "-m", "bridge", "serve", "--config", str(config)],
                          cwd=tmp_path, env=clean, capture_output=True, text=True,
                          timeout=120, check=False)


TRUNK_TOML = """
[[sip.trunks]]
name = "pbx"
match = ["192.0.2.0/24"]
auth_user = "bridge"
password_env = "VB_TEST_UNSET_TRUNK_PASSWORD"
"""


def test_a_missing_password_variable_stops_the_start(tmp_path: Path) -> None:
    result = _serve(tmp_path, TRUNK_TOML)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("[[sip.trunks]] pbx: password_env: the environment variable "
            "VB_TEST_UNSET_TRUNK_PASSWORD is not set") in result.stderr


def test_a_trunk_dialplan_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    result = _serve(tmp_path, TRUNK_TOML + 'dialplan = "nowhere"\n',
                    VB_TEST_UNSET_TRUNK_PASSWORD="x")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "[[sip.trunks]] pbx: dialplan: no dialplan named 'nowhere'" in result.stderr


def test_a_trunk_is_known_on_a_dual_stack_socket_too() -> None:
    """An IPv4 trunk seen as ::ffff:192.0.2.9 must still be challenged, not let through."""
    refusal = _auth().check(_invite(), "::ffff:192.0.2.9", 1.0)
    assert refusal is not None and refusal.status == 401
    assert trunk_extra((PBX,), "::ffff:192.0.2.9")["trunk"] == "pbx"


def test_trunk_digest_algorithms_are_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "voicebridge.toml"
    config.write_text(TRUNK_TOML + 'digest_algorithms = ["MD5"]\n')
    (trunk,) = load_settings(config, {}).sip.trunks
    assert trunk.digest_algorithms == ("MD5",)
    assert [digest.parse_challenge(v).algorithm for _, v in
            TrunkAuth((trunk,), {"pbx": "x"}).challenge(trunk, "192.0.2.1", 0.0)] == ["MD5"]
    config.write_text(TRUNK_TOML + 'digest_algorithms = ["SHA-512"]\n')
    with pytest.raises(ConfigError, match="digest_algorithms: choose from SHA-256, MD5"):
        load_settings(config, {})


def test_a_refer_challenged_after_the_call_ended_is_not_sent_again() -> None:
    h, alice, call = _established()
    h.ua.refer(call.call, "sip:desk@pbx.example.com", h.now)
    (data,) = h.out()
    h.send(alice.in_dialog("BYE"))                  # the far end hangs up meanwhile
    h.events()
    assert h.send(_challenge(parse_request(data), 407)) == []


# ------------------------------------------------------------------- over real sockets

async def wait_for_hangup(leg: object, sink: SipSink) -> None:
    await sink.hangup.wait()


async def test_service_challenges_refuses_malformed_and_admits_with_credentials() -> None:
    """SipService on loopback with a trunk for 127.0.0.1: the wire answers (401 with both
    challenges, 400 with the reason, then a call with credentials) and the leg it makes
    carries the trunk's name and dialplan."""
    trunk = Trunk(name="loop", match=("127.0.0.1/32",), auth_user="bridge",
                  password_env="LOOP_PASSWORD", dialplan="front-desk")
    rec = Recorder(wait_for_hangup)
    low = free_udp_port() & ~1
    svc = SipService(SipSettings(host="127.0.0.1", port=0, ring_ms=0, trunks=(trunk,)), rec,
                     rtp_ports=(low, low + 19), env={"LOOP_PASSWORD": PASSWORD})
    await svc.start()
    try:
        sip = await udp_peer()
        assert sip.transport is not None
        alice = Uac(rport=True)
        sip.transport.sendto(alice.invite(caller_sdp(low + 40)), ("127.0.0.1", svc.port))
        challenge = await _final(sip)
        assert challenge.status == 401
        values = challenge.headers.get_lines("WWW-Authenticate")
        assert [digest.parse_challenge(v).algorithm for v in values] == ["SHA-256", "MD5"]
        sip.transport.sendto(alice.ack(challenge), ("127.0.0.1", svc.port))
        alice.remote_tag = None                # a new INVITE: no To tag

        alice.cseq += 1
        bad = alice.invite(caller_sdp(low + 40), extra=('Authorization: Digest realm="loop"',))
        sip.transport.sendto(bad, ("127.0.0.1", svc.port))
        refused = await _final(sip)
        assert refused.status == 400 and refused.reason.startswith("Bad Request (Digest")
        sip.transport.sendto(alice.ack(refused), ("127.0.0.1", svc.port))
        alice.remote_tag = None

        alice.cseq += 1
        answer = digest.authorization(digest.parse_challenge(values[0]), method="INVITE",
                                      uri="sip:bob@biloxi.example.com", username="bridge",
                                      password=PASSWORD, cnonce="abc", nc=1)
        sip.transport.sendto(alice.invite(caller_sdp(low + 40),
                                          extra=(f"Authorization: {answer}",)),
                             ("127.0.0.1", svc.port))
        ok = await _final(sip)
        assert ok.status == 200
        sip.transport.sendto(alice.ack(ok), ("127.0.0.1", svc.port))
        await asyncio.wait_for(rec.started.wait(), 10)
        assert rec.legs[0].info.extra["trunk"] == "loop"
        assert rec.legs[0].info.extra["dialplan"] == "front-desk"
        sip.transport.sendto(alice.in_dialog("BYE"), ("127.0.0.1", svc.port))
        await asyncio.wait_for(rec.finished.wait(), 10)
    finally:
        await svc.stop()


async def _final(peer: UdpPeer) -> Response:
    while True:
        response = await peer.recv_sip()
        if response.status >= 200:
            return response
