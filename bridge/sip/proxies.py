"""Who the caller is behind a trusted SIP proxy (``[sip] trusted_proxies``), sans-I/O.

A proxy in front of the bridge (Kamailio's dispatcher, see ``deploy/kamailio/``) relays
every caller's INVITE from its own address, so the per-source limits (INVITE rate,
unconfirmed INVITEs) would count all callers as one. For a request whose source is one of
``trusted_proxies``, the caller is the hop the proxy received the request from: the Via
just below the proxy's own (the second Via), by its ``received`` parameter when the proxy
stamped one (RFC 3261 §18.2.1: the real source, whatever the caller wrote), else its
sent-by host. A request from anywhere else is counted by its source address, as before.
Only the proxy's own Via is believed: a caller cannot pick its count by writing Vias,
because the one read is the one the trusted proxy received it with.
"""

from __future__ import annotations

import ipaddress

from bridge.sip.message import Request


class TrustedProxies:
    """The ``trusted_proxies`` networks and the caller-of-a-request rule above."""

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self._nets = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def trusted(self, source: str) -> bool:
        if not self._nets:
            return False
        try:
            address = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in net for net in self._nets)

    def caller_of(self, request: Request, source: str) -> str:
        """Who the per-source limits count for ``request`` received from ``source``."""
        if not self.trusted(source):
            return source
        vias = request.via
        if len(vias) < 2:
            return source               # the proxy's own request (a probe, say)
        hop = vias[1]
        return hop.received or hop.host.strip("[]")


__all__ = ["TrustedProxies"]
