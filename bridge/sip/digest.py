"""HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 7616, RFC 8760), sans-I/O.

The building block for registering with a provider and for answering a 401/407 to our
own requests (the client side), and for challenging a PBX that authenticates toward us
(the server side). Strings in, strings out; no clock, no socket, no randomness of its own
(the caller passes the ``cnonce``).

* ``parse_challenge(value)``: a ``WWW-Authenticate`` / ``Proxy-Authenticate`` value ->
  :class:`Challenge` (``realm``, ``nonce``, ``algorithm`` MD5 / SHA-256 and their
  ``-sess`` forms, ``qop`` options, ``opaque``, ``stale``).
* ``authorization(challenge, ...)``: the ``Authorization`` / ``Proxy-Authorization``
  value answering it. With ``qop=auth`` the nonce count ``nc`` and the client nonce are
  included; without ``qop`` (RFC 2069 style, still met on SIP trunks) they are not.
  ``auth-int`` is not offered: a server that allows only ``auth-int`` is refused.
* ``parse_credentials(value)`` and ``verify(credentials, method, password)``: the
  server side, comparing in constant time.

Malformed input raises :class:`DigestError` (a ``SipParseError``: a request carrying it
is answered 400). Values are never logged: a response hash is a password equivalent for
its nonce.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from bridge.errors import SipParseError

HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda b: hashlib.md5(b, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
}
#: The longest header value parsed (a challenge is a few hundred bytes).
MAX_VALUE = 4096


class DigestError(SipParseError):
    """A Digest challenge or credentials header that cannot be used."""


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"          # MD5, SHA-256, or either with -sess
    qop: tuple[str, ...] = ()       # offered: "auth", "auth-int"
    opaque: str | None = None
    stale: bool = False


@dataclass(frozen=True)
class Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


def _params(value: str) -> dict[str, str]:
    """``Digest k=v, k="quoted, with \\"escapes\\""`` -> {k: v}; names lower-cased."""
    if len(value) > MAX_VALUE:
        raise DigestError("Digest header too long")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest header ({scheme[:20]!r})")
    out: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise DigestError("Digest parameter without a value")
        name = rest[i:eq].strip().lower()
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise DigestError("bad Digest parameter name")
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i, text = _quoted(rest, i + 1)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            text, i = rest[i:end].strip(), end
        if name in out:
            raise DigestError(f"Digest parameter {name} given twice")
        out[name] = text
    return out


def _quoted(text: str, i: int) -> tuple[int, str]:
    chars: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            chars.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return i + 1, "".join(chars)
        chars.append(c)
        i += 1
    raise DigestError("unterminated quoted string in a Digest header")


def _need(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise DigestError(f"Digest {name} missing")
    return value


def _algorithm(params: dict[str, str]) -> str:
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm.removesuffix("-SESS") not in HASHES:
        raise DigestError(f"unsupported Digest algorithm {algorithm[:20]!r}")
    return algorithm


def parse_challenge(value: str) -> Challenge:
    p = _params(value)
    qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
    return Challenge(realm=_need(p, "realm"), nonce=_need(p, "nonce"),
                     algorithm=_algorithm(p), qop=qop, opaque=p.get("opaque"),
                     stale=p.get("stale", "").lower() == "true")


def parse_credentials(value: str) -> Credentials:
    p = _params(value)
    qop = p.get("qop")
    if qop is not None and (p.get("nc") is None or p.get("cnonce") is None):
        raise DigestError("Digest qop without nc and cnonce")
    return Credentials(username=_need(p, "username"), realm=_need(p, "realm"),
                       nonce=_need(p, "nonce"), uri=_need(p, "uri"),
                       response=_need(p, "response").lower(), algorithm=_algorithm(p),
                       qop=qop, nc=p.get("nc"), cnonce=p.get("cnonce"),
                       opaque=p.get("opaque"))


def response_hash(*, algorithm: str, username: str, realm: str, password: str, method: str,
                  uri: str, nonce: str, qop: str | None = None, nc: str | None = None,
                  cnonce: str | None = None) -> str:
    """The ``response`` value (RFC 7616 §3.4.1, and RFC 2069 without ``qop``)."""
    h = HASHES[algorithm.upper().removesuffix("-SESS")]
    ha1 = h(f"{username}:{realm}:{password}".encode())
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce or ''}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(challenge: Challenge, *, method: str, uri: str, username: str,
                  password: str, cnonce: str, nc: int = 1) -> str:
    """The header value answering ``challenge`` for ``method`` ``uri``."""
    if challenge.qop and "auth" not in challenge.qop:
        raise DigestError("the server allows only qop=auth-int, which is not supported")
    qop = "auth" if challenge.qop else None
    if qop is None and challenge.algorithm.upper().endswith("-SESS"):
        # -sess mixes the client nonce into HA1, but without qop no cnonce is sent
        # (RFC 2617 §3.2.2): the server could never check the answer.
        raise DigestError("a -sess algorithm without qop cannot be answered")
    nc_text = f"{nc:08x}"
    response = response_hash(algorithm=challenge.algorithm, username=username,
                             realm=challenge.realm, password=password, method=method,
                             uri=uri, nonce=challenge.nonce, qop=qop, nc=nc_text,
                             cnonce=cnonce)
    parts = [f"username={_q(username)}", f"realm={_q(challenge.realm)}",
             f"nonce={_q(challenge.nonce)}", f"uri={_q(uri)}", f"response={_q(response)}",
             f"algorithm={challenge.algorithm}"]
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_text}", f"cnonce={_q(cnonce)}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_q(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def verify(credentials: Credentials, *, method: str, password: str) -> bool:
    """Whether ``credentials`` prove knowledge of ``password`` for ``method`` (the caller
    checks the nonce is one it issued and still fresh, and the realm its own)."""
    expected = response_hash(algorithm=credentials.algorithm, username=credentials.username,
                             realm=credentials.realm, password=password, method=method,
                             uri=credentials.uri, nonce=credentials.nonce,
                             qop=credentials.qop, nc=credentials.nc,
                             cnonce=credentials.cnonce)
    return hmac.compare_digest(expected.encode(), credentials.response.encode())


__all__ = ["HASHES", "Challenge", "Credentials", "DigestError", "authorization",
           "parse_challenge", "parse_credentials", "response_hash", "verify"]
