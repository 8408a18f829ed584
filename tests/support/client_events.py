"""Reading a Realtime client's events in a test: each read has a deadline, and every event
seen is kept for the assertions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient

T = TypeVar("T")


class Events:
    """Reads a client's events with a deadline; remembers everything seen."""

    def __init__(self, client: RealtimeClient) -> None:
        self._it: AsyncIterator[ev.Event] = client.events()
        self.seen: list[ev.Event] = []

    async def next(self, within: float = 10.0) -> ev.Event:
        event = await asyncio.wait_for(anext(self._it), within)
        self.seen.append(event)
        return event

    async def read_until(self, kind: type[T], within: float = 10.0) -> T:
        async with asyncio.timeout(within):
            while True:
                event = await self.next(within)
                if isinstance(event, kind):
                    return event

    async def drain_to_end(self, within: float = 10.0) -> list[ev.Event]:
        async with asyncio.timeout(within):
            async for event in self._it:
                self.seen.append(event)
        return self.seen
