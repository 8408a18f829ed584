"""Every timer of a call on the injected media clock (virtual in tests).

The call's limits (maximum length, caller silence) are one-shot clock timers; its deadlines
(connect, close, drain waits) are ``clock_timeout`` blocks and ``wait_within`` waits. With
the process's real ``MediaClock`` they are loop timers; with a ``VirtualScheduler`` they
fire when a test moves virtual time, so no test sleeps on the wall clock to end a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from bridge.call.clock import MediaClock, TimerHandle


@asynccontextmanager
async def clock_timeout(clock: MediaClock, seconds: float) -> AsyncIterator[None]:
    """Like ``asyncio.timeout(seconds)``, timed by ``clock``: ``TimeoutError`` on expiry."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as cm:
        def expire() -> None:
            if not cm.expired():
                cm.reschedule(loop.time())

        handle = clock.call_later(seconds, expire)
        try:
            yield
        finally:
            handle.cancel()


async def wait_within(clock: MediaClock, fut: asyncio.Future[None], seconds: float) -> bool:
    """Wait for ``fut`` at most ``seconds`` of clock time; True if it completed."""
    if fut.done():
        return True
    loop = asyncio.get_running_loop()
    expired: asyncio.Future[None] = loop.create_future()
    def expire() -> None:
        if not expired.done():
            expired.set_result(None)

    handle = clock.call_later(seconds, expire)
    try:
        await asyncio.wait([fut, expired], return_when=asyncio.FIRST_COMPLETED)
    finally:
        handle.cancel()
        expired.cancel()
    return fut.done()


class OneShot:
    """A re-armable one-shot timer on the clock (the caller-silence limit)."""

    def __init__(self, clock: MediaClock, callback: Callable[[], object]) -> None:
        self._clock = clock
        self._callback = callback
        self._handle: TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, seconds: float) -> None:
        self.cancel()
        self._handle = self._clock.call_later(seconds, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()


__all__ = ["OneShot", "clock_timeout", "wait_within"]
