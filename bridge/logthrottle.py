"""Log lines that untrusted traffic can cause, bounded: a flood is a count, not a log.

``Throttle.log(level, key, msg, *args)`` logs at most ``burst`` lines per ``key`` in each
``window_s``; the lines it holds back are counted and reported in one line when the key
next logs after its window (``"... (37 more like this in the last 10 s)"``). Keys are the
kind of event (a malformed SIP message, an allowlist refusal, an RTP SSRC change), not
the peer: a spray from many addresses must not grow the table, which is bounded anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_MAX_KEYS = 256


class Throttle:
    def __init__(self, logger: logging.Logger, *, window_s: float = 10.0, burst: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._window = window_s
        self._burst = burst
        self._clock = clock
        #: key -> [window start, lines logged in it, lines held back]
        self._keys: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: object,
            now: float | None = None) -> bool:
        """Log unless ``key`` is over its burst; True when the line went out. ``now``: the
        caller's time (sans-I/O cores pass theirs), else the throttle's clock."""
        if not self._logger.isEnabledFor(level):
            return False
        if now is None:
            now = self._clock()
        state = self._keys.get(key)
        if state is None or now - state[0] >= self._window:
            held = int(state[2]) if state is not None else 0
            if len(self._keys) >= _MAX_KEYS and key not in self._keys:
                self._keys.pop(next(iter(self._keys)))
            self._keys[key] = [now, 1.0, 0.0]
            if held:
                msg += " (%d more like this in the last %.0f s)"
                args = (*args, held, self._window)
            self._logger.log(level, msg, *args)
            return True
        if state[1] < self._burst:
            state[1] += 1
            self._logger.log(level, msg, *args)
            return True
        state[2] += 1
        return False


__all__ = ["Throttle"]
