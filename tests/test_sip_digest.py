"""Digest authentication (RFC 7616, RFC 2617, RFC 3261 §22) against the RFCs' own worked
examples, both directions, and fuzzed: a header parses or raises ``DigestError``."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import SipParseError
from bridge.sip.digest import (
    Challenge,
    DigestError,
    authorization,
    parse_challenge,
    parse_credentials,
    response_hash,
    verify,
)

# RFC 7616 §3.9.1: Mufasa / "Circle of Life", GET /dir/index.html.
RFC7616 = dict(username="Mufasa", realm="http-auth@example.org", password="Circle of Life",
               method="GET", uri="/dir/index.html",
               nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth",
               nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_worked_examples(algorithm: str, expected: str) -> None:
    assert response_hash(algorithm=algorithm, **RFC7616) == expected


def test_rfc2617_worked_example() -> None:
    # RFC 2617 §3.5: qop=auth, MD5.
    got = response_hash(algorithm="MD5", username="Mufasa", realm="testrealm@host.com",
                        password="Circle Of Life", method="GET", uri="/dir/index.html",
                        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth",
                        nc="00000001", cnonce="0a4f113b")
    assert got == "6629fae49393a05397450978507c4ef1"


def test_a_challenge_is_answered_and_the_answer_verifies() -> None:
    challenge = parse_challenge(RFC7616_CHALLENGE)
    assert challenge == Challenge(realm="http-auth@example.org",
                                  nonce=RFC7616["nonce"], algorithm="SHA-256",
                                  qop=("auth", "auth-int"),
                                  opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
    header = authorization(challenge, method="GET", uri="/dir/index.html",
                           username="Mufasa", password="Circle of Life",
                           cnonce=RFC7616["cnonce"], nc=1)
    assert ('response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"'
            in header)
    assert "qop=auth, nc=00000001" in header and 'opaque="FQhe/' in header
    creds = parse_credentials(header)
    assert verify(creds, method="GET", password="Circle of Life")
    assert not verify(creds, method="GET", password="circle of life")
    assert not verify(creds, method="INVITE", password="Circle of Life")


def test_a_sip_register_challenge_without_qop_md5() -> None:
    # What many SIP registrars still send (RFC 2069 style): no qop, no nc/cnonce.
    challenge = parse_challenge('Digest realm="pbx.example.com", nonce="5f1a2b", '
                                'algorithm=MD5')
    header = authorization(challenge, method="REGISTER", uri="sip:pbx.example.com",
                           username="1001", password="s3cret", cnonce="unused")
    assert "qop" not in header and "nc=" not in header and "cnonce" not in header
    creds = parse_credentials(header)
    assert creds.username == "1001" and verify(creds, method="REGISTER", password="s3cret")


def test_sess_algorithms_and_stale() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", algorithm=MD5-sess, '
                                'qop="auth", stale=TRUE')
    assert challenge.stale and challenge.algorithm == "MD5-SESS"
    header = authorization(challenge, method="BYE", uri="sip:a@b", username="u",
                           password="p", cnonce="c", nc=7)
    creds = parse_credentials(header)
    assert creds.nc == "00000007" and verify(creds, method="BYE", password="p")


def test_quoted_values_with_commas_and_escapes_round_trip() -> None:
    challenge = parse_challenge(r'Digest realm="a, \"quoted\" realm", nonce="x,y"')
    assert challenge.realm == 'a, "quoted" realm' and challenge.nonce == "x,y"
    header = authorization(challenge, method="INVITE", uri="sip:bob@example.com",
                           username='al"ice', password="p", cnonce="c")
    creds = parse_credentials(header)
    assert creds.username == 'al"ice' and creds.realm == 'a, "quoted" realm'
    assert verify(creds, method="INVITE", password="p")


@pytest.mark.parametrize(("value", "words"), [
    ('Basic realm="x"', "not a Digest"),
    ('Digest nonce="n"', "realm missing"),
    ('Digest realm="r", nonce="n", algorithm=SHA-1', "unsupported Digest algorithm"),
    ('Digest realm="r", realm="s", nonce="n"', "given twice"),
    ('Digest nonce="n", realm="r', "unterminated"),
    ('Digest realm', "without a value"),
    ("Digest " + "a=b," * 2000, "too long"),
])
def test_malformed_challenges_are_refused(value: str, words: str) -> None:
    with pytest.raises(DigestError, match=words) as info:
        parse_challenge(value)
    assert isinstance(info.value, SipParseError) and info.value.status == 400


def test_qop_auth_int_only_is_refused_and_qop_needs_nc_and_cnonce() -> None:
    only_int = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    with pytest.raises(DigestError, match="auth-int"):
        authorization(only_int, method="INVITE", uri="sip:x", username="u", password="p",
                      cnonce="c")
    with pytest.raises(DigestError, match="nc and cnonce"):
        parse_credentials('Digest username="u", realm="r", nonce="n", uri="sip:x", '
                          'response="00", qop=auth')


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzzed_headers_parse_or_raise_digest_error(text: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        for value in (text, "Digest " + text):
            try:
                parse(value)
            except DigestError:
                pass
