"""SRTP for a SIP call's RTP (RFC 3711), keyed by SDES: a small sans-I/O context.

:class:`SrtpContext` holds two libsrtp sessions (``pylibsrtp``): one keyed with *our*
master key and salt (the ``a=crypto`` line we sent), which protects what we send, and one
keyed with the *far end's* (the line it sent), which unprotects what we receive. Bytes in,
bytes out; nothing here reads a clock or touches a socket.

A packet that does not unprotect is not an exception for the caller: :meth:`unprotect`
returns ``None`` and names the reason in :attr:`SrtpContext.last_drop`: ``srtp_short``
(shorter than an RTP header and the auth tag), ``srtp_auth`` (bad authentication tag:
forged, corrupted, or sent with another key), ``srtp_replay`` (a packet index seen
before, or too old for the replay window), ``srtp_error`` (anything else libsrtp
refuses). The RTP endpoint counts each under ``voicebridge_rtp_dropped_total{reason}``.

The endpoint sends no RTCP, and RTCP arriving on the RTP port is dropped before it gets
here (see :mod:`bridge.rtp.packet`), so there is no SRTCP.

Key material is never in a ``repr`` and never in an error message.
"""

from __future__ import annotations

import pylibsrtp

#: The SDES suites and their libsrtp profiles and auth tag lengths (RFC 4568 §6.2).
PROFILES: dict[str, tuple[int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 10),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 4),
}
RTP_HEADER = 12
#: Replay window (packets); libsrtp's default is 128, this tolerates more reordering.
REPLAY_WINDOW = 1024


def _session(suite: str, key_salt: bytes, inbound: bool) -> pylibsrtp.Session:
    profile, _tag = PROFILES[suite]
    policy = pylibsrtp.Policy(
        key=key_salt, srtp_profile=profile,
        ssrc_type=(pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound
                   else pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    policy.window_size = REPLAY_WINDOW
    if not inbound:
        # A DTMF end packet is sent three times with the same sequence number
        # (RFC 4733 §2.5.1.4); libsrtp refuses a repeated index unless allowed.
        policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


class SrtpContext:
    """Protect outgoing and unprotect incoming RTP of one call (see the module doc)."""

    __slots__ = ("suite", "tag_bytes", "last_drop", "_tx", "_rx", "_min_len")

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes,
                 remote_suite: str | None = None) -> None:
        """``local_key``: our 30-byte key and salt, ``remote_key``: the far end's; both in
        ``suite`` (RFC 4568 answers keep the offer's suite) unless ``remote_suite``."""
        if suite not in PROFILES or (remote_suite or suite) not in PROFILES:
            raise ValueError("unsupported SRTP suite")
        self.suite = suite
        rx_suite = remote_suite or suite
        self.tag_bytes = PROFILES[rx_suite][1]
        self._min_len = RTP_HEADER + self.tag_bytes
        self._tx = _session(suite, local_key, inbound=False)
        self._rx = _session(rx_suite, remote_key, inbound=True)
        #: Why the last :meth:`unprotect` returned None.
        self.last_drop = ""

    def __repr__(self) -> str:
        return f"SrtpContext({self.suite})"

    def protect(self, packet: bytes) -> bytes:
        """An RTP packet we send, encrypted and with its auth tag."""
        return self._tx.protect(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        """The RTP packet inside ``packet``, or None (reason in :attr:`last_drop`)."""
        if len(packet) < self._min_len:
            self.last_drop = "srtp_short"
            return None
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error as exc:
            text = str(exc)
            self.last_drop = ("srtp_auth" if text.startswith("authentication")
                              else "srtp_replay" if text.startswith("replay")
                              else "srtp_error")
            return None


__all__ = ["PROFILES", "SrtpContext"]
