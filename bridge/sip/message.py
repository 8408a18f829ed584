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

What does not live here: transaction matching, dialogs, semantics of methods (ua.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import NewType
from urllib.parse import unquote

from bridge.errors import SipParseError

CallId = NewType("CallId", str)
Tag = NewType("Tag", str)
Branch = NewType("Branch", str)

#: RFC 3261 §8.1.1.7: a branch starting with this cookie was made by an RFC 3261 element.
MAGIC_COOKIE = "z9hG4bK"
SIP_VERSION = "SIP/2.0"

MAX_HEADER_BYTES = 64 * 1024       # a header section larger than this is refused (513)
MAX_BODY_BYTES = 256 * 1024        # so is a body larger than this

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
# Characters that can never appear unescaped in a SIP URI (RFC 3261 §25.1 / RFC 2396).
_URI_FORBIDDEN = frozenset(' \t\r\n<>"{}|\\^`')
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)

# RFC 3261 §7.3.3 and the registry of compact forms.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}
_CANONICAL: dict[str, str] = {name.lower(): name for name in (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
    "Identity-Info", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires",
    "Organization", "Priority", "Proxy-Authenticate", "Proxy-Authorization",
    "Proxy-Require", "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact",
    "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Session-Expires", "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate", "Min-SE",
)}
# Header fields whose grammar is a comma-separated list (RFC 3261 §7.3.1): several
# header lines of these may be combined, and one line may carry several values.
LIST_HEADERS = frozenset(name.lower() for name in (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
    "In-Reply-To", "Proxy-Require", "Record-Route", "Require", "Route", "Supported",
    "Unsupported", "Via", "Warning", "Reason",
))
# Header fields that must appear at most once (RFC 4475 §3.3.9, multi01).
SINGLE_HEADERS = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length",
                  "Content-Type")


def canonical_name(name: str) -> str:
    """``"v"`` -> ``"Via"``, ``"cSeQ"`` -> ``"CSeq"``; unknown names are kept as given."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return _CANONICAL.get(lower, name)


def is_token(text: str) -> bool:
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)


# --------------------------------------------------------------------------- lexing helpers

def split_list(value: str) -> list[str]:
    """Split a header value on the commas that separate list elements.

    Commas inside quoted strings (with ``\\`` escapes) and inside ``<...>`` do not split.
    Elements are stripped; empty elements are kept (the caller decides whether they are
    an error: RFC 4475 badinv01 has ``;;,;,,`` in a Via).
    """
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError("unterminated quoted string")
    parts.append(value[start:].strip())
    return parts


def _split_semicolons(text: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    parts: list[str] = []
    start = 0
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[start] == '"'``; return (content, end)."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise SipParseError("unterminated quoted string")


def quote(text: str) -> str:
    """Make a quoted-string (RFC 3261 §25.1) of ``text``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


Params = tuple[tuple[str, "str | None"], ...]


def _param(params: Params, name: str) -> str | None:
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return value if value is not None else ""
    return None


def _parse_generic_params(text: str, what: str) -> Params:
    """Parse ``*( SEMI generic-param )``; ``text`` starts at the first ``;`` (or is blank)."""
    pieces = _split_semicolons(text)
    if pieces[0].strip():
        raise SipParseError(f"unexpected text before parameters in {what}")
    params: list[tuple[str, str | None]] = []
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not is_token(name):
            # RFC 4475 badinv01: ";;" and trailing ";" are not generic-params.
            raise SipParseError(f"bad parameter in {what}")
        if not eq:
            params.append((name, None))
            continue
        value = value.strip()
        if value.startswith('"'):
            _content, end = _read_quoted(value, 0)
            if value[end:].strip():
                raise SipParseError(f"bad quoted parameter value in {what}")
        elif value.startswith("["):
            if not value.endswith("]") or not all(c in _IPV6_CHARS for c in value[1:-1]):
                raise SipParseError(f"bad parameter value in {what}")
        elif not is_token(value):
            raise SipParseError(f"bad parameter value in {what}")
        params.append((name, value))
    return tuple(params)


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _check_host(host: str, what: str) -> str:
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 4 or not all(
                c in _IPV6_CHARS for c in host[1:-1]):
            raise SipParseError(f"bad IPv6 reference in {what}")
        return host
    if not host or not all(c in _HOST_CHARS for c in host) or host.startswith(("-", ".")):
        raise SipParseError(f"bad host in {what}")
    return host


def _split_hostport(text: str, what: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipParseError(f"bad IPv6 reference in {what}")
        host, rest = text[:close + 1], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"bad host in {what}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    _check_host(host, what)
    if port_text is None:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise SipParseError(f"bad port in {what}")
    return host, int(port_text)


# --------------------------------------------------------------------------------- URIs

@dataclass(frozen=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1). Text is kept as escaped on the wire."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """Value of URI parameter ``name``: None if absent, ``""`` if it has no value."""
        return _param(self.params, name)

    @property
    def user_unescaped(self) -> str:
        return unquote(self.user or "")

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    def with_params(self, params: Params) -> SipUri:
        return SipUri(self.scheme, self.host, self.user, self.password, self.port, params,
                      self.headers)

    def __str__(self) -> str:
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ":" + self.password
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += _format_params(self.params)
        if self.headers:
            out += "?" + "&".join(f"{k}={v}" for k, v in self.headers)
        return out


@dataclass(frozen=True)
class OtherUri:
    """Any other absolute URI (``tel:``, ``http:``, ``isbn:``...): scheme and opaque rest."""

    scheme: str
    opaque: str

    def param(self, name: str) -> str | None:
        return None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | OtherUri


def parse_uri(text: str) -> Uri:
    """Parse an absolute URI; ``sip``/``sips`` ones into :class:`SipUri`."""
    if not text or any(ch in _URI_FORBIDDEN for ch in text):
        raise SipParseError("bad URI")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme) or not rest:
        raise SipParseError("bad URI scheme")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return OtherUri(scheme, rest)
    # A SIP URI holds at most one unescaped '@' (none is allowed in params or headers),
    # but the user part may hold '?', ';' and ':' (RFC 4475 intmeth, semiuri).
    user: str | None = None
    password: str | None = None
    userinfo, at, hostpart = rest.partition("@")
    if at:
        if "@" in hostpart:
            raise SipParseError("bad URI: more than one '@'")
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
        if not user:
            raise SipParseError("bad URI: empty user")
    else:
        hostpart = userinfo
    hostpart, qmark, header_text = hostpart.partition("?")
    headers: list[tuple[str, str]] = []
    if qmark:
        for item in header_text.split("&"):
            hname, eq, hvalue = item.partition("=")
            if not hname or not eq:
                raise SipParseError("bad URI header")
            headers.append((hname, hvalue))
    hostport, *param_texts = hostpart.split(";")
    host, port = _split_hostport(hostport, "URI")
    params: list[tuple[str, str | None]] = []
    for item in param_texts:
        pname, eq, pvalue = item.partition("=")
        if not pname or (eq and not pvalue):
            raise SipParseError("bad URI parameter")
        params.append((pname, pvalue if eq else None))
    return SipUri(scheme, host, user, password, port, tuple(params), tuple(headers))


# ------------------------------------------------------------------------ header values

@dataclass(frozen=True)
class NameAddr:
    """``name-addr`` or ``addr-spec`` with header parameters (From, To, Contact, Route)."""

    uri: Uri
    display: str | None = None
    params: Params = ()

    @property
    def tag(self) -> Tag | None:
        value = _param(self.params, "tag")
        return Tag(value) if value else None

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        params = tuple(p for p in self.params if p[0].lower() != "tag") + (("tag", tag),)
        return NameAddr(self.uri, self.display, params)

    def __str__(self) -> str:
        display = ""
        if self.display is not None:
            display = (self.display if all(is_token(w) for w in self.display.split())
                       and self.display else quote(self.display)) + " "
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )`` (RFC 3261 §20.10, §20.20)."""
    text = text.strip()
    display: str | None = None
    if text.startswith('"'):
        display, end = _read_quoted(text, 0)
        rest = text[end:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError("display name without <URI>")
        return _parse_bracketed(display, rest)
    lt = text.find("<")
    if lt >= 0:
        words = text[:lt].split()
        # RFC 4475 baddn: an unquoted display name is *(token LWS); "Bell, Alexander" is not.
        if not all(is_token(w) for w in words):
            raise SipParseError("display name must be quoted")
        display = " ".join(words) if words else None
        return _parse_bracketed(display, text[lt:])
    # addr-spec form: RFC 3261 §20.10 says a URI with ',', '?' or ';' MUST be in <>,
    # so everything from the first ';' on belongs to the header field (RFC 4475 regbadct).
    uri_text, semi, param_text = text.partition(";")
    uri_text = uri_text.strip()
    if "?" in uri_text and uri_text.lower().startswith(("sip:", "sips:")):
        raise SipParseError("URI with headers must be enclosed in <>")
    uri = parse_uri(uri_text)
    params = _parse_generic_params(";" + param_text if semi else "", "header parameters")
    return NameAddr(uri, None, params)


def _parse_bracketed(display: str | None, text: str) -> NameAddr:
    gt = text.find(">")
    if gt < 0:
        raise SipParseError("missing '>'")
    inner = text[1:gt]
    if inner != inner.strip():
        # RFC 4475 badaspec: "< sip:t.watson@example.org >" has LWS inside the brackets.
        raise SipParseError("whitespace inside <URI>")
    uri = parse_uri(inner)
    params = _parse_generic_params(text[gt + 1:], "header parameters")
    return NameAddr(uri, display, params)


@dataclass(frozen=True)
class Via:
    """One Via header field value (RFC 3261 §20.42, RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @property
    def branch(self) -> Branch | None:
        value = _param(self.params, "branch")
        return Branch(value) if value else None

    @property
    def received(self) -> str | None:
        return _param(self.params, "received") or None

    @property
    def has_rport(self) -> bool:
        return _param(self.params, "rport") is not None

    @property
    def rport(self) -> int | None:
        value = _param(self.params, "rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def with_received(self, ip: str, port: int) -> Via:
        """Stamp ``received`` (RFC 3261 §18.2.1) and, when asked for, ``rport`` (RFC 3581 §4)."""
        out: list[tuple[str, str | None]] = []
        for key, value in self.params:
            lkey = key.lower()
            if lkey == "received":
                continue
            if lkey == "rport":
                # RFC 3581 §4: "the server MUST insert an rport parameter ... containing the
                # source port of the request" and MUST add received even if it equals sent-by.
                out.append((key, str(port)))
                continue
            out.append((key, value))
        if self.has_rport or self.host != ip:
            out.append(("received", ip))
        return Via(self.transport, self.host, self.port, tuple(out))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_format_params(self.params)}"


_VIA_RE = re.compile(
    r"\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/]+)\s+([^;\s]+)\s*(;.*)?\Z", re.DOTALL)


def parse_via(text: str) -> Via:
    match = _VIA_RE.match(text)
    if match is None:
        raise SipParseError("bad Via")
    proto, version, transport, sent_by, param_text = match.groups()
    if proto.upper() != "SIP" or version != "2.0":
        raise SipParseError("bad Via protocol")
    if not is_token(transport):
        raise SipParseError("bad Via transport")
    host, port = _split_hostport(sent_by, "Via")
    params = _parse_generic_params(param_text or "", "Via")
    rport = _param(params, "rport")
    if rport and (not rport.isdigit() or int(rport) > 65535):
        raise SipParseError("bad Via rport")
    return Via(transport.upper(), host, port, params)


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not is_token(parts[1]):
        raise SipParseError("bad CSeq")
    # RFC 3261 §8.1.1.5: the sequence number MUST be a 32-bit unsigned integer
    # (RFC 4475 scalar02, scalarlg).
    if len(parts[0]) > 10 or int(parts[0]) > 0xFFFFFFFF:
        raise SipParseError("CSeq out of range")
    return CSeq(int(parts[0]), parts[1])


# ------------------------------------------------------------------------------ headers

@dataclass(frozen=True)
class Headers:
    """Ordered header fields; names canonical, lookup case-insensitive."""

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        return cls(tuple((canonical_name(k), v) for k, v in pairs))

    def get(self, name: str) -> str | None:
        lname = canonical_name(name).lower()
        for key, value in self.items:
            if key.lower() == lname:
                return value
        return None

    def get_lines(self, name: str) -> list[str]:
        """Every header line of ``name``, unsplit."""
        lname = canonical_name(name).lower()
        return [v for k, v in self.items if k.lower() == lname]

    def get_list(self, name: str) -> list[str]:
        """Every element of a list header, across lines (empty elements dropped)."""
        return [part for line in self.get_lines(name) for part in split_list(line) if part]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def add(self, name: str, value: str) -> Headers:
        return Headers((*self.items, (canonical_name(name), value)))

    def remove(self, name: str) -> Headers:
        lname = canonical_name(name).lower()
        return Headers(tuple((k, v) for k, v in self.items if k.lower() != lname))

    def replace(self, name: str, value: str) -> Headers:
        """Set ``name`` to one value, in place of the first occurrence (else appended)."""
        cname = canonical_name(name)
        out: list[tuple[str, str]] = []
        done = False
        for key, val in self.items:
            if key.lower() == cname.lower():
                if not done:
                    out.append((cname, value))
                    done = True
                continue
            out.append((key, val))
        if not done:
            out.append((cname, value))
        return Headers(tuple(out))


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
                    raise SipParseError("header section too large", status=513)
                self._scan_from = len(self._buffer)
                return None
            head_end, body_start = found
            if head_end > MAX_HEADER_BYTES:
                raise SipParseError("header section too large", status=513)
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
