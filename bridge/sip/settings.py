"""The SIP settings: one frozen value read by the loader, the service and the user agent.

``[sip]`` of ``voicebridge.toml`` (and its ``VOICEBRIDGE_SIP_*`` overrides) is read by
``bridge.config`` straight into :class:`SipSettings`; ``bridge.serve`` hands that same value
to :class:`bridge.sip.service.SipService`, which hands it to
:class:`bridge.sip.ua.UserAgent`. Nothing copies fields from one type to another.

Some fields are not read from the file (``user_agent``, ``timers``,
``symmetric_requests``): they are fixed by the program and varied only by tests. They carry
:data:`NOT_IN_FILE` in their field metadata, and the loader leaves them alone
(:func:`file_keys`).

This module imports nothing from the rest of the SIP package, so the configuration loader
can import it without pulling in the parser, and the SIP modules can import it without a
cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridge import __version__
from bridge.errors import ConfigError
from bridge.sip.lines import SRTP_POLICIES, Account, Trunk

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: The codecs a SIP call may use (``[sip] codecs`` chooses among them, in order).
SIP_CODECS = ("g722", "pcmu", "pcma")

#: Field metadata of a setting the configuration file does not offer.
NOT_IN_FILE = {"file": False}


@dataclass(frozen=True)
class Timers:
    """RFC 3261 §17.1.1.1 defaults: T1 is the RTT estimate, T2 the cap, T4 the max lifetime."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def b(self) -> float:           # also F, H, J, L
        return 64 * self.t1


@dataclass(frozen=True)
class SipSettings:
    """SIP over UDP, TCP and TLS for inbound calls (``[sip]`` of the settings file)."""

    enabled: bool = True
    #: The bind address, for UDP and TCP alike.
    host: str = "0.0.0.0"
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    #: The address written in Via, Contact and SDP (NAT); default: the bound address, or
    #: with a wildcard bind, per caller, our address that caller reached.
    public_address: str | None = None
    #: Above this many calls an INVITE gets 503 with Retry-After.
    max_calls: int = 200
    #: CIDRs allowed to send us requests; empty allows everyone. Others get 403.
    allow_from: tuple[str, ...] = ()
    #: Latch RTP onto the first packet from any address. Off, RTP may latch from the
    #: SDP address or the address the call's signalling came from, which is enough for
    #: callers behind NAT that call us directly; on, for media from anywhere else (a
    #: caller behind NAT through a proxy that does not anchor media), at the price of
    #: letting whoever sends first at call start take the stream.
    latch_any: bool = False
    #: Ring before answering: send ``180 Ringing`` and wait this long (a caller may CANCEL
    #: meanwhile). 0 answers at once, without a 180.
    ring_ms: int = 0
    #: Answer once the call's Realtime session is ready (it is opened as the INVITE comes
    #: in), ringing meanwhile, but wait no longer than this; 0 answers without waiting.
    answer_wait_ms: int = 2000
    #: SIP/TCP connections open at once, from all peers; more are closed as they arrive.
    tcp_max_connections: int = 256
    #: SIP/TCP connections open at once from one source address.
    tcp_max_per_source: int = 32
    #: A message begun on a SIP/TCP connection must be complete within this many seconds
    #: (slowloris: bytes trickling in), else the connection is closed.
    tcp_message_timeout_s: int = 10
    #: A SIP/TCP connection with no message for this many seconds is closed (not while a
    #: call set up over it is live: its BYE and re-INVITEs come over it).
    tcp_idle_timeout_s: int = 120
    #: INVITEs not yet confirmed by an ACK (ringing, or answered and waiting for the ACK
    #: for up to 64*T1 = 32 s) at once, from everyone and from one source address; past
    #: these an INVITE gets 503 with Retry-After, so they cannot fill ``max_calls``.
    max_unacked: int = 20
    max_unacked_per_source: int = 4
    #: New INVITEs per second one source address may send (a token bucket this fast,
    #: holding ``invite_burst_per_source``); past it 503 with Retry-After. 0: no limit.
    invite_rate_per_source: int = 10
    invite_burst_per_source: int = 20
    #: On SIGTERM/SIGINT, live calls may go on for this many seconds (new ones get 503)
    #: before each remaining one is ended with a BYE; a second signal ends them at once.
    drain_s: int = 30
    #: SIP over TLS (``"tls"`` in ``transports``): the port it listens on (on ``host``).
    tls_port: int = 5061
    #: Our certificate chain and its private key, PEM files (needed for ``"tls"``).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA certificates (PEM) that client certificates and the servers we connect to are
    #: checked against; unset: the system's store (and no client certificate accepted).
    tls_ca: str | None = None
    #: Require and verify a client certificate (against ``tls_ca``) on every connection.
    tls_verify_client: bool = False
    #: A TLS handshake must finish within this many seconds, else the connection closes.
    tls_handshake_timeout_s: int = 10
    #: CIDRs of SIP proxies in front of the bridge (Kamailio): for requests from these the
    #: per-source limits count the caller the proxy received the request from (its Via),
    #: not the proxy. They must also be in ``allow_from`` if that is set.
    trusted_proxies: tuple[str, ...] = ()
    #: ``[[sip.accounts]]``: registrations the bridge keeps up (:mod:`bridge.sip.lines`).
    accounts: tuple[Account, ...] = ()
    #: ``[[sip.trunks]]``: peers that call us, known by source address.
    trunks: tuple[Trunk, ...] = ()
    #: SRTP policy (off, accept, require) of calls from no ``[[sip.trunks]]`` entry, and
    #: whether their SDES keys may come over plain UDP/TCP (see :mod:`bridge.sip.srtp_policy`).
    srtp: str = "off"
    sdes_over_plain: bool = False
    #: Session timers (RFC 4028): the interval we ask for (a caller's longer one is
    #: lowered to it) and the shortest we accept (shorter: 422 with Min-SE). The RFC's
    #: floor is 90 s; values below it are for tests and labs only.
    session_expires_s: int = 1800
    min_se_s: int = 90
    #: The codecs we answer and offer with, in our order of preference (``SIP_CODECS``);
    #: between PCMU and PCMA the caller's order decides (see ``bridge.sip.sdp``).
    codecs: tuple[str, ...] = ("g722", "pcmu", "pcma")
    #: What we write in Server and User-Agent.
    user_agent: str = field(default=f"voicebridge/{__version__}", metadata=NOT_IN_FILE)
    #: Transaction timers (T1, T2, T4).
    timers: Timers = field(default=Timers(), metadata=NOT_IN_FILE)
    #: Send requests inside a dialog without a route set back to the address the INVITE
    #: came from rather than to its Contact (which is often a private address behind NAT).
    symmetric_requests: bool = field(default=True, metadata=NOT_IN_FILE)

    def __post_init__(self) -> None:
        if (not self.codecs or len(set(self.codecs)) != len(self.codecs)
                or not set(self.codecs) <= set(SIP_CODECS)):
            raise ConfigError(f"[sip] codecs: choose from {', '.join(SIP_CODECS)}, each "
                              f"once (got {list(self.codecs)})")
        for name in _NOT_NEGATIVE:
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"[sip] {name}: must not be negative (got {value})")
        if self.srtp not in SRTP_POLICIES:
            raise ConfigError(f"[sip] srtp: choose from {', '.join(SRTP_POLICIES)} "
                              f"(got {self.srtp!r})")
        if not 1 <= self.min_se_s <= self.session_expires_s:
            raise ConfigError(f"[sip] min_se_s: must be from 1 to session_expires_s "
                              f"({self.session_expires_s}), got {self.min_se_s}")


#: The limits above that must be 0 or more (0 for the rate: no limit).
_NOT_NEGATIVE = ("tcp_max_connections", "tcp_max_per_source", "tcp_message_timeout_s",
                 "tcp_idle_timeout_s", "max_unacked", "max_unacked_per_source",
                 "invite_rate_per_source", "invite_burst_per_source", "drain_s",
                 "tls_handshake_timeout_s")


def file_keys(cls: type[DataclassInstance]) -> tuple[str, ...]:
    """The fields of settings dataclass ``cls`` that the configuration file offers."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("file", True))


__all__ = ["NOT_IN_FILE", "SIP_CODECS", "SipSettings", "Timers", "file_keys"]
