"""RFC 4733 telephone-events (DTMF) in RTP: parse, receive, send. Sans-I/O.

Theory of operation
-------------------
Payload (RFC 4733 §2.3)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |     event     |E|R| volume    |          duration             |

Receive (:class:`DtmfReceiver`): all packets of one event carry the same RTP timestamp
(§2.5.1.1 "the RTP timestamp ... MUST be the same for all packets of the event"), so an
event is identified by its timestamp. A digit is reported once, on the first packet seen
for a new timestamp -- not on the end packet, so a lost end (or a lost start) still gives
exactly one digit. The three end-packet retransmissions (§2.5.1.4) and any update carry
a timestamp already seen and are absorbed. A long event continued in a new segment
(§2.5.1.3: same event, new timestamp, no marker) is not a second key press.

Send (:func:`tone_packets`): the start packet has the marker bit (§2.5.1.1 "The marker
bit ... MUST be set in the first packet"), updates follow every ``interval_ms`` (50 ms,
the rate §2.5.1.2 suggests) with the duration so far, and the final packet with the E bit
is sent three times (§2.5.1.4 "SHOULD be sent a total of three times at the interval used
by the source for updates"), all with the event's timestamp. The session assigns sequence
numbers and the timestamp; the adapter sends each packet at its ``offset``.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from bridge.errors import RtpError

#: Event codes 0-15 (RFC 4733 §3.2, Table 7).
DIGITS = "0123456789*#ABCD"
EVENT_OF: dict[str, int] = {d: i for i, d in enumerate(DIGITS)}
EVENT_OF.update({d.lower(): i for i, d in enumerate(DIGITS) if d.isalpha()})

_EVENT = struct.Struct("!BBH")
_unpack_event = _EVENT.unpack_from
EVENT_SIZE = _EVENT.size
#: A segment that got this long was cut for the 16-bit duration limit (allowing for a
#: few lost updates before its end).
_SEGMENT_FULL = 0xFFFF - 1600


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event payload. ``volume`` is 0..63 (-dBm0); ``duration`` in samples."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @property
    def digit(self) -> str | None:
        """``0-9 * # A-D`` for DTMF events, None for other events."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse a payload; raises :class:`RtpError` ``dtmf`` (only) when it is too short."""
        if len(payload) < EVENT_SIZE:
            raise RtpError("dtmf", f"telephone-event payload of {len(payload)} bytes")
        event, flags, duration = _unpack_event(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63:
            raise ValueError("event must be 0..255 and volume 0..63")
        # §2.3: "R: This field is reserved ... The sender MUST set it to zero"
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume,
                           min(self.duration, 0xFFFF))


class DtmfReceiver:
    """Turns a stream of telephone-event packets into digits, one per key press."""

    def __init__(self, history: int = 16) -> None:
        self._seen: deque[int] = deque(maxlen=history)
        self.events = 0
        self.ignored = 0
        self.reset()

    def reset(self) -> None:
        """Forget previous events (the sender's SSRC changed); counters are kept."""
        self._seen.clear()
        self._last_event = -1
        self._last_ts = 0
        self._last_duration = 0

    def receive(self, marker: bool, timestamp: int, payload: bytes) -> str | None:
        """Feed one packet; returns the digit when it is the first packet of a key press."""
        if len(payload) < EVENT_SIZE:
            raise RtpError("dtmf", f"telephone-event payload of {len(payload)} bytes")
        event, flags, duration = _unpack_event(payload)
        if timestamp in self._seen:
            if timestamp == self._last_ts:
                self._last_duration = max(self._last_duration, duration)
            return None
        self._seen.append(timestamp)
        # §2.5.1.3: an event too long for the 16-bit duration goes on in a new segment:
        # same event, no marker, a timestamp where the previous segment (which ran to
        # the maximum duration) ended. Whether that segment's last packets carried the
        # E bit varies between senders, so it is not looked at.
        continued = (not marker and event == self._last_event
                     and self._last_duration >= _SEGMENT_FULL
                     and 0 < (timestamp - self._last_ts) & 0xFFFFFFFF
                     <= self._last_duration + 800)
        self._last_event, self._last_ts, self._last_duration = event, timestamp, duration
        if continued:
            return None
        if event >= len(DIGITS):
            # §2.5.2: receivers ignore events they do not support.
            self.ignored += 1
            return None
        self.events += 1
        return DIGITS[event]


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One packet of an outgoing event: send ``payload`` at ``offset`` s after the start."""

    offset: float
    payload: bytes
    marker: bool
    end: bool


def tone_packets(digit: str, *, clock_rate: int = 8000, tone_ms: int = 100,
                 interval_ms: int = 50, volume: int = 10,
                 end_repeats: int = 3) -> tuple[EventPacket, ...]:
    """The packets of one key press, in sending order (timestamp assigned by the session)."""
    event = EVENT_OF.get(digit)
    if event is None:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    per_ms = clock_rate // 1000
    packets = [EventPacket(0.0, TelephoneEvent(event, False, volume, 0).serialize(), True,
                           False)]
    at = interval_ms
    while at < tone_ms:
        packets.append(EventPacket(at / 1000, TelephoneEvent(event, False, volume,
                                                             at * per_ms).serialize(),
                                   False, False))
        at += interval_ms
    final = TelephoneEvent(event, True, volume, tone_ms * per_ms).serialize()
    packets.extend(EventPacket((tone_ms + i * interval_ms) / 1000, final, False, True)
                   for i in range(end_repeats))
    return tuple(packets)


__all__ = [
    "DIGITS", "EVENT_OF", "EVENT_SIZE", "DtmfReceiver", "EventPacket", "TelephoneEvent",
    "tone_packets",
]
