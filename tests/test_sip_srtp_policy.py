"""The SRTP policy of a SIP call, sans-I/O: which offers each policy answers and how
(one a=crypto line of ours, a fresh key, the offer's suite and tag), which it refuses
with 488 and under which counter reason, SDES over plain transports, trunks over the
default, and re-INVITEs that keep the keys, re-key, or try to switch to or from SRTP."""

from __future__ import annotations

import logging

import pytest

from bridge.errors import ConfigError, SdpError
from bridge.sip.lines import Trunk
from bridge.sip.sdes import format_crypto, parse_crypto
from bridge.sip.sdp import NegotiatedMedia, SessionDescription, parse_sdp
from bridge.sip.settings import SipSettings
from bridge.sip.srtp_policy import (
    SrtpPolicy,
    SrtpRefused,
    answer,
    offer_allowed,
    policy_for,
    reanswer,
)

KEY_A, KEY_B = bytes(range(30)), bytes(range(100, 130))
S80, S32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
WHERE = {"address": "192.0.2.1", "port": 20000}


def offer(*streams: tuple[str, list[str]]) -> SessionDescription:
    lines = ["v=0", "o=c 1 1 IN IP4 192.0.2.9", "s=-", "c=IN IP4 192.0.2.9", "t=0 0"]
    for n, (proto, cryptos) in enumerate(streams):
        lines += [f"m=audio {4000 + 2 * n} {proto} 0", "a=rtpmap:0 PCMU/8000"]
        lines += [f"a=crypto:{c}" for c in cryptos]
    return parse_sdp("\r\n".join(lines) + "\r\n")


def savp(*cryptos: str) -> tuple[str, list[str]]:
    return ("RTP/SAVP", list(cryptos))


PLAIN = ("RTP/AVP", [])
OPEN = SrtpPolicy("accept", sdes_over_plain=True)


def ours(sdp: SessionDescription) -> list[str]:
    [stream] = [m for m in sdp.media if m.port]
    return [v for v in stream.attr("crypto") if v]


@pytest.mark.parametrize("suite", [S80, S32])
def test_accept_answers_srtp_with_a_fresh_key_in_the_offered_suite_and_tag(suite: str) -> None:
    line = format_crypto(5, suite, KEY_A)
    sdp, media = answer(offer(savp("1 AES_256_CM_HMAC_SHA1_80 inline:" + "A" * 60, line)),
                        OPEN, "udp", **WHERE)
    [mine] = ours(sdp)
    attr = parse_crypto(mine)
    assert (attr.tag, attr.suite) == (5, suite) and attr.key_salt not in (KEY_A, bytes(30))
    assert sdp.media[0].proto == "RTP/SAVP"
    assert media.srtp is not None and media.srtp.remote.key_salt == KEY_A
    assert media.srtp.local.key_salt == attr.key_salt
    assert "inline" not in repr(media) and repr(KEY_A) not in repr(media)
    again = answer(offer(savp(line)), OPEN, "udp", **WHERE)[1]
    assert again.srtp is not None and again.srtp.local.key_salt != attr.key_salt


def test_a_line_with_an_mki_is_passed_over_for_one_without() -> None:
    with_mki = format_crypto(1, S80, KEY_A) + "|2^20|1:4"
    media = answer(offer(savp(with_mki, format_crypto(2, S32, KEY_B))), OPEN, "udp",
                   **WHERE)[1]
    assert media.srtp is not None and media.srtp.remote.tag == 2
    assert media.srtp.remote.key_salt == KEY_B


def test_accept_answers_plain_as_plain_and_takes_the_first_usable_stream() -> None:
    sdp, media = answer(offer(PLAIN), OPEN, "udp", **WHERE)
    assert media.srtp is None and not ours(sdp) and sdp.media[0].proto == "RTP/AVP"
    sdp, media = answer(offer(savp(format_crypto(1, S80, KEY_A)), PLAIN), OPEN, "udp", **WHERE)
    assert media.srtp is not None and sdp.media[1].port == 0
    # Keys over plain UDP not allowed: the plain stream of the same offer is taken.
    sdp, media = answer(offer(savp(format_crypto(1, S80, KEY_A)), PLAIN),
                        SrtpPolicy("accept"), "udp", **WHERE)
    assert media.srtp is None and sdp.media[0].port == 0 and sdp.media[1].port != 0


@pytest.mark.parametrize(("policy", "transport", "streams", "reason"), [
    (SrtpPolicy("require", True), "udp", [PLAIN], "sip_srtp_required"),
    (SrtpPolicy("require"), "udp", [savp(format_crypto(1, S80, KEY_A))],
     "sip_sdes_over_plain"),
    (SrtpPolicy("require"), "tcp", [savp(format_crypto(1, S80, KEY_A))],
     "sip_sdes_over_plain"),
    (SrtpPolicy("accept"), "udp", [savp(format_crypto(1, S80, KEY_A))],
     "sip_sdes_over_plain"),
    (SrtpPolicy("off", True), "udp", [savp(format_crypto(1, S80, KEY_A))], "sip_srtp_off"),
    (OPEN, "udp", [savp()], "sip_srtp_no_crypto"),
    (OPEN, "udp", [savp(format_crypto(1, S80, KEY_A) + " UNENCRYPTED_SRTP")],
     "sip_srtp_no_crypto"),
    (OPEN, "udp", [savp(format_crypto(1, S80, KEY_A) + "|2^20|1:4")], "sip_srtp_no_crypto"),
])
def test_refusals_are_488_with_a_reason_and_no_key_in_the_log(
        policy: SrtpPolicy, transport: str, streams: list[tuple[str, list[str]]],
        reason: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "bridge.sip.srtp"), \
            pytest.raises(SrtpRefused) as info:
        answer(offer(*streams), policy, transport, source="192.0.2.9", **WHERE)
    assert info.value.reason == reason and info.value.status == 488
    assert "refused (488)" in caplog.text and "192.0.2.9" in caplog.text
    assert "inline" not in caplog.text + str(info.value)


def test_keys_over_tls_need_no_permission_and_off_still_answers_plain() -> None:
    media = answer(offer(savp(format_crypto(1, S32, KEY_A))), SrtpPolicy("require"), "tls",
                   **WHERE)[1]
    assert media.srtp is not None and media.srtp.suite == S32
    media = answer(offer(savp(format_crypto(1, S80, KEY_A)), PLAIN), SrtpPolicy("off"),
                   "udp", **WHERE)[1]
    assert media.srtp is None


def test_the_trunk_policy_wins_over_the_default_and_offerless_require_is_refused() -> None:
    trunk = Trunk("carrier", match=("198.51.100.0/24",), srtp="require", sdes_over_plain=True)
    settings = SipSettings(trunks=(trunk,), srtp="accept")
    assert policy_for(settings, "198.51.100.7") == SrtpPolicy("require", True,
                                                              "trunk carrier")
    assert policy_for(settings, "203.0.113.1") == SrtpPolicy("accept", False)
    with pytest.raises(SrtpRefused):
        offer_allowed(policy_for(settings, "198.51.100.7"))
    offer_allowed(policy_for(settings, "203.0.113.1"))


def _call(line: str) -> tuple[NegotiatedMedia, str]:
    _sdp, media = answer(offer(savp(line)), OPEN, "udp", **WHERE)
    return media, line


def test_a_reinvite_with_the_same_key_keeps_both_keys() -> None:
    media, line = _call(format_crypto(1, S80, KEY_A))
    sdp, again = reanswer(offer(savp(line)), media, **WHERE)
    assert again.srtp == media.srtp
    assert media.srtp is not None and ours(sdp) == [media.srtp.line()]


def test_a_reinvite_with_a_new_key_rekeys_both_directions() -> None:
    media, _line = _call(format_crypto(1, S80, KEY_A))
    sdp, again = reanswer(offer(savp(format_crypto(2, S32, KEY_B))), media, **WHERE)
    assert again.srtp is not None and media.srtp is not None
    assert again.srtp.remote.key_salt == KEY_B and again.srtp.suite == S32
    assert again.srtp.local.key_salt != media.srtp.local.key_salt
    assert [parse_crypto(v).tag for v in ours(sdp)] == [2]


def test_a_reinvite_may_not_switch_between_plain_and_srtp() -> None:
    media, _line = _call(format_crypto(1, S80, KEY_A))
    with pytest.raises(SdpError):
        reanswer(offer(PLAIN), media, **WHERE)
    with pytest.raises(SdpError):
        reanswer(offer(savp()), media, **WHERE)
    plain = answer(offer(PLAIN), OPEN, "udp", **WHERE)[1]
    with pytest.raises(SdpError):
        reanswer(offer(savp(format_crypto(1, S80, KEY_A))), plain, **WHERE)
    assert reanswer(offer(PLAIN), plain, **WHERE)[1].srtp is None


def test_the_default_policy_is_checked() -> None:
    assert SipSettings().srtp == "off" and not SipSettings().sdes_over_plain
    with pytest.raises(ConfigError, match="srtp: choose from off, accept, require"):
        SipSettings(srtp="maybe")
