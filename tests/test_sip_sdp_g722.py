"""G.722 in SDP offer/answer: chosen when ``[sip] codecs`` ranks it first, G.711 as before
when it is not offered, our offer and the far end's answer, re-INVITEs kept at the call's
audio rate, and the setting's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import settings_from_mapping
from bridge.errors import ConfigError, SdpError
from bridge.sip.message import parse_response
from bridge.sip.sdp import (
    accept_answer,
    answer_offer,
    make_offer,
    parse_sdp,
    renegotiation_codecs,
)
from bridge.sip.settings import SipSettings
from bridge.sip.ua import CallEstablished, MediaUpdated
from tests.support.sip_peers import BOB, Uac, UasHarness, statuses

VECTORS = Path(__file__).parent / "vectors" / "sdp"
OURS = SipSettings().codecs


def _offer(formats: str, *, g722_rate: int = 8000) -> bytes:
    maps = {"0": "PCMU/8000", "8": "PCMA/8000", "9": f"G722/{g722_rate}",
            "101": "telephone-event/8000"}
    lines = [f"a=rtpmap:{pt} {maps[pt]}" for pt in formats.split()]
    return ("v=0\r\no=alice 1 1 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\n"
            f"t=0 0\r\nm=audio 49172 RTP/AVP {formats}\r\n" + "\r\n".join(lines)
            + "\r\n").encode()


def test_the_default_preference_is_wideband_first() -> None:
    assert OURS == ("g722", "pcmu", "pcma")


@pytest.mark.parametrize("formats", ["9 0 101", "0 9 101", "8 0 9 101"])
def test_g722_is_chosen_when_ranked_first(formats: str) -> None:
    answer, media = answer_offer(parse_sdp(_offer(formats)), address="198.51.100.1",
                                 port=20000, codecs=OURS)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("g722", 9, 101)
    audio = answer.media[0]
    assert audio.formats == ("9", "101")
    assert audio.rtpmap()["9"] == ("g722", 8000)           # RFC 3551: clock 8000
    assert b"a=rtpmap:9 G722/8000\r\n" in answer.serialize()


def test_ranked_after_g711_it_is_not_chosen() -> None:
    _, media = answer_offer(parse_sdp(_offer("9 0 101")), address="198.51.100.1",
                            port=20000, codecs=("pcmu", "pcma", "g722"))
    assert media.codec == "pcmu"
    _, media = answer_offer(parse_sdp(_offer("9 8 0")), address="198.51.100.1",
                            port=20000, codecs=("pcma", "g722"))
    assert media.codec == "pcma"


def test_without_g722_offered_g711_is_chosen_as_before() -> None:
    """Between the laws the caller's order still decides, G.722 ranked first or not."""
    for formats, law in (("0 8 101", "pcmu"), ("8 0 101", "pcma")):
        _, media = answer_offer(parse_sdp(_offer(formats)), address="198.51.100.1",
                                port=20000, codecs=OURS)
        assert media.codec == law


def test_real_phones_offering_g722_get_it() -> None:
    for name, pt in (("polycom_vvx", 127), ("baresip", 101)):
        offer = parse_sdp((VECTORS / f"{name}.sdp").read_bytes())
        _, media = answer_offer(offer, address="198.51.100.1", port=20000, codecs=OURS)
        assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("g722", 9, pt)


def test_g722_at_a_16000_clock_is_not_g722() -> None:
    """RFC 3551 fixes G.722's RTP clock at 8000; a ``G722/16000`` rtpmap would make our
    timestamps wrong by half, so it is not taken for G.722."""
    _, media = answer_offer(parse_sdp(_offer("9 0", g722_rate=16000)),
                            address="198.51.100.1", port=20000, codecs=OURS)
    assert media.codec == "pcmu"
    with pytest.raises(SdpError, match="no common audio codec"):
        answer_offer(parse_sdp(_offer("9", g722_rate=16000)), address="198.51.100.1",
                     port=20000, codecs=OURS)


def test_our_offer_lists_g722_first_and_reads_the_answer() -> None:
    ours = make_offer(address="192.0.2.1", port=4000, codecs=OURS)
    assert ours.media[0].formats == ("9", "0", "8", "101")
    assert ours.media[0].rtpmap()["9"] == ("g722", 8000)
    theirs = parse_sdp(_offer("9 101"))
    media = accept_answer(ours, theirs)
    assert (media.codec, media.payload_type) == ("g722", 9)


def test_renegotiation_keeps_the_audio_rate() -> None:
    _, g722 = answer_offer(parse_sdp(_offer("9 0")), address="192.0.2.1", port=1,
                           codecs=OURS)
    _, pcma = answer_offer(parse_sdp(_offer("8")), address="192.0.2.1", port=1,
                           codecs=OURS)
    assert renegotiation_codecs(g722, OURS) == ("g722",)
    assert renegotiation_codecs(pcma, OURS) == ("pcma", "pcmu")
    assert renegotiation_codecs(None, OURS) == OURS


def test_a_reoffer_keeps_the_call_at_its_audio_rate() -> None:
    """A G.722 call re-offered G.711 only is refused (488) and goes on; re-offered G.722
    among others it stays G.722."""
    h = UasHarness(codecs=OURS)
    alice = Uac()
    h.send(alice.invite(sdp=_offer("9 0 101")))
    call = h.incoming()
    assert call.offer is not None
    sdp, media = answer_offer(call.offer, address=BOB[0], port=3456, codecs=OURS,
                              session_id="1111", session_version=1)
    assert media.codec == "g722"
    h.ua.answer(call.call, sdp, h.now, media)
    (data,) = h.out()
    h.send(alice.ack(parse_response(data)))
    assert isinstance(h.events()[0], CallEstablished)

    narrow = _offer("0 8 101").replace(b"alice 1 1", b"alice 1 2")
    sent = h.send(alice.in_dialog("INVITE", narrow))
    assert statuses(sent) == [100, 488]
    h.send(alice.ack(parse_response(sent[1])))
    assert h.events() == []

    again = _offer("0 9 101").replace(b"alice 1 1", b"alice 1 3")
    sent = h.send(alice.in_dialog("INVITE", again))
    assert statuses(sent) == [100, 200]
    assert parse_sdp(parse_response(sent[1]).body).media[0].formats == ("9", "101")
    h.send(alice.ack(parse_response(sent[1])))
    [event] = h.events()
    assert isinstance(event, MediaUpdated) and event.media.codec == "g722"


@pytest.mark.parametrize("codecs", [[], ["g722", "g722"], ["opus"], ["g729", "pcmu"]])
def test_the_setting_is_validated(codecs: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"\[sip\] codecs: choose from g722, pcmu, pcma"):
        settings_from_mapping({"sip": {"codecs": codecs}}, env={})


def test_the_setting_comes_from_the_file_and_the_environment() -> None:
    assert settings_from_mapping({"sip": {"codecs": ["pcma"]}}, env={}).sip.codecs == ("pcma",)
    env = {"VOICEBRIDGE_SIP_CODECS": "pcmu, g722"}
    assert settings_from_mapping({}, env=env).sip.codecs == ("pcmu", "g722")
