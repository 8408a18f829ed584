"""RFC 4475 torture messages: the parser's verdict, and the UAS core's answer.

Outcome per message, with the RFC 4475 section and why where the RFC leaves a choice:

=========  =======  ===========================================================
file       section  outcome
=========  =======  ===========================================================
wsinv      3.1.1.1  parses; fields below; To tag of no dialog of ours -> 481
intmeth    3.1.1.2  parses; unknown method -> 501
esc01      3.1.1.3  parses; the UAS offers the call (escaped user unescaped)
escnull    3.1.1.4  parses; REGISTER is not ours -> 405
esc02      3.1.1.5  parses; ``RE%47IST%45R`` is not REGISTER -> 501
lwsdisp    3.1.1.6  parses; OPTIONS -> 200
longreq    3.1.1.7  parses; the UAS offers the call
dblreq     3.1.1.8  parses the REGISTER, discards the trailing INVITE -> one 405
semiuri    3.1.1.9  parses; ';' in the user part; OPTIONS -> 200
transports 3.1.1.10 parses; five transports; OPTIONS -> 200
mpart01    3.1.1.11 parses; MESSAGE is not ours -> 405
unreason   3.1.1.12 parses (UTF-8 reason); no transaction -> dropped
noreason   3.1.1.13 parses (empty reason); dropped
badinv01   3.1.2.1  rejected: empty Via/Contact params -> 400
clerr      3.1.2.2  rejected (UDP): Content-Length beyond the datagram -> 400
ncl        3.1.2.3  rejected: negative Content-Length -> 400
scalar02   3.1.2.4  rejected: CSeq beyond 2**32-1 -> 400
scalarlg   3.1.2.5  rejected (a response: dropped)
quotbal    3.1.2.6  rejected: unterminated quote -> 400 (we do not guess the quote)
ltgtruri   3.1.2.7  rejected: <> around the Request-URI -> 400
lwsruri    3.1.2.8  rejected: LWS inside the Request-URI -> 400
lwsstart   3.1.2.9  rejected: several SP in the request line -> 400
trws       3.1.2.10 rejected: SP at the end of the request line -> 400
escruri    3.1.2.11 rejected: headers in the Request-URI -> 400
baddate    3.1.2.12 accepted: the RFC says not to reject unless the Date matters, and we
                    never read Date; the UAS offers the call
regbadct   3.1.2.13 rejected: addr-spec with '?' outside <> -> 400 (no guessing)
badaspec   3.1.2.14 rejected: LWS inside <addr-spec> -> 400
baddn      3.1.2.15 rejected: unquoted display name with ',' -> 400
badvers    3.1.2.16 rejected: SIP/7.0 -> 505
mismatch01 3.1.2.17 parses; CSeq method differs -> 400 from the UAS
mismatch02 3.1.2.18 parses; unknown method -> 501 (the RFC prefers it to 400)
bigcode    3.1.2.19 rejected (a response: dropped)
badbranch  3.2.1    parses; bare magic cookie is just a branch; OPTIONS -> 200
insuf      3.3.1    rejected: no From/To/Call-ID -> 400
unkscm     3.3.2    parses; unknown scheme in the Request-URI -> 416
novelsc    3.3.3    parses; a scheme we never serve -> 416
unksm2     3.3.4    parses (isbn:, http:, name: URIs); REGISTER -> 405
bext01     3.3.5    parses; Require we do not support -> 420 with Unsupported
invut      3.3.6    parses; body type unknown -> 415 with Accept
regaut01   3.3.7    parses; REGISTER -> 405
multi01    3.3.8    rejected: several Call-ID/CSeq/To/From -> 400
mcl01      3.3.9    rejected: several Content-Length -> 400
bcast      3.3.10   parses; a response with no transaction -> dropped
zeromf     3.3.11   parses; Max-Forwards 0 at an endpoint is processed -> 200
cparam01   3.3.12   parses; ``unknownparam`` is a Contact param, not a URI param
cparam02   3.3.13   parses; ``unknownparam`` is a URI param
regescrt   3.3.14   parses; escaped Route in the Contact URI's headers
sdp01      3.3.15   parses; Accept without application/sdp -> 406
inv2543    3.4.1    parses (no branch, no tag, no Content-Length); the UAS offers the call
=========  =======  ===========================================================
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import SipParseError
from bridge.sip.message import (
    OtherUri,
    Request,
    Response,
    SipUri,
    StreamParser,
    parse_message,
    parse_response,
)
from bridge.sip.settings import SipSettings
from bridge.sip.ua import IncomingCall, UserAgent

VECTORS = Path(__file__).parent / "vectors" / "rfc4475"

VALID = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq",
         "semiuri", "transports", "mpart01", "unreason", "noreason", "baddate", "mismatch01",
         "mismatch02", "badbranch", "unkscm", "novelsc", "unksm2", "bext01", "invut",
         "regaut01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01",
         "inv2543"]

INVALID = {  # file -> (status, reason)
    "badinv01": (400, "bad parameter in Via"),
    "clerr": (400, "Content-Length larger than the message"),
    "ncl": (400, "bad Content-Length"),
    "scalar02": (400, "CSeq out of range"),
    "scalarlg": (400, "CSeq out of range"),
    "quotbal": (400, "unterminated quoted string"),
    "ltgtruri": (400, "bad URI"),
    "lwsruri": (400, "bad request line"),
    "lwsstart": (400, "bad request line"),
    "trws": (400, "bad request line"),
    "escruri": (400, "headers in Request-URI"),
    "regbadct": (400, "URI with headers must be enclosed in <>"),
    "badaspec": (400, "whitespace inside <URI>"),
    "baddn": (400, "display name must be quoted"),
    "badvers": (505, "SIP version not supported"),
    "bigcode": (400, "bad status code"),
    "insuf": (400, "missing From"),
    "multi01": (400, "multiple Call-ID header fields"),
    "mcl01": (400, "multiple Content-Length values"),
}

# What the UAS core sends back (first final response), or None for "nothing at all".
UAS_ANSWER: dict[str, int | None] = {
    "wsinv": 481,  # it carries a To tag: a request inside a dialog we do not have
    "intmeth": 501, "escnull": 405, "esc02": 501, "lwsdisp": 200, "dblreq": 405,
    "semiuri": 200, "transports": 200, "mpart01": 405, "unreason": None, "noreason": None,
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": None,
    "quotbal": 400, "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400,
    "escruri": 400, "regbadct": 400, "badaspec": 400, "baddn": 400, "badvers": 505,
    "mismatch01": 400, "mismatch02": 501, "bigcode": None, "badbranch": 200, "insuf": 400,
    "unkscm": 416, "novelsc": 416, "unksm2": 405, "bext01": 420, "invut": 415,
    "regaut01": 405, "multi01": 400, "mcl01": 400, "bcast": None, "zeromf": 200,
    "cparam01": 405, "cparam02": 405, "regescrt": 405, "sdp01": 406,
}
OFFERED_CALL = ["esc01", "longreq", "baddate", "inv2543"]


def load(name: str) -> bytes:
    return (VECTORS / f"{name}.dat").read_bytes()


def test_all_49_vectors_are_classified() -> None:
    files = {p.stem for p in VECTORS.glob("*.dat")}
    assert len(files) == 49
    assert files == set(VALID) | set(INVALID)
    assert set(UAS_ANSWER) | set(OFFERED_CALL) == files
    assert not set(UAS_ANSWER) & set(OFFERED_CALL)


@pytest.mark.parametrize("name", VALID)
def test_valid_message_parses(name: str) -> None:
    message = parse_message(load(name))
    assert isinstance(message, Request | Response)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_message_is_rejected(name: str) -> None:
    status, reason = INVALID[name]
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    assert (info.value.status, info.value.reason) == (status, reason)


def _uas_answers(name: str) -> tuple[list[int], list[object]]:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    ua.receive(load(name), ("192.0.2.9", 5060), "udp", now=0.0)
    # Raw status: a 400 copies the malformed fields as they came, so it may not parse.
    statuses = [int(data.split(b" ", 2)[1]) for data, _addr in ua.datagrams_to_send()]
    return statuses, list(ua.events())


@pytest.mark.parametrize("name", sorted(UAS_ANSWER))
def test_uas_answer(name: str) -> None:
    statuses, events = _uas_answers(name)
    expected = UAS_ANSWER[name]
    finals = [s for s in statuses if s >= 200]
    if expected is None:
        assert statuses == []
    else:
        assert finals == [expected]
    assert not any(isinstance(e, IncomingCall) for e in events)


@pytest.mark.parametrize("name", OFFERED_CALL)
def test_uas_offers_the_call(name: str) -> None:
    statuses, events = _uas_answers(name)
    assert statuses == [100]
    calls = [e for e in events if isinstance(e, IncomingCall)]
    assert len(calls) == 1
    assert calls[0].offer is not None
    assert calls[0].offer.media[0].formats[0] == "0"


def test_wsinv_fields() -> None:
    m = parse_message(load("wsinv"))
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert str(m.uri) == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.to.tag == "1918181833n"
    assert m.from_.display == 'J Rosenberg \\"'
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = m.contact[0]
    assert contact.display == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert m.route[0].uri.param("unknown-no-value") == ""
    assert len(m.body) == 150


def test_intmeth_fields() -> None:
    m = parse_message(load("intmeth"))
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.uri.host == "example.com"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escaped_uris() -> None:
    m = parse_message(load("esc01"))
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.user_unescaped == "sips:user@example.com"
    assert isinstance(m.to.uri, SipUri) and m.to.uri.user_unescaped == "user"
    assert m.contact[0].uri.param("n%61me") == "v%61lue%25%34%31"
    m = parse_message(load("escnull"))
    assert [c.uri.user_unescaped for c in m.contact if isinstance(c.uri, SipUri)] == [
        "\x00", "\x00\x00"]
    m = parse_message(load("esc02"))
    assert isinstance(m, Request) and m.method == "RE%47IST%45R"
    # "C%6Fntact" is an unknown header, not a Contact.
    assert len(m.contact) == 2 and m.headers.get("C%6Fntact") is not None


def test_long_values_and_many_vias() -> None:
    m = parse_message(load("longreq"))
    assert len(m.via) == 34
    assert m.via[-1].received == "192.0.2.5"
    assert m.to.uri.param("unknownparam1", ) is not None
    assert len(m.from_.tag or "") > 150


def test_dblreq_discards_the_second_request() -> None:
    m = parse_message(load("dblreq"))
    assert isinstance(m, Request) and m.method == "REGISTER" and m.body == b""


def test_semiuri_user_with_semicolons() -> None:
    m = parse_message(load("semiuri"))
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert (m.uri.user, m.uri.host, m.uri.params) == ("user;par=u%40example.net",
                                                      "example.com", ())
    assert len(m.headers.get_list("Accept")) == 6


def test_transports() -> None:
    m = parse_message(load("transports"))
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_responses_with_odd_reasons() -> None:
    m = parse_message(load("unreason"))
    assert isinstance(m, Response) and m.status == 200
    assert m.reason.startswith("= 2**3 * 5**2 но сто девяносто девять")
    m = parse_message(load("noreason"))
    assert isinstance(m, Response) and (m.status, m.reason) == (100, "")


def test_contact_params_versus_uri_params() -> None:
    c1 = parse_message(load("cparam01")).contact[0]
    assert c1.param("unknownparam") == "" and c1.uri.param("unknownparam") is None
    c2 = parse_message(load("cparam02")).contact[0]
    assert c2.param("unknownparam") is None and c2.uri.param("unknownparam") == ""
    c3 = parse_message(load("regescrt")).contact[0]
    assert isinstance(c3.uri, SipUri)
    assert c3.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)


def test_unknown_schemes_in_headers() -> None:
    m = parse_message(load("unksm2"))
    assert m.to.uri == OtherUri("isbn", "2983792873")
    assert m.from_.uri == OtherUri("http", "//www.example.com")
    assert m.contact[0].uri == OtherUri("name", "John_Smith")


def test_inv2543_body_runs_to_end_of_datagram() -> None:
    data = load("inv2543")
    m = parse_message(data)
    assert "Content-Length" not in m.headers
    assert m.body.startswith(b"v=0") and data.endswith(m.body)
    assert m.via[0].branch is None and m.from_.tag is None


def test_bext01_unsupported_lists_the_required_tags() -> None:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    ua.receive(load("bext01"), ("192.0.2.9", 5060), "udp", now=0.0)
    (data, _), = ua.datagrams_to_send()
    response = parse_response(data)
    assert response.headers.get("Unsupported") == "nothingSupportsThis, nothingSupportsThisEither"


def test_malformed_answer_names_the_reason() -> None:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    ua.receive(load("insuf"), ("192.0.2.95", 5060), "udp", now=0.0)
    (data, addr), = ua.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 400 Bad Request (missing From)\r\n")
    assert b"Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf" in data
    assert addr == ("192.0.2.95", 5060)


# dblreq and inv2543 rely on datagram framing (trailing octets, no Content-Length).
@pytest.mark.parametrize("name", [n for n in VALID if n not in ("dblreq", "inv2543")])
def test_valid_vectors_survive_the_stream_parser_byte_by_byte(name: str) -> None:
    data = load(name)
    parser = StreamParser()
    out = []
    for i in range(len(data)):
        parser.feed(data[i:i + 1])
        while (m := parser.next_message()) is not None:
            out.append(m)
    assert len(out) == 1
    assert out[0].body == parse_message(data).body
