"""``SipLeg``: one SIP dialog and its RTP endpoint, seen by the call as a ``MediaLeg``.

The leg never touches the user agent directly: every dialog action (BYE, REFER) goes
through ``command``, the service's one entry point that runs a user-agent command with the
current time and sends what it produced. The service reports the far end's moves back
through the underscore methods (``_remote_hangup``, ``_media_updated``, ``_dtmf``,
``_transfer_done``).

Media is the RTP endpoint's: inbound frames go from its datagram callback straight to the
sink (after the media clock's ``poll``, which whoever creates the leg sets as
:attr:`SipLeg.poll`), outbound frames from the media clock straight to its socket. With
G.711 passthrough (``carry_encoded``) both are the negotiated law's payload bytes as is.
The leg's ``sample_rate`` is the codec's audio rate: 8000 for G.711, 16000 for G.722.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bridge.call.leg import LegInfo, LegSink, MediaLeg, TransferOutcome
from bridge.media.drain import Poll
from bridge.rtp.endpoint import RtpEndpoint
from bridge.sip.sdp import AUDIO_RATE, G711_LAWS, NegotiatedMedia
from bridge.sip.ua import CallKey, UserAgent

log = logging.getLogger("bridge.sip.service")

#: How long a transfer may take from REFER to the final NOTIFY before we call it failed.
TRANSFER_TIMEOUT_S = 60.0
#: Runs one user-agent command (``command(ua, now)``) and sends what it produced.
Command = Callable[[Callable[[UserAgent, float], None]], None]


class SipLeg(MediaLeg):
    """A SIP dialog plus its RTP endpoint, as a :class:`MediaLeg`."""

    def __init__(self, command: Command, call: CallKey, info: LegInfo,
                 rtp: RtpEndpoint, media: NegotiatedMedia | None) -> None:
        self._command = command
        self.call = call
        self.info = info
        self.rtp = rtp
        self.media = media
        self._sink: LegSink | None = None
        self._set_codec(media)
        self._ended: str | None = None
        self._transfer: asyncio.Future[TransferOutcome] | None = None
        self.log = logging.LoggerAdapter(log, {"call_id": info.call_id})

    # -- MediaLeg -----------------------------------------------------------------------

    @property
    def sending_allowed(self) -> bool:
        return self._ended is None and self.rtp.sending_allowed

    @property
    def ended(self) -> bool:
        return self._ended is not None

    @property
    def poll(self) -> Poll:
        """Called before each inbound frame reaches the sink: the media clock's ``poll``."""
        return self.rtp.poll

    @poll.setter
    def poll(self, poll: Poll) -> None:
        self.rtp.poll = poll

    def carry_encoded(self, law: str) -> bool:
        if law not in ("pcmu", "pcma") or self.g711 != law:
            return False
        self.carry = law
        self.rtp.carry_encoded(law)
        return True

    def attach(self, sink: LegSink) -> None:
        self._sink = sink
        self.rtp.on_audio = sink.on_leg_audio
        self.rtp.on_dtmf = sink.on_leg_dtmf
        if self._ended is not None:
            sink.on_leg_hangup(self._ended)

    def write_frame(self, pcm: bytes) -> None:
        if self._ended is None:
            if self.carry == "pcm16":
                self.rtp.send_audio(pcm)
            else:
                self.rtp.send_encoded(pcm)

    def write_silence(self) -> None:
        if self._ended is None:
            if self.carry == "pcm16":
                self.rtp.send_silence(self.frame_samples)
            else:
                super().write_silence()        # the carried law's silence, as is

    async def hang_up(self, reason: str) -> None:
        if self._ended is not None:
            return
        self.log.info("call %s: hanging up (%s)", self.info.call_id, reason)
        self._finish(reason)
        self._command(lambda ua, now: ua.bye(self.call, now))

    async def transfer(self, target: str) -> TransferOutcome:
        if self._ended is not None:
            return TransferOutcome(False, 0, "call ended")
        if self._transfer is not None and not self._transfer.done():
            return TransferOutcome(False, 0, "a transfer is already in progress")
        self._transfer = asyncio.get_running_loop().create_future()
        self.log.info("call %s: transferring to %s", self.info.call_id, target)
        self._command(lambda ua, now: ua.refer(self.call, target, now))
        try:
            async with asyncio.timeout(TRANSFER_TIMEOUT_S):
                return await asyncio.shield(self._transfer)
        except TimeoutError:
            return TransferOutcome(False, 0, "no final transfer progress")

    async def send_dtmf(self, digits: str) -> None:
        if self._ended is None:
            await self.rtp.send_dtmf(digits)

    # -- from the service ---------------------------------------------------------------

    def _finish(self, reason: str) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        self.rtp.close()
        if self._transfer is not None and not self._transfer.done():
            self._transfer.set_result(TransferOutcome(False, 0, "call ended"))

    def _remote_hangup(self, reason: str) -> None:
        if self._ended is not None:
            return
        self.log.info("call %s: ended by the far end (%s)", self.info.call_id, reason)
        self._finish(reason)
        if self._sink is not None:
            self._sink.on_leg_hangup(reason)

    def _set_codec(self, media: NegotiatedMedia | None) -> None:
        """The leg's rate and G.711 law follow the codec until a call attaches; after
        that a re-INVITE may change only the law (the user agent keeps the rate)."""
        if self._sink is None and media is not None:
            self.g711 = media.codec if media.codec in G711_LAWS else ""
            self.sample_rate = AUDIO_RATE[media.codec]

    def _media_updated(self, media: NegotiatedMedia) -> None:
        self.media = media
        self._set_codec(media)
        keys = media.srtp
        self.rtp.set_srtp(None if keys is None else
                          (keys.suite, keys.local.key_salt, keys.remote.key_salt))
        self.rtp.configure((media.remote_address, media.remote_port), media.codec,
                           media.payload_type, media.dtmf_payload_type, media.ptime_ms)
        self.rtp.set_sending(media.may_send)

    def _dtmf(self, digit: str) -> None:
        if self._sink is not None:
            self._sink.on_leg_dtmf(digit)

    def _transfer_done(self, ok: bool, status: int, detail: str) -> None:
        if self._transfer is not None and not self._transfer.done():
            self._transfer.set_result(TransferOutcome(ok, status, detail))


__all__ = ["Command", "SipLeg"]
