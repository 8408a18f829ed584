"""The only place that saves a call's record.

The record is saved when the call starts, at least once per turn while it goes (coalesced:
a save requested while one runs makes exactly one more afterwards), and once at the end.
A store that fails is logged, never raised: the call goes on, and the next save carries
everything (the record is whole each time). That is the one error boundary for records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from bridge.call.records import CallRecord, RecordStore

#: Runs a coroutine in the call's task group (dropped once the call is over).
Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class Recorder:
    def __init__(self, store: RecordStore, record: CallRecord,
                 log: logging.LoggerAdapter[logging.Logger], spawn: Spawn) -> None:
        self.store = store
        self.record = record
        self._log = log
        self._spawn = spawn
        self._saving = False
        self._again = False
        self.failures = 0
        #: masks the record in place before each save (``[redaction]``), if set
        self.redact: Callable[[CallRecord], None] | None = None

    async def save(self) -> bool:
        """Save now; False (logged) when the store failed."""
        if self.redact is not None:
            self.redact(self.record)
        try:
            await self.store.save(self.record)
        except Exception:
            self.failures += 1
            self._log.exception("could not save the call record")
            return False
        return True

    def save_soon(self) -> None:
        """Save in the background, coalescing bursts."""
        if self._saving:
            self._again = True
            return
        self._saving = True
        self._spawn(self._loop(), "save")

    async def _loop(self) -> None:
        try:
            while True:
                self._again = False
                await self.save()
                if not self._again:
                    return
        finally:
            self._saving = False


__all__ = ["Recorder", "Spawn"]
