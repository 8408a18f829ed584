"""SIP header fields: names, the ordered field list, and the values every element reads.

Names: compact forms (``v``, ``i``, ``m`` ...) expand and names are canonicalised, so every
lookup in :class:`Headers` is case-insensitive. Values: :class:`Via` (with ``received`` and
``rport``, RFC 3581) and :class:`CSeq`; URIs and name-addr values are in
:mod:`bridge.sip.uri`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NewType

from bridge.errors import SipParseError
from bridge.sip.uri import (
    Params,
    format_params,
    is_token,
    param_value,
    parse_params,
    split_hostport,
    split_list,
)

Branch = NewType("Branch", str)

#: RFC 3261 §8.1.1.7: a branch starting with this cookie was made by an RFC 3261 element.
MAGIC_COOKIE = "z9hG4bK"

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



@dataclass(frozen=True)
class Via:
    """One Via header field value (RFC 3261 §20.42, RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @property
    def branch(self) -> Branch | None:
        value = param_value(self.params, "branch")
        return Branch(value) if value else None

    @property
    def received(self) -> str | None:
        return param_value(self.params, "received") or None

    @property
    def has_rport(self) -> bool:
        return param_value(self.params, "rport") is not None

    @property
    def rport(self) -> int | None:
        value = param_value(self.params, "rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

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
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


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
    host, port = split_hostport(sent_by, "Via")
    params = parse_params(param_text or "", "Via")
    rport = param_value(params, "rport")
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


__all__ = ["COMPACT_FORMS", "CSeq", "Branch", "Headers", "LIST_HEADERS", "MAGIC_COOKIE",
           "SINGLE_HEADERS", "Via", "canonical_name", "parse_cseq", "parse_via"]
