"""Digest authentication of a trunk's INVITEs (RFC 3261 §22.2, RFC 7616), sans-I/O.

A ``[[sip.trunks]]`` entry with ``auth_user`` wants the INVITEs that come from its
``match`` addresses to prove they know its password, the way a PBX authenticates toward a
provider's trunk. :class:`TrunkAuth` decides on one request from what the adapter passes
(the request, its source address and ``now``) and answers None (let it in) or a
:class:`~bridge.sip.admission.Refusal` carrying the status, its ``reason`` (the counter
label and the throttled log line's key) and the challenge headers:

* no credentials for our realm: ``401`` with one ``WWW-Authenticate`` challenge per
  algorithm of the trunk's ``digest_algorithms`` (SHA-256, then MD5, by default; RFC 8760
  §2.4: the client takes the first it supports), all ``qop="auth"``
  (``sip_auth_required``);
* an ``Authorization`` that does not parse, or whose ``uri`` is not a URI or whose
  ``nc`` is not hex: ``400`` (``sip_auth_malformed``);
* a nonce we did not issue (another source, another process): a fresh ``401``
  (``sip_auth_nonce``); one we issued but older than :data:`NONCE_TTL_S`: ``401`` with
  ``stale=true`` (``sip_auth_stale``), so the caller retries without asking anyone for a
  password;
* a nonce count not above the last one accepted for that nonce (a replayed INVITE):
  ``401`` with ``stale=true`` (``sip_auth_replay``);
* another user name, no ``qop=auth`` or a wrong response: ``403`` (``sip_auth_failed``).

Nonces are stateless: ``<issued ms, hex>.<HMAC-SHA-256(process secret, issued, source,
realm)>``, so a nonce is only good from the address it was issued to, and nothing is kept
for a challenge nobody answers. What is kept is the last nonce count accepted per nonce
(:class:`NonceCounts`), at most :data:`NONCE_MEMORY` nonces; a nonce pushed out of it is
answered ``stale=true`` from then on (its replays cannot come back in).

Only INVITEs are challenged: OPTIONS keep-alives start nothing, and requests inside a
dialog belong to a call whose INVITE was authenticated. Passwords are read once, at start,
from the variables the trunks name (:func:`load_passwords`); a missing one is a
:class:`~bridge.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping

from bridge.errors import ConfigError, SipParseError
from bridge.sip import digest
from bridge.sip.admission import Refusal
from bridge.sip.lines import Trunk, trunk_for
from bridge.sip.message import Request, parse_uri, quote

#: How long a nonce is good for (seconds); after that it is answered ``stale=true``.
NONCE_TTL_S = 300.0
#: Nonces whose last nonce count is remembered (replay protection).
NONCE_MEMORY = 4096
#: Methods a trunk with ``auth_user`` must authenticate.
AUTH_METHODS = frozenset({"INVITE"})


def load_passwords(trunks: tuple[Trunk, ...], env: Mapping[str, str]) -> dict[str, str]:
    """Each authenticating trunk's password, by trunk name, read from ``env``."""
    passwords: dict[str, str] = {}
    for trunk in trunks:
        if not trunk.auth_user:
            continue
        value = env.get(trunk.password_env)
        if not value:
            raise ConfigError(f"[[sip.trunks]] {trunk.name}: password_env: the environment "
                              f"variable {trunk.password_env} is not set (or empty)")
        passwords[trunk.name] = value
    return passwords


def realm_of(trunk: Trunk) -> str:
    return trunk.realm or trunk.name


class NonceMint:
    """Issues and checks stateless nonces bound to a source address and a realm."""

    def __init__(self, secret: bytes | None = None, *, ttl_s: float = NONCE_TTL_S) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _mac(self, issued: str, source: str, realm: str) -> str:
        text = f"{issued}|{source}|{realm}".encode()
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:32]

    def issue(self, source: str, realm: str, now: float) -> str:
        issued = f"{max(0, int(now * 1000)):x}"
        return f"{issued}.{self._mac(issued, source, realm)}"

    def check(self, nonce: str, source: str, realm: str, now: float) -> str:
        """``"ok"``, ``"stale"`` (ours, too old) or ``"unknown"`` (not ours)."""
        issued, dot, mac = nonce.partition(".")
        if not dot or not issued or len(issued) > 16:
            return "unknown"
        if not hmac.compare_digest(mac.encode(), self._mac(issued, source, realm).encode()):
            return "unknown"
        try:
            age = now - int(issued, 16) / 1000
        except ValueError:
            return "unknown"
        return "ok" if -1.0 <= age <= self.ttl_s else "stale"

    @staticmethod
    def issued_at(nonce: str) -> float:
        try:
            return int(nonce.partition(".")[0], 16) / 1000
        except ValueError:
            return float("inf")


class NonceCounts:
    """The highest nonce count accepted per nonce, bounded (see the module docstring)."""

    def __init__(self, size: int = NONCE_MEMORY) -> None:
        self._size = size
        self._counts: OrderedDict[str, int] = OrderedDict()
        #: Nonces issued at or before this time may have been forgotten: refuse them.
        self._forgotten_until = float("-inf")

    def fresh(self, nonce: str, nc: int) -> bool:
        """Whether ``nc`` is new for ``nonce`` (nothing is recorded)."""
        last = self._counts.get(nonce)
        if last is None:
            return NonceMint.issued_at(nonce) > self._forgotten_until
        return nc > last

    def accept(self, nonce: str, nc: int) -> None:
        self._counts[nonce] = nc
        self._counts.move_to_end(nonce)
        while len(self._counts) > self._size:
            old, _ = self._counts.popitem(last=False)
            self._forgotten_until = max(self._forgotten_until, NonceMint.issued_at(old))

    def __len__(self) -> int:
        return len(self._counts)


class TrunkAuth:
    """The inbound digest check of every trunk with ``auth_user`` (module docstring)."""

    def __init__(self, trunks: tuple[Trunk, ...], passwords: Mapping[str, str], *,
                 mint: NonceMint | None = None, counts: NonceCounts | None = None) -> None:
        self.trunks = trunks
        self._passwords = dict(passwords)
        self.mint = NonceMint() if mint is None else mint
        self.counts = NonceCounts() if counts is None else counts

    @classmethod
    def from_env(cls, trunks: tuple[Trunk, ...], env: Mapping[str, str]) -> TrunkAuth | None:
        """None when no trunk authenticates (nothing to check)."""
        if not any(t.auth_user for t in trunks):
            return None
        return cls(trunks, load_passwords(trunks, env))

    def password(self, trunk: Trunk) -> str | None:
        return self._passwords.get(trunk.name)

    def challenge(self, trunk: Trunk, source: str, now: float, *, stale: bool = False
                  ) -> tuple[tuple[str, str], ...]:
        """The ``WWW-Authenticate`` headers of a 401 (one per algorithm)."""
        realm = realm_of(trunk)
        nonce = self.mint.issue(source, realm, now)
        tail = ", stale=true" if stale else ""
        return tuple(("WWW-Authenticate",
                      f'Digest realm={quote(realm)}, nonce="{nonce}", '
                      f'algorithm={algorithm}, qop="auth"{tail}')
                     for algorithm in trunk.digest_algorithms)

    def check(self, request: Request, source: str, now: float) -> Refusal | None:
        """None to let ``request`` from ``source`` in, else the refusal to answer."""
        trunk = trunk_for(self.trunks, source) if request.method in AUTH_METHODS else None
        if trunk is None or not trunk.auth_user:
            return None
        password = self._passwords[trunk.name]
        realm = realm_of(trunk)
        try:
            ours = [c for c in (digest.parse_credentials(v) for v in
                                request.headers.get_lines("Authorization"))
                    if c.realm == realm]
        except SipParseError as exc:
            return Refusal(400, "sip_auth_malformed", phrase=f"Bad Request ({exc.reason})")
        if not ours:
            return self._challenge(trunk, source, now, "sip_auth_required")
        return self._verify(ours[0], request, trunk, password=password, source=source,
                            now=now)

    def _challenge(self, trunk: Trunk, source: str, now: float, reason: str, *,
                   stale: bool = False) -> Refusal:
        return Refusal(401, reason, extra=self.challenge(trunk, source, now, stale=stale))

    def _verify(self, creds: digest.Credentials, request: Request, trunk: Trunk, *,
                password: str, source: str, now: float) -> Refusal | None:
        try:
            # The uri is covered by the response hash, but it is not compared with the
            # Request-URI: a proxy may have rewritten that (a dispatcher), and some clients
            # write the next hop's address there (SIPp). Replays are stopped by the nonce,
            # bound to the source, and its count.
            parse_uri(creds.uri)
            nc = int(creds.nc, 16) if creds.nc is not None else 0
        except (SipParseError, ValueError):
            return Refusal(400, "sip_auth_malformed", phrase="Bad Request (bad Authorization)")
        state = self.mint.check(creds.nonce, source, realm_of(trunk), now)
        if state != "ok":
            stale = state == "stale"
            return self._challenge(trunk, source, now,
                                   "sip_auth_stale" if stale else "sip_auth_nonce", stale=stale)
        if creds.username != trunk.auth_user or creds.qop != "auth" or not digest.verify(
                creds, method=request.method, password=password):
            return Refusal(403, "sip_auth_failed")
        if not self.counts.fresh(creds.nonce, nc):
            return self._challenge(trunk, source, now, "sip_auth_replay", stale=True)
        self.counts.accept(creds.nonce, nc)
        return None


__all__ = ["AUTH_METHODS", "NONCE_MEMORY", "NONCE_TTL_S", "NonceCounts",
           "NonceMint", "TrunkAuth", "load_passwords", "realm_of"]
