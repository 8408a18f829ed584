"""The lines the bridge answers: SIP accounts it registers and trunks that call it.

Two tables of ``[sip]`` in ``voicebridge.toml``:

- ``[[sip.accounts]]``: an account at a provider or an extension on a PBX, to which the
  bridge registers (RFC 3261 §10) with a user name and a password read from the
  environment variable ``password_env``. Calls that arrive through that registration go to
  the dialplan the account names.
- ``[[sip.trunks]]``: a peer that sends calls to the bridge's address (an IP-authenticated
  trunk, a PBX), recognised by the source address of its requests. A trunk may require
  digest authentication of its requests, and sets the SRTP policy of its calls.

Like :mod:`bridge.sip.settings`, this module imports nothing from the rest of the SIP
package, so the configuration loader can read these tables without the parser.

Passwords are never in the file: only the name of the environment variable that holds one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bridge.errors import ConfigError

#: SRTP policies: ``off`` plain RTP only (an RTP/SAVP offer is refused with 488);
#: ``accept`` answer SRTP when a caller offers it, plain RTP otherwise; ``require`` refuse a
#: call that does not offer SRTP (488).
SRTP_POLICIES = ("off", "accept", "require")
TRANSPORTS = ("udp", "tcp", "tls")
#: Digest algorithms a trunk's challenges may offer (RFC 8760), one challenge each.
DIGEST_ALGORITHMS = ("SHA-256", "MD5")


@dataclass(frozen=True)
class Account:
    """One ``[[sip.accounts]]`` table: a registration the bridge keeps up."""

    #: The registrar, a SIP URI: ``sip:pbx.example.net``, ``sips:sip.example.com:5061``.
    registrar: str
    #: The user part of the address of record (``sip:user@domain``).
    user: str
    #: The user name for digest authentication; default: ``user``.
    auth_user: str | None = None
    #: The environment variable that holds the password (never the password itself).
    password_env: str = ""
    #: ``udp``, ``tcp`` or ``tls`` (``sips:`` registrars imply ``tls``).
    transport: str = "udp"
    #: The registration lifetime we ask for, in seconds; refreshed before it runs out.
    expires: int = 600
    #: The dialplan for calls that arrive through this registration ("" = by number).
    dialplan: str = ""
    #: SRTP policy for calls through this account (see :data:`SRTP_POLICIES`).
    srtp: str = "off"
    #: The domain of the address of record; default: the registrar's host.
    domain: str = ""

    def __post_init__(self) -> None:
        where = f"[[sip.accounts]] {self.user or '?'}"
        if not self.registrar.startswith(("sip:", "sips:")):
            raise ConfigError(f"{where}: registrar must be a sip: or sips: URI "
                              f"(got {self.registrar!r})")
        if not self.user:
            raise ConfigError(f"{where}: user is required")
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"{where}: transport: choose from {', '.join(TRANSPORTS)} "
                              f"(got {self.transport!r})")
        if self.srtp not in SRTP_POLICIES:
            raise ConfigError(f"{where}: srtp: choose from {', '.join(SRTP_POLICIES)} "
                              f"(got {self.srtp!r})")
        if not 60 <= self.expires <= 86400:
            raise ConfigError(f"{where}: expires: between 60 and 86400 seconds "
                              f"(got {self.expires})")
        if not self.password_env:
            raise ConfigError(f"{where}: password_env: name the environment variable that "
                              "holds the password (passwords are never in the file)")

    @property
    def login(self) -> str:
        """The digest user name."""
        return self.auth_user or self.user


@dataclass(frozen=True)
class Trunk:
    """One ``[[sip.trunks]]`` table: a peer that calls us, known by its source address."""

    #: A name for logs, metrics and the dashboard.
    name: str
    #: CIDRs the trunk's requests come from (``["192.0.2.0/28"]``).
    match: tuple[str, ...] = ()
    #: The dialplan for this trunk's calls ("" = by number).
    dialplan: str = ""
    #: Require digest authentication of the trunk's INVITEs (and other requests outside a
    #: dialog) with this user name; the password is in ``password_env``. "" = no digest.
    auth_user: str = ""
    password_env: str = ""
    #: The realm of our challenges; default: the trunk's name.
    realm: str = ""
    #: The algorithms our challenges offer, one challenge each, in this order (a client
    #: takes the first it supports; some old ones take the first whatever it is).
    digest_algorithms: tuple[str, ...] = DIGEST_ALGORITHMS
    #: SRTP policy for the trunk's calls (see :data:`SRTP_POLICIES`).
    srtp: str = "off"
    #: Accept SDES keys (``a=crypto``) in SDP that came over plain UDP or TCP, where anyone
    #: on the path can read them. Off: such an offer is refused (488) unless it came over TLS.
    sdes_over_plain: bool = False

    def __post_init__(self) -> None:
        where = f"[[sip.trunks]] {self.name or '?'}"
        if not self.name:
            raise ConfigError(f"{where}: name is required")
        for cidr in self.match:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{where}: match: {exc}") from None
        if self.srtp not in SRTP_POLICIES:
            raise ConfigError(f"{where}: srtp: choose from {', '.join(SRTP_POLICIES)} "
                              f"(got {self.srtp!r})")
        if not self.digest_algorithms or not set(self.digest_algorithms) <= set(
                DIGEST_ALGORITHMS):
            raise ConfigError(f"{where}: digest_algorithms: choose from "
                              f"{', '.join(DIGEST_ALGORITHMS)} (got {self.digest_algorithms!r})")
        if bool(self.auth_user) != bool(self.password_env):
            raise ConfigError(f"{where}: auth_user and password_env go together")

    def matches(self, ip: str) -> bool:
        """Whether a request from ``ip`` belongs to this trunk."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d: still the trunk.
            address = address.ipv4_mapped
        return any(address in ipaddress.ip_network(c, strict=False) for c in self.match)


def trunk_for(trunks: tuple[Trunk, ...], ip: str) -> Trunk | None:
    """The first trunk whose ``match`` holds ``ip``, or None."""
    for trunk in trunks:
        if trunk.matches(ip):
            return trunk
    return None


__all__ = ["DIGEST_ALGORITHMS", "SRTP_POLICIES", "TRANSPORTS", "Account", "Trunk", "trunk_for"]
