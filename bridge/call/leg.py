"""The one seam between telephony and the agent: ``MediaLeg``.

SIP/RTP, WebRTC and (later) carrier media-stream WebSockets are all legs. The call never
knows which one it has.

Theory of operation
-------------------
Audio crosses the seam as PCM16 little-endian mono at the leg's own ``sample_rate``
(8000 for G.711 legs, 16000 for G.722, 48000 for Opus), in frames of exactly
``frame_ms`` (20 ms).

G.711 passthrough: when the Realtime session's audio format is the leg's own G.711 law
(``audio/pcmu`` or ``audio/pcma``), the call asks ``carry_encoded(law)`` before attaching.
A leg that agrees sets ``carry`` to the law and from then on carries the encoded payload,
one byte per sample (``carried_frame_bytes``), in both directions: inbound frames are the
RTP payload as received, ``write_frame`` takes a payload to send as is, ``write_silence``
sends encoded silence. Nothing is decoded or encoded on that path. ``carry`` stays
``"pcm16"`` on legs that cannot (the codec is not G.711, or the law differs).

* Inbound: the leg pushes each frame to the attached ``LegSink.on_leg_audio`` from its
  own datagram callback. No task per frame, no queue: the sink must be cheap and must not
  block.
* Outbound: the process-wide media clock calls ``write_frame`` once per 20 ms tick with
  exactly one frame. ``write_frame`` never blocks. When the call has nothing to play the
  clock calls ``write_silence`` if ``underrun`` is ``Underrun.SILENCE`` and nothing if it
  is ``Underrun.NOTHING`` (e.g. a leg that uses silence suppression / DTX).
* While ``sending_allowed`` is False (a SIP re-INVITE put the caller on hold with
  ``sendonly``/``inactive``) the clock skips the leg; frames are not queued up meanwhile.
* Events: DTMF digits and hang-up from the far end go to the sink.
* Call control is async: ``hang_up``, ``transfer`` (blind, to a URI the dialplan chose)
  and ``send_dtmf``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bridge.codecs import g711

#: The hang-up reason of a leg whose signalling session expired: a SIP session timer
#: (RFC 4028) ran out without a refresh, or our refresh failed.
SESSION_EXPIRED = "session-expired"


def _no_poll() -> None:
    return None


class Underrun(enum.Enum):
    """What a leg wants on a tick when the call has no audio to play."""

    SILENCE = "silence"   # send a frame of silence (keeps RTP timing continuous)
    NOTHING = "nothing"   # send nothing (DTX / silence suppression)


class Source(enum.Enum):
    SIP = "sip"
    WEBRTC = "webrtc"
    MEMORY = "memory"


@dataclass(frozen=True)
class LegInfo:
    """Who is calling whom, as the leg's signalling saw it."""

    call_id: str                 # the leg's own id (SIP Call-ID, WebRTC session id)
    source: Source
    caller: str = ""             # SIP From user / phone number, or a browser label
    called: str = ""             # SIP Request-URI user (the dialled number)
    remote: str = ""             # "ip:port" of the signalling peer
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferOutcome:
    """Result of a blind transfer attempt."""

    ok: bool
    status: int = 0              # SIP final status from the NOTIFY sipfrag, or 0
    detail: str = ""


class LegSink(Protocol):
    """What a leg reports to the call it is attached to. All methods must be cheap."""

    def on_leg_audio(self, pcm: bytes) -> None:
        """One inbound frame, PCM16 at the leg's ``sample_rate`` (or the encoded G.711
        payload when the leg's ``carry`` is a G.711 law)."""

    def on_leg_dtmf(self, digit: str) -> None:
        """One DTMF digit (``0-9 * # A-D``), reported once per key press."""

    def on_leg_hangup(self, reason: str) -> None:
        """The far end hung up (or the leg died); the call must end. ``reason`` is
        :data:`SESSION_EXPIRED` when the far end stopped refreshing the session."""


class MediaLeg(abc.ABC):
    """A media leg. Subclasses: ``SipLeg``, ``WebRtcLeg``, ``MemoryLeg``."""

    info: LegInfo
    sample_rate: int = 8000
    frame_ms: int = 20
    underrun: Underrun = Underrun.SILENCE
    #: "pcmu" / "pcma" when the leg carries G.711 (so a profile may pass it through), else "".
    g711: str = ""
    #: What crosses the seam: "pcm16", or "pcmu" / "pcma" once ``carry_encoded`` agreed.
    carry: str = "pcm16"
    #: Called by the leg before each inbound frame reaches the sink: the call sets it to
    #: its media clock's ``poll``, so a tick that came due during a burst of datagrams goes
    #: out between two frames rather than after the burst.
    poll: Callable[[], object] = staticmethod(_no_poll)

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        """Bytes of one PCM16 frame at the leg's rate."""
        return 2 * self.frame_samples

    @property
    def carried_frame_bytes(self) -> int:
        """Bytes of one frame as it crosses the seam (``carry``'s format)."""
        return self.frame_samples if self.carry != "pcm16" else 2 * self.frame_samples

    def carry_encoded(self, law: str) -> bool:
        """Carry the G.711 ``law`` payload as is in both directions (no transcode).

        True when the leg switched ``carry`` to ``law``; False (and nothing changes) when
        it cannot. Called before ``attach``; the default leg cannot.
        """
        return False

    @property
    def sending_allowed(self) -> bool:
        """False while the far end has put the call on hold."""
        return True

    @abc.abstractmethod
    def attach(self, sink: LegSink) -> None:
        """Route inbound audio, DTMF and hang-up to ``sink`` (replacing any previous)."""

    @abc.abstractmethod
    def write_frame(self, pcm: bytes) -> None:
        """Send one outbound frame (``carried_frame_bytes`` in ``carry``'s format). Never
        blocks."""

    def write_silence(self) -> None:
        """Send one frame of silence (called on underrun when ``underrun`` is SILENCE)."""
        if self.carry == "pcm16":
            self.write_frame(bytes(self.frame_bytes))
        else:
            self.write_frame(g711.silence(self.carry, self.frame_samples))

    @abc.abstractmethod
    async def hang_up(self, reason: str) -> None:
        """End the leg from our side (SIP BYE, peer connection closed). Idempotent."""

    @abc.abstractmethod
    async def transfer(self, target: str) -> TransferOutcome:
        """Blind-transfer the far end to ``target`` (a SIP URI or tel number)."""

    @abc.abstractmethod
    async def send_dtmf(self, digits: str) -> None:
        """Send DTMF digits to the far end (RFC 4733 or the leg's equivalent)."""
