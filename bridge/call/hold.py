"""What the caller hears while the upstream is being reconnected: the hold signal.

A reconnect may take seconds. Repeated beeps sound like a fault; dead air sounds like a
dropped call. The default hold signal is a soft chime: four bell-like notes (C5 E5 G5
E5, 450 ms each with a gentle attack and a long decay, -28 dBFS), then a short rest --
3 s in all, looped, never more than 0.75 s of silence. A dialplan may choose its own
(``[fallback] hold``: a bundled sound, a WAV file or a tone spec), looped the same way.

``hold_pcm(spec, rate)`` returns the PCM16 of one loop at the leg's rate; the playout
plays it frame by frame whenever it has nothing else to play (``Playout.set_hold``), so it
stops the instant the agent speaks again.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from bridge.dialplans.announce import load_announcement

log = logging.getLogger(__name__)

NOTES_HZ = (523.25, 659.25, 783.99, 659.25)
NOTE_MS = 450
GAP_MS = 150
REST_MS = 600
LEVEL_DBFS = -28.0
_ATTACK_MS = 30


@functools.lru_cache(maxsize=8)
def chime(rate: int) -> bytes:
    """The default hold signal, one loop, PCM16 mono at ``rate``."""
    amp = 32767.0 * 10 ** (LEVEL_DBFS / 20.0)
    n = rate * NOTE_MS // 1000
    t = np.arange(n) / rate
    attack = np.minimum(1.0, np.arange(n) / (rate * _ATTACK_MS / 1000))
    decay = np.exp(-t / 0.18)
    release = np.minimum(1.0, (n - 1 - np.arange(n)) / (rate * 0.01))   # no click
    parts: list[np.ndarray] = []
    for f in NOTES_HZ:
        note = np.sin(2 * np.pi * f * t) + 0.25 * np.sin(4 * np.pi * f * t)   # a soft partial
        parts.append(amp / 1.25 * note * attack * decay * release)
        parts.append(np.zeros(rate * GAP_MS // 1000))
    parts.append(np.zeros(rate * REST_MS // 1000))
    return np.concatenate(parts).astype("<i2").tobytes()


def hold_pcm(spec: str | None, rate: int) -> bytes:
    """One loop of the hold signal: ``spec`` (a dialplan's ``[fallback] hold``) or, when
    unset or unusable (logged), the chime."""
    if spec:
        try:
            pcm = load_announcement(spec, rate)
            if pcm:
                return pcm
        except (OSError, ValueError) as exc:
            log.error("hold signal %r unusable, using the chime: %r", spec, exc)
    return chime(rate)


__all__ = ["chime", "hold_pcm"]
