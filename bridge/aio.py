"""Small asyncio helpers that keep cancellation honest.

``cancel_and_wait(task)`` is the one way the bridge stops a task it owns and waits for it.
``contextlib.suppress(CancelledError): await task`` is wrong in two ways: it also swallows a
cancellation aimed at the *caller* (a shutdown that cancels the code doing the clean-up), and
it hides the task's own failure. Here the task's ``CancelledError`` is absorbed only when the
task itself was cancelled, the caller's own cancellation always propagates, and an exception
the task ended with is returned for the caller to log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> BaseException | None:
    """Cancel ``task`` and wait for it to finish; return the exception it ended with.

    Returns ``None`` when the task finished by cancellation or normally. Raises
    ``CancelledError`` only when the *caller* is cancelled while waiting.
    """
    if not task.done():
        task.cancel()
    await asyncio.wait([task])          # never raises the task's outcome; the caller's own
    #                                     cancellation propagates out of ``wait`` as usual
    if task.cancelled():
        return None
    return task.exception()


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> list[BaseException]:
    """Cancel every task, wait for all of them; the exceptions they ended with."""
    pending = [t for t in tasks]
    for t in pending:
        if not t.done():
            t.cancel()
    if pending:
        await asyncio.wait(pending)
    errors: list[BaseException] = []
    for t in pending:
        if not t.cancelled():
            exc = t.exception()
            if exc is not None:
                errors.append(exc)
    return errors


__all__ = ["cancel_all", "cancel_and_wait"]
