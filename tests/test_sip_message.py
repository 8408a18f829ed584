"""SIP message parsing and serialization details (RFC 3261 §7, §20, §25)."""

from __future__ import annotations

import pytest

from bridge.errors import SipParseError
from bridge.sip.message import (
    Headers,
    MalformedMessage,
    Request,
    SipUri,
    StreamParser,
    Via,
    canonical_name,
    parse_message,
    parse_name_addr,
    parse_request,
    parse_uri,
    parse_via,
    split_list,
)

COMPACT = (b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
           b"v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport\r\n"
           b"f: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
           b"t: Bob <sip:bob@biloxi.example.com>\r\n"
           b"i: a84b4c76e66710@pc33.atlanta.example.com\r\n"
           b"CSeq: 314159 INVITE\r\n"
           b"m: <sip:alice@pc33.atlanta.example.com>,\r\n"
           b"   \"Alice, mobile\" <sip:alice@mobile.example.com;transport=tcp>;q=0.5\r\n"
           b"k: replaces, timer\r\n"
           b"c: application/sdp\r\n"
           b"l: 4\r\n"
           b"\r\n"
           b"v=0\n")


def test_compact_forms_folding_and_lists() -> None:
    m = parse_request(COMPACT)
    assert m.headers.get("Via") is not None and m.headers.get("v") is not None
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert m.from_.tag == "1928301774" and m.to.tag is None
    assert m.content_type == "application/sdp" and m.body == b"v=0\n"
    assert [c.display for c in m.contact] == [None, "Alice, mobile"]
    assert m.contact[1].uri.param("transport") == "tcp"
    assert m.contact[1].param("q") == "0.5"
    assert m.option_tags("Supported") == ("replaces", "timer")
    assert m.via[0].has_rport and m.via[0].rport is None


def test_serialize_canonical_and_reparse() -> None:
    m = parse_request(COMPACT)
    data = m.serialize()
    assert data.startswith(b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP")
    assert b"\r\nCall-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n" in data
    assert data.endswith(b"Content-Length: 4\r\n\r\nv=0\n")
    again = parse_request(data)
    assert again.call_id == m.call_id and again.contact == m.contact


def test_content_length_is_always_right_on_output() -> None:
    request = Request("OPTIONS", parse_uri("sip:a@b"),
                      Headers((("Content-Length", "99"),)), b"xyz")
    assert request.serialize().endswith(b"Content-Length: 3\r\n\r\nxyz")


def test_canonical_names() -> None:
    assert canonical_name("cseq") == "CSeq"
    assert canonical_name("CALL-ID") == "Call-ID"
    assert canonical_name("i") == "Call-ID"
    assert canonical_name("X-Custom") == "X-Custom"


def test_split_list_respects_quotes_and_brackets() -> None:
    assert split_list('"a,b" <sip:x@y;p=1,2>, <sip:z@w>') == [
        '"a,b" <sip:x@y;p=1,2>', "<sip:z@w>"]
    with pytest.raises(SipParseError):
        split_list('"open')


def test_via_with_received_and_rport() -> None:
    via = parse_via("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKx;rport")
    stamped = via.with_received("203.0.113.9", 40123)
    assert str(stamped) == ("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKx;rport=40123"
                            ";received=203.0.113.9")
    plain = parse_via("SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKx").with_received(
        "203.0.113.9", 5060)
    assert plain.received is None  # §18.2.1: only when sent-by differs
    assert parse_via("SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKy") == Via(
        "TCP", "[2001:db8::1]", 5070, (("branch", "z9hG4bKy"),))


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP", "SIP/3.0/UDP host", "SIP/2.0/UDP host:99999", "SIP/2.0/UDP ho st",
    "SIP/2.0/UDP host;rport=abc", "SIP/2.0/UDP host;=x",
])
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(text)


def test_uris() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips", "alice", "secret", "[2001:db8::1]", 5061)
    assert uri.transport == "tcp" and uri.param("lr") == ""
    assert uri.headers == (("subject", "hi"), ("x", "y"))
    assert str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y"
    assert str(parse_uri("tel:+15551234567")) == "tel:+15551234567"
    for bad in ("", "sip:", "sip:user@", "nocolon", "sip:a@b c", "sip:a@b@c", "1sip:a"):
        with pytest.raises(SipParseError):
            parse_uri(bad)


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Zoë \\"Z\\"" <sip:z@example.com>;tag=abc;x')
    assert (na.display, na.tag, na.param("x")) == ('Zoë "Z"', "abc", "")
    assert str(na) == '"Zoë \\"Z\\"" <sip:z@example.com>;tag=abc;x'
    plain = parse_name_addr("sip:a@b;tag=1")
    assert plain.uri.param("tag") is None and plain.tag == "1"
    assert str(parse_name_addr("Bob <sip:b@c>")) == "Bob <sip:b@c>"


@pytest.mark.parametrize("start", [
    "INVITE sip:a@b SIP/2.0 extra", "INVITE sip:a@b", "INV ITE sip:a@b SIP/2.0",
    "SIP/2.0 20 OK", "SIP/2.0 abc OK", "SIP/2.0 700 Huh",
])
def test_bad_start_lines(start: str) -> None:
    data = (start + "\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
            "To: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(SipParseError):
        parse_message(data.encode())


def test_malformed_keeps_headers_for_the_answer() -> None:
    data = (b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 OPTIONS\r\n\r\n")
    with pytest.raises(MalformedMessage) as info:
        parse_message(data)
    assert info.value.reason == "missing Call-ID"
    assert info.value.method == "OPTIONS"
    assert info.value.headers.get("CSeq") == "1 OPTIONS"


def test_oversized_header_section_is_513() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 513
    parser = StreamParser()
    parser.feed(data[:-4])
    with pytest.raises(SipParseError):
        parser.next_message()
    assert parser.broken


def test_stream_parser_waits_for_the_body() -> None:
    parser = StreamParser()
    parser.feed(COMPACT[:-2])
    assert parser.next_message() is None
    parser.feed(COMPACT[-2:] + b"\r\n\r\n" + COMPACT[:10])
    message = parser.next_message()
    assert message is not None and message.body == b"v=0\n"
    assert parser.next_message() is None
    assert parser.buffered == 10


def test_stream_needs_content_length() -> None:
    parser = StreamParser()
    parser.feed(COMPACT.replace(b"l: 4\r\n", b""))
    with pytest.raises(SipParseError, match="missing Content-Length"):
        parser.next_message()
