"""RTP media for SIP legs: packets, jitter buffer, RFC 4733 DTMF, sessions, endpoints.

Everything except :mod:`bridge.rtp.endpoint` is sans-I/O: bytes and ``now`` in, bytes,
frames and events out, no sockets and no clock reads.
"""
