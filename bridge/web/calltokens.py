"""Single-use, short-lived call tokens: what lets a browser's offer through (sans-I/O).

The softphone page asks ``POST /webrtc/token`` for one (with the operator's session, or
with nothing when ``[webrtc] public``) and sends it with its offer as
``Authorization: Bearer <token>``. ``redeem`` accepts a token once, before it expires.
Only a digest of each token is kept, at most ``max_outstanding`` of them.
"""

from __future__ import annotations

import hashlib
import secrets

#: Call tokens issued and not yet used or expired, at most.
MAX_OUTSTANDING = 1000
#: Bytes of randomness in a call token.
TOKEN_BYTES = 24


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CallTokens:
    def __init__(self, ttl_s: float, *, max_outstanding: int = MAX_OUTSTANDING) -> None:
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        #: digest -> expiry; issued in time order, so the oldest come first
        self._live: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._live)

    def issue(self, now: float) -> str | None:
        """A new token valid until ``now + ttl_s``; None when too many are outstanding."""
        self._expire(now)
        if len(self._live) >= self.max_outstanding:
            return None
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._live[_digest(token)] = now + self.ttl_s
        return token

    def redeem(self, token: str, now: float) -> bool:
        """True once for a token issued here and not yet expired; it is spent either way."""
        if not token:
            return False
        expiry = self._live.pop(_digest(token), None)
        return expiry is not None and now < expiry

    def _expire(self, now: float) -> None:
        # issued in time order with one lifetime: the first to expire come first
        while self._live:
            digest, expiry = next(iter(self._live.items()))
            if expiry > now:
                return
            del self._live[digest]


__all__ = ["MAX_OUTSTANDING", "CallTokens"]
