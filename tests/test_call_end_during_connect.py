"""A call ended at the very moment its upstream connect completes still ends.

On Python 3.11, ``asyncio.wait_for`` returns the inner result and drops a cancellation
that arrives as the inner awaitable completes. A shutdown that ended a call just as its
Realtime session came up was then lost: the call pumped events forever and its record was
never finished (seen once in CI as a flaky shutdown test). The call uses
``asyncio.timeout`` instead; this test reproduces the exact interleaving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.call.call import Call
from tests.support.call_rig import Rig, ScriptedSession, make_plan


class EndsWhileConnecting(ScriptedSession):
    def __init__(self) -> None:
        super().__init__()
        self.call: Call | None = None

    async def connect(self) -> None:
        await super().connect()
        assert self.call is not None
        self.call.end("shutdown")          # the end arrives as the connect completes


@pytest.mark.timeout(20)   # the old behaviour hangs here
async def test_an_end_that_races_the_connect_is_not_lost(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    session = EndsWhileConnecting()
    session.call = rig.call
    rig.session = session
    rig.call._factory = lambda _profile, _log: session  # the seam under test
    task = asyncio.create_task(rig.call.run())
    async with asyncio.timeout(5):
        record = await task
    assert record.end_reason == "shutdown"
    assert record.ended_at is not None
    assert session.closed                  # the upstream was closed, not left pumping
