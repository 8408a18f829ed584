"""SIP messages: parse untrusted bytes into typed, frozen values, and serialize them back.

Theory of operation
-------------------
Parsing happens in two steps, both raising only :class:`~bridge.errors.SipParseError`:

1. *Framing* (:func:`split_message`): start line, header lines and body. Header folding
   (RFC 3261 §7.3.1: a line starting with SP/HT continues the previous one) is undone,
   compact names (``v``, ``i``, ``m`` ...) are expanded and names are canonicalised, so
   every later lookup is case-insensitive. The body is bounded by ``Content-Length``; on a
   datagram the rules of §18.3 apply (a shorter packet is an error, extra octets are
   discarded, a missing Content-Length means "the rest of the datagram"); on a stream
   (:class:`StreamParser`) Content-Length is mandatory and frames messages.
2. *Validation* (:func:`parse_message`): the header fields every element needs (Via, From,
   To, Call-ID, CSeq, Max-Forwards, Contact, Route, Record-Route, Content-Length) are
   parsed into frozen values once, at the edge; a message that survives is well formed
   enough for the transaction and dialog layers never to see a surprise.

When step 1 succeeded but step 2 failed, the error is a :class:`MalformedMessage` that
still carries the raw header fields, so that the UAS can answer ``400`` with the reason
(RFC 3261 §8.2.6 needs Via, From, To, Call-ID and CSeq copied from the request).

Header names and values (Via, CSeq, the :class:`Headers` list) are in
:mod:`bridge.sip.headers`, URIs and name-addr values in :mod:`bridge.sip.uri`; this
module re-exports their public names, so ``bridge.sip.message`` stays the one import
for a message and its parts.

What does not live here: transaction matching, dialogs, semantics of methods (ua.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import NewType

from bridge.errors import SipParseError
from bridge.sip.headers import (
    COMPACT_FORMS,
    LIST_HEADERS,
    MAGIC_COOKIE,
    SINGLE_HEADERS,
    Branch,
    CSeq,
    Headers,
    Via,
    canonical_name,
    parse_cseq,
    parse_via,
)
from bridge.sip.uri import (
    NameAddr,
    OtherUri,
    Params,
    SipUri,
    Tag,
    Uri,
    is_token,
    parse_name_addr,
    parse_uri,
    quote,
    split_list,
)

CallId = NewType("CallId", str)

SIP_VERSION = "SIP/2.0"

MAX_HEADER_BYTES = 64 * 1024       # a header section larger than this is refused (513)
MAX_BODY_BYTES = 256 * 1024        # so is a body larger than this

_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)


# ----------------------------------------------------------------------------- messages

class _MessageFields:
    """Typed views over the headers, computed once (shared by Request and Response)."""

    headers: Headers
    body: bytes

    @property
    def start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        return _serialize(self.start_line, self.headers, self.body)

    def _single(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name}")
        return value

    @cached_property
    def via(self) -> tuple[Via, ...]:
        lines = self.headers.get_lines("Via")
        if not lines:
            raise SipParseError("missing Via")
        out: list[Via] = []
        for line in lines:
            for part in split_list(line):
                if not part:
                    raise SipParseError("empty Via value")
                out.append(parse_via(part))
        return tuple(out)

    @cached_property
    def from_(self) -> NameAddr:
        return parse_name_addr(self._single("From"))

    @cached_property
    def to(self) -> NameAddr:
        return parse_name_addr(self._single("To"))

    @cached_property
    def call_id(self) -> CallId:
        value = self._single("Call-ID").strip()
        if not value or any(ch.isspace() for ch in value):
            raise SipParseError("bad Call-ID")
        return CallId(value)

    @cached_property
    def cseq(self) -> CSeq:
        return parse_cseq(self._single("CSeq"))

    @cached_property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit():
            raise SipParseError("bad Max-Forwards")
        # RFC 4475 §3.1.2.4: an out-of-range value may be processed as if absent.
        number = int(value) if len(value) <= 4 else 256
        return number if number <= 255 else None

    def _name_addr_list(self, name: str) -> tuple[NameAddr, ...]:
        out: list[NameAddr] = []
        for line in self.headers.get_lines(name):
            for part in split_list(line):
                if not part:
                    raise SipParseError(f"empty {name} value")
                if part == "*" and name == "Contact":
                    continue
                out.append(parse_name_addr(part))
        return tuple(out)

    @cached_property
    def contact(self) -> tuple[NameAddr, ...]:
        return self._name_addr_list("Contact")

    @cached_property
    def route(self) -> tuple[NameAddr, ...]:
        return self._name_addr_list("Route")

    @cached_property
    def record_route(self) -> tuple[NameAddr, ...]:
        return self._name_addr_list("Record-Route")

    @cached_property
    def content_type(self) -> str | None:
        """Media type, lowercased, parameters dropped (``application/sdp``)."""
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower() or None

    def option_tags(self, name: str) -> tuple[str, ...]:
        return tuple(t.lower() for t in self.headers.get_list(name))


@dataclass(frozen=True, eq=False)
class Request(_MessageFields):
    method: str
    uri: Uri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


@dataclass(frozen=True, eq=False)
class Response(_MessageFields):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Request | Response


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    # Content-Length is always written, and always right (RFC 3261 §20.14: it MUST be
    # present on stream transports; writing it everywhere costs nothing).
    lines = [start_line]
    lines.extend(f"{k}: {v}" for k, v in headers.items if k != "Content-Length")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


class MalformedMessage(SipParseError):
    """A message framed correctly whose fields do not validate.

    Carries what was read so that a UAS can still answer a request with ``status``.
    """

    def __init__(self, reason: str, status: int, *, method: str | None,
                 headers: Headers) -> None:
        super().__init__(reason, status)
        self.method = method
        self.headers = headers


# ------------------------------------------------------------------------------ framing

@dataclass(frozen=True)
class _Framed:
    start_line: str
    headers: Headers
    body: bytes


_LINE_SPLIT = re.compile(rb"\r?\n")


def _find_header_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """Index of the empty line ending the headers, and where the body starts."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return None


def _parse_head(head: bytes | bytearray) -> tuple[str, Headers]:
    decoded = [line.decode("utf-8", "surrogateescape") for line in _LINE_SPLIT.split(head)]
    start_line = decoded[0]
    fields: list[list[str]] = []
    for line in decoded[1:]:
        if line[:1] in (" ", "\t"):
            # RFC 3261 §7.3.1: folded lines are joined with the folding LWS replaced by SP.
            if not fields:
                raise SipParseError("continuation line before the first header")
            fields[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            raise SipParseError("bad header line")
        fields.append([name, value.strip()])
    headers = Headers(tuple((canonical_name(n), v) for n, v in fields))
    return start_line, headers


def _content_length(headers: Headers) -> int | None:
    lines = headers.get_lines("Content-Length")
    if not lines:
        return None
    if len(lines) > 1 or "," in lines[0]:
        # RFC 4475 mcl01: several values frame nothing; the rest cannot be trusted.
        raise SipParseError("multiple Content-Length values")
    value = lines[0].strip()
    if not value.isdigit():
        raise SipParseError("bad Content-Length")  # RFC 4475 ncl: "-999"
    if len(value) > 9 or int(value) > MAX_BODY_BYTES:
        raise SipParseError("body too large", status=513)
    return int(value)


def _strip_leading_crlf(data: bytes) -> bytes:
    # RFC 3261 §7.5: CRLFs before the start line MUST be ignored (keep-alives, §18.3).
    return data.lstrip(b"\r\n")


def split_datagram(data: bytes) -> _Framed:
    """Frame one message from a datagram (RFC 3261 §18.3)."""
    data = _strip_leading_crlf(data)
    if not data:
        raise SipParseError("empty message")
    found = _find_header_end(data)
    if found is None:
        if len(data) > MAX_HEADER_BYTES:
            raise SipParseError("header section too large", status=513)
        # A message with no body may end right after the last header's CRLF.
        if data.endswith(b"\n"):
            end = len(data.rstrip(b"\r\n"))
            found = (end, len(data))
        else:
            raise SipParseError("truncated header section")
    head_end, body_start = found
    if head_end > MAX_HEADER_BYTES:
        raise SipParseError("header section too large", status=513)
    start_line, headers = _parse_head(data[:head_end])
    rest = data[body_start:]
    try:
        length = _content_length(headers)
    except SipParseError as exc:
        # On a datagram a bad Content-Length spoils only this message: answer it.
        raise MalformedMessage(exc.reason, exc.status, method=_method_of(start_line),
                               headers=headers) from None
    if length is None:
        # RFC 3261 §18.3: with no Content-Length on a datagram the body runs to the end.
        body = rest
    elif len(rest) < length:
        # RFC 3261 §18.3: "If the transport packet ends before the end of the message
        # body, this is considered an error" -> 400 (RFC 4475 clerr).
        raise MalformedMessage("Content-Length larger than the message", 400,
                               method=_method_of(start_line), headers=headers)
    else:
        body = rest[:length]  # extra octets are discarded (RFC 4475 dblreq)
    if len(body) > MAX_BODY_BYTES:
        raise SipParseError("body too large", status=513)
    return _Framed(start_line, headers, body)


def _method_of(start_line: str) -> str | None:
    if start_line.upper().startswith("SIP/"):
        return None
    first = start_line.split(" ", 1)[0]
    return first if is_token(first) else None


class StreamParser:
    """Frames messages out of a byte stream (SIP over TCP), one chunk at a time.

    ``feed(data)`` buffers; ``next_message()`` returns the next whole message or None.
    A framing error raises :class:`SipParseError` and the stream cannot be resynchronised:
    it must be closed (RFC 4475 ncl, mcl01). A framed message whose fields do not
    validate raises :class:`MalformedMessage` and the stream goes on after it.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._head: tuple[str, Headers] | None = None
        self._length = 0
        self._scan_from = 0
        self.broken = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def in_progress(self) -> bool:
        """A message has begun and is not complete yet (after :meth:`next_message`)."""
        return bool(self._buffer) or self._head is not None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> Message | None:
        if self.broken:
            raise SipParseError("stream already failed")
        try:
            framed = self._next_framed()
        except SipParseError:
            self.broken = True
            raise
        except (ValueError, IndexError, UnicodeError) as exc:  # defence in depth
            self.broken = True
            raise SipParseError(f"unparsable message ({type(exc).__name__})") from None
        return None if framed is None else _build_checked(framed)

    def _next_framed(self) -> _Framed | None:
        if self._head is None:
            # Leading CRLFs are keep-alives (RFC 5626 §3.5.1) or §7.5 noise.
            skip = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
            if skip:
                del self._buffer[:skip]
                self._scan_from = 0
            found = _find_header_end(self._buffer, max(0, self._scan_from - 3))
            if found is None:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise _too_large(self._buffer)
                self._scan_from = len(self._buffer)
                return None
            head_end, body_start = found
            if head_end > MAX_HEADER_BYTES:
                raise _too_large(self._buffer)
            start_line, headers = _parse_head(self._buffer[:head_end])
            try:
                length = _content_length(headers)
                if length is None:
                    # RFC 3261 §18.3: on a stream, Content-Length MUST be used to frame.
                    raise SipParseError("missing Content-Length on a stream transport")
            except SipParseError as exc:
                # Answerable (the headers are here), but the stream is lost after it.
                raise MalformedMessage(exc.reason, exc.status,
                                       method=_method_of(start_line), headers=headers) from None
            del self._buffer[:body_start]
            self._head = (start_line, headers)
            self._length = length
            self._scan_from = 0
        if len(self._buffer) < self._length:
            return None
        start_line, headers = self._head
        body = bytes(self._buffer[:self._length])
        del self._buffer[:self._length]
        self._head = None
        return _Framed(start_line, headers, body)


def _too_large(data: bytes | bytearray) -> SipParseError:
    """513 for a header section over the limit on a stream; a :class:`MalformedMessage`
    (answerable) when the start line and the whole header lines before the limit parse
    and include a Via, so a response can be formed before the connection is closed."""
    reason = "header section too large"
    cut = data.rfind(b"\n", 0, MAX_HEADER_BYTES)
    if cut <= 0:
        return SipParseError(reason, status=513)
    try:
        start_line, headers = _parse_head(data[:cut].rstrip(b"\r"))
    except (SipParseError, ValueError, UnicodeError):
        return SipParseError(reason, status=513)
    if not headers.get_lines("Via"):
        return SipParseError(reason, status=513)
    return MalformedMessage(reason, 513, method=_method_of(start_line), headers=headers)


# ----------------------------------------------------------------------------- building

def _parse_start_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if parts[0].upper().startswith("SIP/"):
        # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (may be empty: noreason)
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SipParseError("bad status line")
        return parts[0], parts[1], parts[2] if len(parts) == 3 else ""
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF: exactly one SP between
    # elements and none at the end (RFC 4475 lwsstart, trws, lwsruri).
    if len(parts) != 3 or not all(parts):
        raise SipParseError("bad request line")
    return parts[0], parts[1], parts[2]


def _check_version(version: str) -> None:
    match = _VERSION_RE.match(version)
    if match is None:
        raise SipParseError("bad SIP version")
    if match.groups() != ("2", "0"):
        raise SipParseError("SIP version not supported", status=505)  # RFC 4475 badvers


_REQUIRED = ("via", "from_", "to", "call_id", "cseq")


def _build(framed: _Framed) -> Message:
    """Start line and validation; errors carry the raw headers (MalformedMessage)."""
    method = _method_of(framed.start_line)
    try:
        return _build_unchecked(framed)
    except MalformedMessage:
        raise
    except SipParseError as exc:
        raise MalformedMessage(exc.reason, exc.status, method=method,
                               headers=framed.headers) from None


def _build_unchecked(framed: _Framed) -> Message:
    a, b, c = _parse_start_line(framed.start_line)
    message: Message
    if a.upper().startswith("SIP/"):
        _check_version(a)
        # Status-Code = 3DIGIT (RFC 4475 bigcode: 4294967301 is dropped).
        if len(b) != 3 or not b.isdigit() or not 100 <= int(b) <= 699:
            raise SipParseError("bad status code")
        message = Response(int(b), c, framed.headers, framed.body)
    else:
        if not is_token(a):
            raise SipParseError("bad method")
        _check_version(c)
        uri = parse_uri(b)
        if isinstance(uri, SipUri) and uri.headers:
            # RFC 3261 §19.1.1 table 1: headers are not allowed in a Request-URI
            # (RFC 4475 escruri).
            raise SipParseError("headers in Request-URI")
        message = Request(a, uri, framed.headers, framed.body)
    _validate(message)
    return message


def _validate(message: Message) -> None:
    for name in SINGLE_HEADERS:
        if len(message.headers.get_lines(name)) > 1:
            raise SipParseError(f"multiple {name} header fields")  # RFC 4475 multi01
    for attr in _REQUIRED:
        getattr(message, attr)  # parses, or raises "missing X" / "bad X"
    _ = message.max_forwards
    _ = message.contact
    _ = message.route
    _ = message.record_route


def _build_checked(framed: _Framed) -> Message:
    try:
        return _build(framed)
    except SipParseError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # defence in depth
        raise SipParseError(f"unparsable message ({type(exc).__name__})") from None


def parse_message(data: bytes) -> Message:
    """Parse one whole message from a datagram (or any complete buffer)."""
    try:
        framed = split_datagram(data)
    except SipParseError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # defence in depth
        raise SipParseError(f"unparsable message ({type(exc).__name__})") from None
    return _build_checked(framed)


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    if not isinstance(message, Request):
        raise SipParseError("not a request")
    return message


def parse_response(data: bytes) -> Response:
    message = parse_message(data)
    if not isinstance(message, Response):
        raise SipParseError("not a response")
    return message


#: Reason phrases of RFC 3261 §21 and the extensions we send.
REASONS: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    408: "Request Timeout", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "Version Not Supported", 513: "Message Too Large",
    603: "Decline",
}


def reason_phrase(status: int) -> str:
    return REASONS.get(status, "Unknown")


__all__ = [
    "COMPACT_FORMS", "LIST_HEADERS", "MAGIC_COOKIE", "MAX_BODY_BYTES", "MAX_HEADER_BYTES",
    "REASONS", "SINGLE_HEADERS", "SIP_VERSION", "Branch", "CSeq", "CallId", "Headers",
    "MalformedMessage", "Message", "NameAddr", "OtherUri", "Params", "Request", "Response",
    "SipUri", "StreamParser", "Tag", "Uri", "Via", "canonical_name", "is_token",
    "parse_cseq", "parse_message", "parse_name_addr", "parse_request", "parse_response",
    "parse_uri", "parse_via", "quote", "reason_phrase", "split_datagram", "split_list",
]
