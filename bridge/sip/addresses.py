"""Which of our addresses a peer should be told about (Via, Contact, SDP).

With a wildcard bind and no configured public address, the bridge advertises, per peer,
its own address toward that peer, as the routing table picks it (``local_address_toward``:
a UDP ``connect`` sends nothing); ``plain_host`` normalises what sockets report;
``public_guess`` is the fallback when nothing else is known.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from bridge.sip.events import Address

log = logging.getLogger("bridge.sip.service")

WILDCARDS = ("0.0.0.0", "::", "")


def plain_host(host: str) -> str:
    """``host`` as it goes in SIP and SDP: an IPv4-mapped IPv6 address (a dual-stack
    socket's view of an IPv4 peer) as IPv4, without an IPv6 zone (``%eth0``)."""
    host = host.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


def local_address_toward(peer: Address) -> str | None:
    """The source address the routing table picks toward ``peer``, or None (no route).

    ``connect`` on a UDP socket only looks the route up and fixes the source address; it
    sends nothing, so this costs no traffic and needs no answer from the peer.
    """
    host = plain_host(peer[0])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, peer[1] or 9))
            return plain_host(str(probe.getsockname()[0]))
    except OSError as exc:
        log.debug("no route toward %s (%s)", host, exc)
        return None


def public_guess(bound: str) -> str:
    """The address to advertise when none is configured: the bound one, unless wildcard."""
    if bound not in WILDCARDS:
        return bound
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


__all__ = ["WILDCARDS", "local_address_toward", "plain_host", "public_guess"]
