"""Waiting in tests: one bounded ``until``.

The bound is a ceiling on a hang, never a timing assertion: a test that needs a time checks
the stamps it recorded (or a virtual clock), not how long ``until`` took.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from bridge.call.clock import MediaClock

#: A condition: a function returning something truthy, or a coroutine function doing so
#: (state that lives in a browser has to be fetched).
Condition = Callable[[], object] | Callable[[], Awaitable[object]]

#: Event-loop rounds checked before real sleeps start: what a virtual-clock test waits on is
#: usually another task's next step, so it is seen without any real time passing.
SPINS = 200
#: Real time between checks after those rounds (a socket, a thread, a loop timer).
POLL_S = 0.002


async def until(cond: Condition, limit_s: float = 10.0, *, what: str | Callable[[], str] = "",
                clock: MediaClock | None = None, poll_s: float | None = None) -> None:
    """Return as soon as ``cond()`` is true; fail the test after ``limit_s`` seconds.

    Without ``clock``, ``cond`` is checked now, then after each of ``SPINS`` event-loop
    rounds, then every ``POLL_S`` seconds (every ``poll_s`` seconds from the start when
    given: a condition that costs a round trip). With ``clock``, it is checked now and then
    on each tick of that media clock and nowhere else, so the test goes on at a tick, the
    way a leg sees time. ``what`` names the condition in the failure (a function: called
    then, to show the state the condition was waiting on).
    """
    deadline = asyncio.timeout(limit_s)
    try:
        async with deadline:
            if clock is None:
                await _polled(cond, poll_s)
            else:
                await _on_ticks(cond, clock)
    except TimeoutError:
        if not deadline.expired():
            raise
        named = what() if callable(what) else what
        raise AssertionError(f"timed out after {limit_s} s waiting for "
                             f"{named or 'the condition'}") from None


async def _holds(cond: Condition) -> bool:
    result = cond()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def _polled(cond: Condition, poll_s: float | None) -> None:
    rounds = 0
    while not await _holds(cond):
        if poll_s is not None:
            await asyncio.sleep(poll_s)
        else:
            await asyncio.sleep(0 if rounds < SPINS else POLL_S)
            rounds += 1


class _TickCheck:
    """A media clock subscriber that resolves ``fut`` on the first tick ``cond`` holds."""

    def __init__(self, cond: Callable[[], object], fut: asyncio.Future[None]) -> None:
        self.cond, self.fut = cond, fut

    def on_tick(self, now: float) -> None:
        if not self.fut.done() and self.cond():
            self.fut.set_result(None)


async def _on_ticks(cond: Condition, clock: MediaClock) -> None:
    first = cond()
    if inspect.isawaitable(first):
        if inspect.iscoroutine(first):
            first.close()
        raise TypeError("a condition checked on clock ticks must not be a coroutine function")
    if first:
        return
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    check = _TickCheck(cond, fut)
    clock.subscribe(check)
    try:
        await fut
    finally:
        clock.unsubscribe(check)
