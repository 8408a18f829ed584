"""When a SIP call gets SRTP, and the SDP that says so (SDES, RFC 4568), sans-I/O.

Theory of operation
-------------------
Each call has a policy (:func:`policy_for`): that of the ``[[sip.trunks]]`` entry its
INVITE came from, else the ``[sip]`` default (``srtp``, ``sdes_over_plain``). A policy
is one of:

* ``off``: plain RTP (RTP/AVP) only; an offer with nothing but RTP/SAVP gets 488;
* ``accept``: the offer's first usable audio stream, plain or SRTP, answered in kind;
* ``require``: RTP/SAVP with a usable ``a=crypto`` line, or 488.

SDES puts the keys in the SDP in the clear, so an offer with keys that came over plain
UDP or TCP (anyone on the path can read them) is refused with 488 unless the policy's
``sdes_over_plain`` allows it; over TLS it is always fine. (With ``accept`` such an offer
is still answered with plain RTP when it also has a plain stream.)

:func:`answer` answers an INVITE's offer under a policy: it picks the stream, chooses the
offer's first usable crypto line, draws a fresh key of ours (``secrets``) in the same suite
with the same tag (a line with an MKI is passed over: the libsrtp sessions here carry
none), adds our one ``a=crypto`` line to the answer and puts both lines in
:attr:`NegotiatedMedia.srtp` for the RTP endpoint. Every refusal is a
:class:`SrtpRefused` (an ``SdpError``: 488) naming a ``reason`` for the rejection counter.

:func:`reanswer` answers a re-INVITE of an established call: an SRTP call stays SRTP and a
plain call stays plain (switching is refused with 488, which leaves the session as it
was). The same remote key keeps both keys, and so the SRTP sessions and their counters;
a new remote key (re-keying) gets a fresh key of ours too, so no keystream is ever used
twice.

An INVITE without an offer gets our plain offer; under ``require`` it is refused (we do
not offer SRTP ourselves).

No key is ever logged: log lines name the suite and the reason only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from bridge.errors import SdpError
from bridge.logthrottle import Throttle
from bridge.sip.lines import Account, trunk_for
from bridge.sip.sdes import CryptoAttribute, SdesError, SdesKeys, choose, fresh, parse_crypto
from bridge.sip.sdp import (
    PLAIN_RTP,
    SRTP,
    MediaDescription,
    NegotiatedMedia,
    SessionDescription,
    answer_offer,
)
from bridge.sip.settings import SipSettings

log = logging.getLogger("bridge.sip.srtp")
_throttled = Throttle(log)
#: Transports that keep SDES keys from the eyes of the path.
SECURE_TRANSPORTS = ("tls",)


class SrtpRefused(SdpError):
    """An offer the call's SRTP policy refuses (488); ``reason`` labels the counter."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SrtpPolicy:
    """What one call may do: ``mode`` off/accept/require; SDES keys over plain transports."""

    mode: str = "off"
    sdes_over_plain: bool = False
    #: Where the policy came from, for logs: ``trunk NAME``, ``account USER``, ``default``.
    origin: str = "default"


def policy_for(settings: SipSettings, source_ip: str, account: Account | None = None
               ) -> SrtpPolicy:
    """The policy of a call from ``source_ip`` (through ``account``, when it came in
    through one of our registrations): account, else trunk, else the ``[sip]`` default.
    An account has no ``sdes_over_plain`` of its own: the default's applies."""
    if account is not None:
        return SrtpPolicy(account.srtp, settings.sdes_over_plain, f"account {account.user}")
    trunk = trunk_for(settings.trunks, source_ip)
    if trunk is not None:
        return SrtpPolicy(trunk.srtp, trunk.sdes_over_plain, f"trunk {trunk.name}")
    return SrtpPolicy(settings.srtp, settings.sdes_over_plain)


def _offered(offer: SessionDescription, protos: tuple[str, ...]) -> bool:
    return any(m.media == "audio" and m.port != 0 and m.proto.upper() in protos
               for m in offer.media)


def _protos(offer: SessionDescription, policy: SrtpPolicy, transport: str
            ) -> tuple[str, ...]:
    """The stream transports we may answer with, or SrtpRefused."""
    keys_safe = transport.lower() in SECURE_TRANSPORTS or policy.sdes_over_plain
    plain, secure = _offered(offer, PLAIN_RTP), _offered(offer, SRTP)
    if policy.mode == "off":
        if secure and not plain:
            raise SrtpRefused("SRTP is off for this caller", "sip_srtp_off")
        return PLAIN_RTP
    if secure and not keys_safe and (policy.mode == "require" or not plain):
        raise SrtpRefused("SDES keys over an unencrypted transport are refused",
                          "sip_sdes_over_plain")
    if policy.mode == "require":
        if not secure:
            raise SrtpRefused("SRTP (RTP/SAVP with a=crypto) is required", "sip_srtp_required")
        return SRTP
    return PLAIN_RTP + SRTP if keys_safe else PLAIN_RTP


def _chosen(offer: SessionDescription, answer: SessionDescription) -> MediaDescription:
    """The offered stream the answer took (the one it did not refuse with port 0)."""
    for offered, answered in zip(offer.media, answer.media, strict=True):
        if answered.port != 0:
            return offered
    raise SdpError("no stream was answered")  # pragma: no cover - answer_offer picks one


def _with_keys(answer: SessionDescription, media: NegotiatedMedia, keys: SdesKeys
               ) -> tuple[SessionDescription, NegotiatedMedia]:
    streams = tuple(replace(m, attributes=(*m.attributes, ("crypto", keys.line())))
                    if m.port != 0 else m for m in answer.media)
    return replace(answer, media=streams), replace(media, srtp=keys)


def _crypto_lines(m: MediaDescription) -> list[str]:
    """The stream's ``a=crypto`` values we could key: lines with an MKI are left out
    (its packets would carry a key identifier our libsrtp sessions are not set up for)."""
    lines = []
    for value in m.attr("crypto"):
        try:
            if value and parse_crypto(value).mki is None:
                lines.append(value)
        except SdesError:
            continue
    return lines


def answer(offer: SessionDescription, policy: SrtpPolicy, transport: str, *,
           source: str = "", **kwargs: Any) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an INVITE's ``offer`` under ``policy`` (see the module doc); ``kwargs`` go to
    :func:`~bridge.sip.sdp.answer_offer`. Raises SrtpRefused or SdpError (488)."""
    try:
        protos = _protos(offer, policy, transport)
        sdp, media = answer_offer(offer, protos=protos, **kwargs)
        stream = _chosen(offer, sdp)
        if stream.proto.upper() not in SRTP:
            return sdp, media
        try:
            remote = choose(_crypto_lines(stream))
        except SdesError:
            raise SrtpRefused("no usable a=crypto line (AES_CM_128_HMAC_SHA1_80 or _32)",
                              "sip_srtp_no_crypto") from None
        keys = SdesKeys(fresh(remote.tag, remote.suite), remote)
        log.debug("SRTP %s for a call from %s (%s)", keys.suite, source, policy.origin)
        return _with_keys(sdp, media, keys)
    except SrtpRefused as exc:
        _throttled.log(logging.INFO, exc.reason, "call from %s refused (488): %s (%s, %s)",
                       source, exc, policy.origin, transport)
        raise


def offer_allowed(policy: SrtpPolicy) -> None:
    """An INVITE without an offer gets our plain offer: refused under ``require``."""
    if policy.mode == "require":
        raise SrtpRefused("SRTP is required and we offer plain RTP only: send an offer",
                          "sip_srtp_required")


def reanswer(offer: SessionDescription, current: NegotiatedMedia | None, **kwargs: Any
             ) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer a re-INVITE's ``offer`` of a call that has ``current`` media (module doc)."""
    keys = current.srtp if current is not None else None
    if keys is None:
        return answer_offer(offer, protos=PLAIN_RTP, **kwargs)
    sdp, media = answer_offer(offer, protos=SRTP, **kwargs)
    lines = _crypto_lines(_chosen(offer, sdp))
    try:
        remote = _same_key(lines, keys.remote) or choose(lines)
    except SdesError:
        raise SdpError("no usable a=crypto line in the re-INVITE") from None
    if remote.key_salt == keys.remote.key_salt and remote.suite == keys.remote.suite:
        local = replace(keys.local, tag=remote.tag)       # same keys, same sessions
    else:
        local = fresh(remote.tag, remote.suite)           # re-keyed: new keys both ways
        log.info("SRTP re-keyed by a re-INVITE (%s)", remote.suite)
    return _with_keys(sdp, media, SdesKeys(local, remote))


def _same_key(lines: list[str], current: CryptoAttribute) -> CryptoAttribute | None:
    """The offered line that keeps the current remote key, if any."""
    for value in lines:
        try:
            attr = choose([value])
        except SdesError:
            continue
        if attr.key_salt == current.key_salt and attr.suite == current.suite:
            return attr
    return None


__all__ = ["SECURE_TRANSPORTS", "SrtpPolicy", "SrtpRefused", "answer", "offer_allowed",
           "policy_for", "reanswer"]
