"""SDES keys for SRTP: the SDP ``a=crypto`` attribute (RFC 4568), sans-I/O.

The building block of SRTP with keys exchanged in the SDP, as SIP providers and desk
phones do it. ``parse_crypto(value)`` reads one attribute value::

    1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoc3|2^20|1:4

into a :class:`CryptoAttribute`: the tag, the suite (``AES_CM_128_HMAC_SHA1_80`` or
``_32``; others raise, so an offer listing several is answered with one we can do), the
30-byte master key and salt (base64, checked for length), the optional lifetime and MKI,
and any session parameters (``UNENCRYPTED_SRTP`` and friends, which the bridge refuses to
honour: a crypto line that turns encryption off is no crypto line). ``format_crypto``
writes ours, from key bytes the caller draws from ``secrets``.

Key material never appears in ``repr`` or in error messages. :class:`SdesError` is an
``SdpError``: an offer whose only crypto lines are unusable is answered 488.
:class:`SdesKeys` is what a call settles on (our line and the far end's); the policy that
decides when a call gets SRTP is :mod:`bridge.sip.srtp_policy`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field

from bridge.errors import SdpError

#: suite -> (pylibsrtp profile name, auth tag bytes)
SUITES: dict[str, tuple[str, int]] = {
    "AES_CM_128_HMAC_SHA1_80": ("SRTP_PROFILE_AES128_CM_SHA1_80", 10),
    "AES_CM_128_HMAC_SHA1_32": ("SRTP_PROFILE_AES128_CM_SHA1_32", 4),
}
KEY_SALT_BYTES = 30                 # 16-byte master key + 14-byte master salt
#: Session parameters that weaken the protection: never accepted.
WEAKENING = frozenset({"UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"})
_LINE = re.compile(r"^\s*(\d{1,9})\s+([A-Za-z0-9_]+)\s+(\S+)(?:\s+(.*))?$")
_LIFETIME = re.compile(r"^(?:2\^(\d{1,2})|(\d{1,19}))$")
_MKI = re.compile(r"^(\d{1,9}):(\d{1,3})$")


class SdesError(SdpError):
    """An ``a=crypto`` line that cannot be used (answered 488 if none is usable)."""


@dataclass(frozen=True)
class CryptoAttribute:
    tag: int
    suite: str
    key_salt: bytes = field(repr=False)
    lifetime: int | None = None          # packets
    mki: tuple[int, int] | None = None   # (value, length in bytes)
    session_params: tuple[str, ...] = ()

    @property
    def profile(self) -> str:
        """The ``pylibsrtp.Policy`` profile attribute name for this suite."""
        return SUITES[self.suite][0]

    @property
    def tag_bytes(self) -> int:
        return SUITES[self.suite][1]


@dataclass(frozen=True)
class SdesKeys:
    """The keys of one SRTP call: ``local`` is the line we sent (it protects what we send),
    ``remote`` the far end's (it unprotects what we receive). No key in its ``repr``."""

    local: CryptoAttribute
    remote: CryptoAttribute

    @property
    def suite(self) -> str:
        return self.local.suite

    def line(self) -> str:
        """Our ``a=crypto`` value."""
        return format_crypto(self.local.tag, self.local.suite, self.local.key_salt)


def fresh(tag: int, suite: str) -> CryptoAttribute:
    """A new line of ours: a key and salt from ``secrets``."""
    return parse_crypto(format_crypto(tag, suite, secrets.token_bytes(KEY_SALT_BYTES)))


def parse_crypto(value: str) -> CryptoAttribute:
    """One ``a=crypto`` value (what follows ``a=crypto:``)."""
    m = _LINE.match(value)
    if m is None:
        raise SdesError("a=crypto: not 'tag suite key-params'")
    tag, suite, key_params, rest = int(m[1]), m[2].upper(), m[3], m[4] or ""
    if suite not in SUITES:
        raise SdesError(f"a=crypto: unsupported suite {suite[:40]}")
    if ";" in key_params:
        raise SdesError("a=crypto: more than one key is not supported")
    if not key_params.startswith("inline:"):
        raise SdesError("a=crypto: the key method must be inline")
    parts = key_params[len("inline:"):].split("|")
    if len(parts) > 3:
        raise SdesError("a=crypto: too many key parameters")
    key_salt = _key(parts[0])
    lifetime, mki = None, None
    for extra in parts[1:]:
        if (lm := _LIFETIME.match(extra)) is not None:
            lifetime = 2 ** int(lm[1]) if lm[1] else int(lm[2])
        elif (mm := _MKI.match(extra)) is not None:
            mki = (int(mm[1]), int(mm[2]))
            if not 1 <= mki[1] <= 128:
                raise SdesError("a=crypto: MKI length out of range")
        else:
            raise SdesError("a=crypto: unreadable lifetime or MKI")
    params = tuple(rest.split())
    weak = WEAKENING.intersection(p.upper() for p in params)
    if weak:
        raise SdesError(f"a=crypto: {', '.join(sorted(weak))} is refused")
    return CryptoAttribute(tag, suite, key_salt, lifetime, mki, params)


def _key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SdesError("a=crypto: the key is not base64") from None
    if len(raw) != KEY_SALT_BYTES:
        raise SdesError(f"a=crypto: the key and salt must be {KEY_SALT_BYTES} bytes")
    return raw


def format_crypto(tag: int, suite: str, key_salt: bytes) -> str:
    """Our ``a=crypto`` value for ``key_salt`` (30 bytes from ``secrets.token_bytes``)."""
    if suite not in SUITES:
        raise SdesError(f"unsupported suite {suite}")
    if len(key_salt) != KEY_SALT_BYTES:
        raise SdesError(f"the key and salt must be {KEY_SALT_BYTES} bytes")
    return f"{tag} {suite} inline:{base64.b64encode(key_salt).decode()}"


def choose(offered: list[str], suites: tuple[str, ...] = tuple(SUITES)) -> CryptoAttribute:
    """The first usable line of an offer, in the offer's order, among ``suites``; the
    reasons of the others are dropped (an offer may list suites we do not do)."""
    for value in offered:
        try:
            attr = parse_crypto(value)
        except SdesError:
            continue
        if attr.suite in suites:
            return attr
    raise SdesError("no usable a=crypto line in the offer")


__all__ = ["KEY_SALT_BYTES", "SUITES", "CryptoAttribute", "SdesError", "SdesKeys", "choose",
           "format_crypto", "fresh", "parse_crypto"]
