"""SIP URIs and the values built on them: lexing of header values, ``sip:``/``sips:`` and
other URIs, ``name-addr`` with its parameters (From, To, Contact, Route).

Everything here parses untrusted text into frozen values and raises only
:class:`~bridge.errors.SipParseError`; every value serializes back with ``str()``. The
grammar is RFC 3261 §19.1 and §25.1, with the strictness the RFC 4475 torture messages ask
for (an unquoted display name with a comma, whitespace inside ``<...>``, ``;;`` among
parameters, headers in an addr-spec all refuse the message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType
from urllib.parse import unquote

from bridge.errors import SipParseError

Tag = NewType("Tag", str)

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
# Characters that can never appear unescaped in a SIP URI (RFC 3261 §25.1 / RFC 2396).
_URI_FORBIDDEN = frozenset(' \t\r\n<>"{}|\\^`')
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")


def is_token(text: str) -> bool:
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)


# --------------------------------------------------------------------------- lexing helpers

def split_list(value: str) -> list[str]:
    """Split a header value on the commas that separate list elements.

    Commas inside quoted strings (with ``\\`` escapes) and inside ``<...>`` do not split.
    Elements are stripped; empty elements are kept (the caller decides whether they are
    an error: RFC 4475 badinv01 has ``;;,;,,`` in a Via).
    """
    return [part.strip() for part in _split_outside(value, ",", angles=True)]


def _split_semicolons(text: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    return _split_outside(text, ";", angles=False)


def _split_outside(text: str, sep: str, *, angles: bool) -> list[str]:
    """Split ``text`` on ``sep`` outside quoted strings (``\\`` escapes inside them) and,
    with ``angles``, outside ``<...>``. A quoted string left open is a parse error."""
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif angles and ch == "<":
            in_angle = True
        elif angles and ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def read_quoted(text: str, start: int) -> tuple[str, int]:
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


def param_value(params: Params, name: str) -> str | None:
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return value if value is not None else ""
    return None


def parse_params(text: str, what: str) -> Params:
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
            _content, end = read_quoted(value, 0)
            if value[end:].strip():
                raise SipParseError(f"bad quoted parameter value in {what}")
        elif value.startswith("["):
            if not value.endswith("]") or not all(c in _IPV6_CHARS for c in value[1:-1]):
                raise SipParseError(f"bad parameter value in {what}")
        elif not is_token(value):
            raise SipParseError(f"bad parameter value in {what}")
        params.append((name, value))
    return tuple(params)


def format_params(params: Params) -> str:
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


def split_hostport(text: str, what: str) -> tuple[str, int | None]:
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
        return param_value(self.params, name)

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
        out += format_params(self.params)
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
    host, port = split_hostport(hostport, "URI")
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
        value = param_value(self.params, "tag")
        return Tag(value) if value else None

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        params = tuple(p for p in self.params if p[0].lower() != "tag") + (("tag", tag),)
        return NameAddr(self.uri, self.display, params)

    def __str__(self) -> str:
        display = ""
        if self.display is not None:
            display = (self.display if all(is_token(w) for w in self.display.split())
                       and self.display else quote(self.display)) + " "
        return f"{display}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )`` (RFC 3261 §20.10, §20.20)."""
    text = text.strip()
    display: str | None = None
    if text.startswith('"'):
        display, end = read_quoted(text, 0)
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
    params = parse_params(";" + param_text if semi else "", "header parameters")
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
    params = parse_params(text[gt + 1:], "header parameters")
    return NameAddr(uri, display, params)


__all__ = ["NameAddr", "OtherUri", "Params", "SipUri", "Tag", "Uri", "format_params",
           "is_token", "param_value", "parse_name_addr", "parse_params", "parse_uri", "quote",
           "read_quoted", "split_hostport", "split_list"]
