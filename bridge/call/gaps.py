"""Keeping upstream audio time flowing through gaps in the caller's audio (sans-I/O).

Why
---
Server VAD counts *audio* time, not wall time: it ends a caller's turn only after
``silence_duration_ms`` of silent audio has been appended. When the caller's RTP simply
stops -- the end of a recording, a phone with silence suppression / DTX, comfort noise
(PT 13) that the RTP layer consumes, WebRTC DTX -- nothing is appended, the server never
sees the end of the turn and the caller never gets a reply. So the call appends silence
for the missing time, in real time, until audio resumes.

How (``InboundGaps``)
---------------------
Two facts decide, both in frames of ``period`` seconds:

* ``idle``: the time since the last real frame arrived. Only a gap longer than
  ``threshold`` (3.5 periods by default: "no frame for more than 3 ticks", with half a
  period of room for jitter and for the phase between arrivals and ticks) is a gap.
  Packets that merely arrive in clumps (jitter, 40/60 ms ptime cut into 20 ms frames)
  never open one, so real audio is never doubled up with silence.
* ``credit``: real time elapsed minus audio appended (real + silence). Silence is only
  appended while the credit is positive, i.e. while upstream audio time is *behind*
  real time, and never more than the gap's own length. A burst after a gap (packets that
  were late, not lost; a jitter buffer releasing its concealment) drives the credit
  negative; the next gap then first pays that lead back before any silence goes out,
  so leads never accumulate. The credit is clamped to ``[-max_lead, max_credit]``: a
  bounded memory of the lead (a phone whose clock runs fast cannot delay every later
  gap by more than ``max_lead`` periods) and of a deficit.

Caller audio itself is never dropped or delayed here: at worst, a stall followed by a
burst leaves upstream audio time ahead of real time by the silence sent during that
stall (audio time running ahead costs no latency; running behind would).

``on_frame(now)`` for every real frame, ``on_tick(now)`` on every media clock tick
returning how many frames of silence to append now. ``now`` is monotonic seconds; no
clock reads here.
"""

from __future__ import annotations

PERIOD_S = 0.020
#: Epsilon for float frame counts (a tick read a hair before a full period is a period).
_EPS = 1e-3


class InboundGaps:
    """Decides when, and how much, silence stands in for caller audio that is not coming."""

    __slots__ = ("period", "threshold", "max_lead", "max_credit", "credit", "_last_t",
                 "_last_frame", "_filled", "started", "silence_frames")

    def __init__(self, *, period: float = PERIOD_S, threshold_periods: float = 3.5,
                 max_lead: int = 5, max_credit: int = 10) -> None:
        if threshold_periods < 1:
            raise ValueError("threshold_periods must be >= 1")
        self.period = period
        self.threshold = threshold_periods * period
        self.max_lead = float(max_lead)
        self.max_credit = float(max_credit)
        self.credit = 0.0
        self._last_t = 0.0
        self._last_frame = 0.0
        self._filled = 0          # silence frames sent in the current gap
        self.started = False
        self.silence_frames = 0   # total, for figures and tests

    def start(self, now: float) -> None:
        """Audio may flow upstream from ``now`` (session ready): count time from here."""
        self.credit = 0.0
        self._last_t = self._last_frame = now
        self._filled = 0
        self.started = True

    @property
    def filled_in_gap(self) -> int:
        """Silence frames sent so far in the current gap (0 while audio flows)."""
        return self._filled

    def stop(self) -> None:
        self.started = False

    def _advance(self, now: float) -> None:
        if now > self._last_t:
            self.credit = min(self.credit + (now - self._last_t) / self.period,
                              self.max_credit)
            self._last_t = now

    def on_frame(self, now: float) -> None:
        """A real frame of caller audio went upstream at ``now`` (``_advance`` inlined:
        this runs for every inbound frame of every call)."""
        credit = self.credit
        if now > self._last_t:
            credit = min(credit + (now - self._last_t) / self.period, self.max_credit)
            self._last_t = now
        self.credit = max(credit - 1.0, -self.max_lead)
        self._last_frame = now
        self._filled = 0

    def on_tick(self, now: float) -> int:
        """Frames of silence to append at this tick (0 unless a gap is open)."""
        if not self.started:
            return 0
        idle = now - self._last_frame
        if idle <= self.threshold:
            # While audio flows (every tick of a live call but the gaps), nothing else:
            # the credit is brought up to date lazily by the next on_frame/on_tick, which
            # is the same figure (min(min(c + a, M) + b, M) == min(c + a + b, M), b >= 0).
            return 0
        self._advance(now)
        # Fill each missing period of the gap once (rounded: arrivals and ticks are out of
        # phase by up to a period), never beyond real time (the credit).
        missing = int(idle / self.period + 0.5) - self._filled
        n = min(missing, int(self.credit + _EPS))
        if n <= 0:
            return 0
        self._filled += n
        self.credit -= n
        self.silence_frames += n
        return n


__all__ = ["InboundGaps"]
