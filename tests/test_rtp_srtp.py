"""The SRTP context of a SIP call: both directions and both suites with libsrtp, and
every packet that must not be played (bad tag, replay, too short, wrong key) dropped with
its reason, never raised; no key in its ``repr``."""

from __future__ import annotations

import secrets
import struct

import pytest

from bridge.rtp.srtp import SrtpContext

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")


def rtp(seq: int, payload: bytes = b"\xd5" * 160, ssrc: int = 0x1234ABCD) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, 160 * seq, ssrc) + payload


def pair(suite: str) -> tuple[SrtpContext, SrtpContext]:
    """Two ends of one call: each one's local key is the other's remote key."""
    ours, theirs = secrets.token_bytes(30), secrets.token_bytes(30)
    return SrtpContext(suite, ours, theirs), SrtpContext(suite, theirs, ours)


@pytest.mark.parametrize("suite", SUITES)
def test_both_directions_round_trip(suite: str) -> None:
    a, b = pair(suite)
    tag = 10 if suite.endswith("80") else 4
    for seq in range(1, 40):
        packet = rtp(seq, bytes([seq]) * 160)
        wire = a.protect(packet)
        assert len(wire) == len(packet) + tag and wire[12:172] != packet[12:]
        assert b.unprotect(wire) == packet
        back = rtp(seq, b"\x55" * 160, ssrc=0x0BADCAFE)
        assert a.unprotect(b.protect(back)) == back


@pytest.mark.parametrize("suite", SUITES)
def test_bad_tag_replay_short_and_wrong_key_are_dropped_with_a_reason(suite: str) -> None:
    a, b = pair(suite)
    first = a.protect(rtp(1))
    assert b.unprotect(first) is not None
    assert b.unprotect(first) is None and b.last_drop == "srtp_replay"
    second = a.protect(rtp(2))
    assert b.unprotect(second[:-1] + bytes([second[-1] ^ 0x01])) is None
    assert b.last_drop == "srtp_auth"
    assert b.unprotect(second[:12]) is None and b.last_drop == "srtp_short"
    stranger = SrtpContext(suite, secrets.token_bytes(30), secrets.token_bytes(30))
    assert b.unprotect(stranger.protect(rtp(3))) is None and b.last_drop == "srtp_auth"
    plain = rtp(4)                                 # unprotected RTP on an SRTP call
    assert b.unprotect(plain) is None and b.last_drop == "srtp_auth"
    assert b.unprotect(second) == rtp(2)           # the real one still gets through


def test_reordered_packets_within_the_window_are_kept() -> None:
    a, b = pair(SUITES[0])
    wires = [a.protect(rtp(seq)) for seq in range(1, 300)]
    assert all(b.unprotect(w) is not None for w in reversed(wires[-200:]))


def test_repeated_sends_of_one_packet_are_allowed() -> None:
    # RFC 4733 end-of-event packets may be sent three times with the same number.
    a, _b = pair(SUITES[1])
    assert a.protect(rtp(7)) == a.protect(rtp(7))


def test_no_key_in_repr_and_unknown_suites_are_refused() -> None:
    key = b"K" * 30
    ctx = SrtpContext(SUITES[0], key, key)
    assert "K" * 5 not in repr(ctx) and "S0s" not in repr(ctx)
    with pytest.raises(ValueError, match="unsupported") as info:
        SrtpContext("AES_256_CM_HMAC_SHA1_80", key, key)
    assert "KKK" not in str(info.value)
