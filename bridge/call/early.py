"""Opening a call's upstream while the call is still being set up.

A Realtime session takes a few hundred milliseconds to open (TLS, ``session.created``,
``session.update``, ``session.updated``). Opened only once the call is established, that is
silence the caller hears after answering. So the SIP service asks for the upstream as
soon as it has accepted an INVITE -- before it rings and answers -- and the call takes the
session over when it starts (``take``): the greeting's ``response.create`` goes out the
moment media flows.

An early upstream is keyed by the leg's call id and bounded: at most ``max_open`` at once
(a flood of INVITEs cannot open unbounded billable sessions), each closed if no call takes
it within ``max_age_s`` (an INVITE that is never ACKed), or when the signalling gives the
call up (``drop``: CANCEL, a refusal, the ACK never coming). WebRTC does not use this: a
browser's session is opened only once its media is up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.dialplans.plan import Dialplan
from bridge.realtime.profile import SessionProfile
from bridge.realtime.recovery import RecoveryPolicy

if TYPE_CHECKING:
    from bridge.call.call import RealtimeFactory, RealtimeSession

log = logging.getLogger(__name__)


def apply_budget(client: RealtimeSession, plan: Dialplan) -> None:
    """The dialplan's reconnect budget, for a client that has a recovery policy (before
    ``connect``, which sizes the replay buffer from it)."""
    budget = plan.fallback.reconnect_budget_s
    policy = getattr(client, "recovery", None)
    if budget is not None and isinstance(policy, RecoveryPolicy):
        client.recovery = dataclasses.replace(policy, budget_s=budget)  # type: ignore[attr-defined]


def new_call_id() -> str:
    return "c_" + uuid.uuid4().hex[:16]


@dataclass
class EarlyUpstream:
    call_id: str
    plan: Dialplan
    profile: SessionProfile
    client: RealtimeSession
    #: ``client.connect()`` under way (its result or exception when awaited)
    connecting: asyncio.Task[None]
    expiry: asyncio.TimerHandle | None = None


class EarlyOpens:
    """Upstreams opened ahead of their calls. See the module docstring."""

    def __init__(self, factory: RealtimeFactory,
                 log_for: Callable[[str], logging.LoggerAdapter[Any]], *, max_open: int,
                 max_age_s: float = 40.0, poll: Callable[[], object] | None = None) -> None:
        self._factory = factory
        self.max_open = max_open
        self.max_age_s = max_age_s
        self._poll = poll
        self._log_for = log_for
        self._open: dict[str, EarlyUpstream] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.taken = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._open)

    def open(self, key: str, plan: Dialplan, g711: str | None) -> asyncio.Task[None] | None:
        """Start opening the upstream of the call being set up as ``key``: the connect,
        under way. None when at the bound (the call then opens its own, as usual)."""
        if key in self._open or len(self._open) >= self.max_open:
            return None
        call_id = new_call_id()
        profile = plan.session_profile(leg_g711=g711)
        client = self._factory(profile, self._log_for(call_id))
        apply_budget(client, plan)
        if self._poll is not None and hasattr(client, "on_message"):
            client.on_message = self._poll
        task = asyncio.get_running_loop().create_task(client.connect(),
                                                      name=f"{call_id}-early-connect")
        task.add_done_callback(_consume)
        early = EarlyUpstream(call_id, plan, profile, client, task)
        early.expiry = asyncio.get_running_loop().call_later(
            self.max_age_s, self.drop, key)
        self._open[key] = early
        self.opened += 1
        return task

    def take(self, key: str) -> EarlyUpstream | None:
        """The early upstream of ``key`` for its call (None if there is none)."""
        early = self._open.pop(key, None)
        if early is not None:
            if early.expiry is not None:
                early.expiry.cancel()
            self.taken += 1
        return early

    def drop(self, key: str) -> None:
        """The call will not happen: close its early upstream (in the background)."""
        early = self.take(key)
        if early is None:
            return
        self.taken -= 1
        self.dropped += 1
        self.discard(early)

    def discard(self, early: EarlyUpstream) -> None:
        """Close ``early`` (not taken by a call after all) in the background."""
        task = asyncio.get_running_loop().create_task(_close(early),
                                                      name=f"{early.call_id}-early-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        for key in list(self._open):
            self.drop(key)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5.0)


def _consume(task: asyncio.Task[None]) -> None:
    """An early connect's failure is the call's to report (or nobody's): never 'never
    retrieved'."""
    if not task.cancelled():
        task.exception()


async def _close(early: EarlyUpstream) -> None:
    if not early.connecting.done():
        early.connecting.cancel()
    await asyncio.wait([early.connecting])        # its outcome is nobody's business now
    try:
        async with asyncio.timeout(3.0):
            await early.client.close()
    except Exception as exc:
        log.warning("closing an early upstream failed: %r", exc)


__all__ = ["EarlyOpens", "EarlyUpstream", "apply_budget", "new_call_id"]
