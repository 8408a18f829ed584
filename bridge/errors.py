"""Exceptions of the bridge.

The hierarchy::

    BridgeError                      base of everything the bridge raises on purpose
    ├── IncompatibleLibrary          an installed library lacks a private name the bridge relies on
    ├── ConfigError                  bad settings or files; names the source (file, line, field)
    │   ├── DialplanError            a dialplan file that does not validate
    │   ├── SchemaProblem            a webhook tool's JSON schema that cannot be used
    │   └── MissingEnv               an environment variable a dialplan names is not set
    ├── ProtocolError                untrusted bytes that do not parse; carries the wire answer
    │   ├── SipParseError            -> SIP 400 Bad Request (reason in ``reason``)
    │   │   ├── MalformedMessage     a message whose header block cannot be split at all
    │   │   └── DigestError          a Digest challenge or Authorization header (sip/digest.py)
    │   ├── SdpError                 -> SIP 488 Not Acceptable Here
    │   │   ├── SdesError            an a=crypto line that cannot be used (sip/sdes.py)
    │   │   └── SrtpRefused          an offer the call's SRTP policy refuses (sip/srtp_policy.py)
    │   ├── RtpError                 -> packet dropped and counted under ``reason``
    │   └── WebRtcOfferError         a browser offer that cannot be answered (HTTP 400)
    ├── SipError                     SIP signalling that cannot proceed (not a parse error)
    │   ├── TransactionError         a transaction-layer failure (timeout, transport)
    │   ├── DialogError              a request that does not fit the dialog's state
    │   ├── UaError                  a user-agent operation that failed (REFER, BYE, ...)
    │   ├── TlsConnectFailed         a SIP/TLS client connection not opened or not verified
    │   └── RegistrationError        a move the registration table does not allow (sip/register.py)
    ├── MediaError                   the media plane
    │   └── PortsExhausted           no free RTP port pair in the configured range
    ├── CallRejected                 a call refused at admission (busy, shutting down)
    ├── RealtimeError                the upstream Realtime leg
    │   ├── RealtimeAuthError        401/403 or close 3000: never retried
    │   ├── RealtimeUnavailable      could not connect / lost beyond reconnect
    │   │   ├── RealtimeRejected     the request itself refused (400/404, close 4000)
    │   │   └── TranscriptionFailed  a voicemail's transcription session not opened or no transcript
    │   ├── MalformedEvent           a server event that does not map (logged, ignored)
    │   ├── ChatFailed               a Chat Completions request failed for good (recorded)
    │   └── ChatAttemptFailed        one attempt failed; retried after Retry-After or back-off
    ├── ToolError                    a tool failed; answered to the model as an error output
    │   └── ToolFailed               raised by operator code to answer the model with a message
    └── EmulatorError                the local Realtime emulator refuses a client request
        └── SessionUpdateError       a ``session.update`` it cannot apply (answered ``error``)

Each kind is caught at exactly one boundary and turned into a protocol action there
(a SIP response, a dropped packet, a fallback, a ``function_call_output``).
``asyncio.CancelledError`` is never caught by those boundaries.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Settings or a file that cannot be used; the message names where."""


class DialplanError(ConfigError):
    """A dialplan file that does not validate: ``file``, ``line`` and ``field`` say where."""

    def __init__(self, message: str, *, file: str = "", line: int | None = None,
                 field: str = "") -> None:
        self.file = file
        self.line = line
        self.field = field
        where = file
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}" if where else message)


class ProtocolError(BridgeError):
    """Untrusted input that does not parse."""


class SipParseError(ProtocolError):
    """A SIP message that does not parse; answered with ``status`` (400 by default)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class SdpError(ProtocolError):
    """An SDP body that cannot be used; answered with 488 Not Acceptable Here."""

    status = 488


class RtpError(ProtocolError):
    """An RTP/RTCP packet that cannot be used; dropped and counted under ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class RealtimeError(BridgeError):
    """The upstream Realtime leg failed."""


class RealtimeAuthError(RealtimeError):
    """Credentials refused (HTTP 401/403, close 3000): retrying cannot help."""


class RealtimeUnavailable(RealtimeError):
    """The upstream could not be reached, or was lost beyond reconnect."""


class ChatFailed(RealtimeError):
    """A Chat Completions request that failed for good (after its retries): recorded on the
    call it was for, never allowed to affect a call. ``status`` is the last HTTP status
    (None: no answer), ``attempts`` how many requests were made."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        self.status = status
        self.attempts = attempts
        super().__init__(message)


class ChatAttemptFailed(RealtimeError):
    """One Chat Completions attempt failed and another may work (a 429, a 5xx, a network
    error): ``wait_s`` is what the service asked to wait (None: the client's back-off)."""

    def __init__(self, reason: str, status: int | None, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.wait_s = wait_s


class SipError(BridgeError):
    """SIP signalling that cannot proceed (transaction, dialog, user agent)."""


class MediaError(BridgeError):
    """The media plane (ports, sockets, codecs) cannot serve a call."""


class CallRejected(BridgeError):
    """A call refused at admission: ``str(exc)`` is the reason (busy, shutting down)."""


class MalformedEvent(RealtimeError):
    """A Realtime server event that does not map to a bridge event (logged and ignored)."""


class ToolError(BridgeError):
    """A tool failed; the message is safe to show the model."""


class EmulatorError(BridgeError):
    """The local Realtime emulator refuses a client request."""
