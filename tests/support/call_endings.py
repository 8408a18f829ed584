"""Every way a call can end, as a script over a ``Rig`` (a call on a virtual clock).

Each script causes its ending the way production does (the far end hangs up, a tool, a
key, a limit on the media clock, the upstream lost, an operator, a shutdown, our own bug)
and moves virtual time enough for it to take. The tests of the call's endings and of its
state machine run the same scripts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bridge.call.leg import SESSION_EXPIRED
from bridge.realtime import events as ev
from tests.support.call_rig import Rig

Ending = Callable[[Rig], Awaitable[None]]


async def caller_hangs_up(rig: Rig) -> None:
    rig.leg.far_end_hangup("bye")


async def session_expires(rig: Rig) -> None:
    """The leg's signalling session ran out (a SIP session timer without a refresh)."""
    rig.leg.far_end_hangup(SESSION_EXPIRED)


async def agent_hangs_up(rig: Rig) -> None:
    await rig.reply("r1", "i1", 100, "Goodbye.", done=True)
    await rig.emit(ev.FunctionCall("r1", "f1", "c1", "hang_up", '{"reason": "done"}'))
    await rig.done("r1")
    await rig.tick(10)                    # the goodbye plays out, then the call ends


async def tool_transfers(rig: Rig) -> None:
    await rig.reply("r1", "i1", 100, "Transferring you.", done=True)
    await rig.emit(ev.FunctionCall("r1", "f1", "c1", "transfer_call", '{"target": "sales"}'))
    await rig.done("r1")
    await rig.tick(10)


async def key_transfers(rig: Rig) -> None:
    rig.leg.press("0")                    # the rig's plan: "0" transfers to the operator
    await rig.tick(2)


async def key_hangs_up(rig: Rig) -> None:
    rig.leg.press("9")                    # the rig's plan: "9" hangs up
    await rig.tick(2)


async def limit_on_the_clock(rig: Rig) -> None:
    await rig.tick(60)                    # 1.2 s of virtual time: past a 1 s limit


async def upstream_lost(rig: Rig) -> None:
    await rig.reply("r1", "i1", 1000)
    await rig.tick(3)
    await rig.emit(ev.UpstreamLost("connection refused", False))
    await rig.tick(40)                    # the fallback tones play out, then the hang-up


async def operator(rig: Rig) -> None:
    rig.call.end("operator")
    await rig.tick()


async def shutdown(rig: Rig) -> None:
    assert rig.task is not None
    rig.task.cancel()
    await asyncio.wait([rig.task])


async def own_bug(rig: Rig) -> None:
    async def broken(text: str) -> None:
        raise RuntimeError("a bug in a part of the call")
    rig.session.add_user_text = broken    # type: ignore[method-assign]
    rig.leg.press("5")                    # a key for the model: its task fails
    await rig.tick(2)


__all__ = ["Ending", "agent_hangs_up", "caller_hangs_up", "key_hangs_up", "key_transfers",
           "limit_on_the_clock", "operator", "own_bug", "session_expires", "shutdown",
           "tool_transfers", "upstream_lost"]
