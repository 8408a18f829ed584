"""A ``LegSink`` that records what a leg hands it: audio frames, DTMF digits, hang-ups."""

from __future__ import annotations

import asyncio

from bridge.call.leg import LegSink


class Sink(LegSink):
    """Every frame, digit and hang-up reason, in order; ``hungup`` is set on a hang-up."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.digits: list[str] = []
        self.hangups: list[str] = []
        self.hungup = asyncio.Event()

    def on_leg_audio(self, pcm: bytes) -> None:
        self.frames.append(pcm)

    def on_leg_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def on_leg_hangup(self, reason: str) -> None:
        self.hangups.append(reason)
        self.hungup.set()
