"""SDES ``a=crypto`` (RFC 4568): the RFC's own example, what is refused, and keys that
really key libsrtp (pylibsrtp): a packet protected with ours unprotects with the peer's
view of it, and one with a bad auth tag is refused."""

from __future__ import annotations

import secrets
import struct

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import SdpError
from bridge.sip.sdes import CryptoAttribute, SdesError, choose, format_crypto, parse_crypto

RFC4568 = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"


def test_the_rfc4568_example_parses() -> None:
    attr = parse_crypto(RFC4568)
    assert (attr.tag, attr.suite, attr.lifetime, attr.mki) == (
        1, "AES_CM_128_HMAC_SHA1_80", 2 ** 20, (1, 32))
    assert len(attr.key_salt) == 30 and attr.tag_bytes == 10
    assert "PS1uQ" not in repr(attr) and str(attr.key_salt) not in repr(attr)


@pytest.mark.parametrize(("value", "words"), [
    ("1 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR", "suite"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=", "30 bytes"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64!!!", "not base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 uri:https://keys.example", "inline"),
    ("1 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR "
     "UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP is refused"),
    ("one AES_CM_128_HMAC_SHA1_80 inline:x", "tag suite"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|lots",
     "lifetime or MKI"),
])
def test_unusable_lines_are_refused_without_showing_the_key(value: str, words: str) -> None:
    with pytest.raises(SdesError, match=words) as info:
        parse_crypto(value)
    assert isinstance(info.value, SdpError) and info.value.status == 488
    assert "PS1uQ" not in str(info.value)


def test_an_offer_is_answered_with_its_first_usable_line() -> None:
    key = secrets.token_bytes(30)
    offer = ["1 AES_256_CM_HMAC_SHA1_80 inline:" + "A" * 60,
             format_crypto(2, "AES_CM_128_HMAC_SHA1_32", key),
             format_crypto(3, "AES_CM_128_HMAC_SHA1_80", key)]
    chosen = choose(offer)
    assert (chosen.tag, chosen.suite, chosen.key_salt) == (2, "AES_CM_128_HMAC_SHA1_32", key)
    assert choose(offer, ("AES_CM_128_HMAC_SHA1_80",)).tag == 3
    with pytest.raises(SdesError, match="no usable"):
        choose(offer[:1])


def rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, 160 * seq, 0x1234ABCD) + payload


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_the_keys_work_with_libsrtp_and_a_bad_tag_is_refused(suite: str) -> None:
    # Our line, as the far end reads it from our SDP: what we protect, it unprotects.
    ours = parse_crypto(format_crypto(1, suite, secrets.token_bytes(30)))
    sender = pylibsrtp.Session(pylibsrtp.Policy(
        key=ours.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=getattr(pylibsrtp.Policy, ours.profile)))
    receiver = pylibsrtp.Session(pylibsrtp.Policy(
        key=ours.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=getattr(pylibsrtp.Policy, ours.profile)))
    packet = rtp(1, b"\xd5" * 160)
    protected = sender.protect(packet)
    assert len(protected) == len(packet) + ours.tag_bytes
    assert protected[12:172] != packet[12:]                  # the payload is encrypted
    assert receiver.unprotect(protected) == packet
    second = sender.protect(rtp(2, b"\x55" * 160))
    tampered = second[:-1] + bytes([second[-1] ^ 1])         # one bit of the auth tag
    with pytest.raises(pylibsrtp.Error):
        receiver.unprotect(tampered)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_lines_parse_or_raise_sdes_error(text: str) -> None:
    for value in (text, "1 AES_CM_128_HMAC_SHA1_80 " + text):
        try:
            assert isinstance(parse_crypto(value), CryptoAttribute)
        except SdesError:
            pass
