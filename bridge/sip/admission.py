"""Who may start a call, and when: the SIP admission decision, sans-I/O.

:class:`Gate` decides on each new out-of-dialog request (the user agent asks through
:class:`bridge.sip.service.SipService`) from what the adapter tells it (the method, the
source address, ``now``, the counts of calls) and returns a :class:`Refusal` or None. In
this order:

1. the source allowlist (``allow_from``, plus the ``match`` addresses of the
   ``[[sip.trunks]]`` when ``allow_from`` is set): ``403`` to any request from elsewhere;
2. draining (after SIGTERM): an INVITE gets ``503`` with Retry-After, and so does OPTIONS,
   so a load balancer's health probe (Kamailio's dispatcher, OpenSIPS' load balancer)
   takes this bridge out of its set while the live calls finish; at capacity
   (``max_calls``, or the call manager full) OPTIONS gets ``503`` too, for the same
   reason: the balancer sends the next INVITE to another node;
3. the per-source INVITE rate (:class:`RateLimiter`, a token bucket per source address):
   ``503`` with Retry-After the time until the next token;
4. INVITEs not yet confirmed by an ACK, from this source and from everyone (ringing, or
   answered and waiting up to 64*T1 for the ACK): ``503``, so a peer that never ACKs
   cannot fill ``max_calls`` with calls that will never be live;
5. the call limit (``max_calls``, and whatever the call manager says): ``503``.

The per-source limits (3 and 4) count the *caller*: the source address, or, for a request
relayed by one of ``trusted_proxies`` (a SIP proxy in front of the bridge), the address
that proxy received it from (:func:`caller_of`), so one busy proxy is not throttled as if
it were one noisy caller.

Each refusal names its ``reason``: the label it is counted under in
``voicebridge_calls_rejected_total`` and the key of its throttled log line.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from bridge.sip.settings import SipSettings

#: Retry-After (seconds) on a 503 for capacity, unconfirmed INVITEs and draining.
RETRY_AFTER_S = 5
#: Source addresses whose token bucket is remembered; past this the full ones are
#: forgotten first, then the oldest (a spray from many addresses must not grow it).
RATE_SOURCES = 4096


@dataclass(frozen=True)
class Refusal:
    """A new request refused: the status, the Retry-After (if any) and why; ``phrase`` and
    ``extra`` headers when the answer needs them (a digest challenge, see
    :mod:`bridge.sip.trunkauth`)."""

    status: int
    reason: str
    retry_after: int | None = None
    phrase: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after is None:
            return self.extra
        return (("Retry-After", str(self.retry_after)),) + self.extra


class RateLimiter:
    """A token bucket per source: ``rate`` tokens a second, at most ``burst`` held."""

    def __init__(self, rate: float, burst: int, *, max_sources: int = RATE_SOURCES) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._max_sources = max_sources
        #: source -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, source: str, now: float) -> float:
        """Take a token for ``source``: 0.0 when there was one, else the seconds until
        there will be one (nothing is taken then)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(source)
        if bucket is None:
            self._make_room(now)
            tokens = float(self.burst)
        else:
            tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        if tokens >= 1.0:
            self._buckets[source] = (tokens - 1.0, now)
            return 0.0
        self._buckets[source] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self._max_sources:
            return
        full = [s for s, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for source in full:           # a full bucket is the same as no bucket
            del self._buckets[source]
        while len(self._buckets) >= self._max_sources:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class Load:
    """What the adapter counts when a request arrives."""

    #: Calls from the INVITE to their end (``max_calls`` counts these).
    calls: int
    #: Calls not yet confirmed by an ACK, from everyone and from this request's source.
    unacked: int
    unacked_from_source: int
    #: The call manager can take one more call (False: 503).
    can_admit: bool = True


class Gate:
    """The admission decision (see the module docstring)."""

    def __init__(self, settings: SipSettings) -> None:
        self.settings = settings
        # A trunk's ``match`` addresses are let in too when there is an allowlist: naming
        # a trunk is saying it may call (without an allowlist everyone may).
        allow = settings.allow_from
        if allow:
            allow = allow + tuple(c for t in settings.trunks for c in t.match)
        self._allow = tuple(ipaddress.ip_network(c, strict=False) for c in allow)
        self.rate = RateLimiter(settings.invite_rate_per_source,
                                settings.invite_burst_per_source)
        #: Set when the bridge drains (SIGTERM): no new calls, OPTIONS says 503.
        self.draining = False

    def allowed(self, source: str) -> bool:
        if not self._allow:
            return True
        try:
            address = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._allow)

    def check(self, method: str, source: str, now: float, load: Load,
              caller: str | None = None) -> Refusal | None:
        """Refuse a new out-of-dialog ``method`` from ``source``, or None to let it in;
        ``caller`` (default ``source``) is who the per-source limits count."""
        if not self.allowed(source):
            return Refusal(403, "sip_forbidden")
        if self.draining and method in ("INVITE", "OPTIONS"):
            return Refusal(503, "draining", RETRY_AFTER_S)
        if method == "OPTIONS" and (load.calls >= self.settings.max_calls
                                    or not load.can_admit):
            return Refusal(503, "at_capacity", RETRY_AFTER_S)
        if method != "INVITE":
            return None
        wait = self.rate.take(caller or source, now)
        if wait > 0:
            return Refusal(503, "sip_rate_limited", max(1, math.ceil(wait)))
        s = self.settings
        if load.unacked_from_source >= s.max_unacked_per_source or load.unacked >= s.max_unacked:
            return Refusal(503, "sip_unacked_limit", RETRY_AFTER_S)
        if load.calls >= s.max_calls or not load.can_admit:
            return Refusal(503, "sip_busy", RETRY_AFTER_S)
        return None


__all__ = ["Gate", "Load", "RETRY_AFTER_S", "RateLimiter", "Refusal"]
