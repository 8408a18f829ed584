"""``CallAnalyser``: the dialplan's live analysis of one call (``[analysis]``).

After each caller turn whose transcription completed, the analyser asks the upstream for
an out-of-band text response (``bridge.realtime.outofband``): the plan's instructions and
JSON schema, ``input`` = references to the latest ``items`` conversation items (after a
reconnect, only items of the new session: it re-creates the history under new ids),
metadata ``{"turn": N, "kind": "analysis"}``. The response runs beside the spoken one and
is never played: the client takes its events out of the spoken response's books, so
barge-in and truncation never see it, and the call only ever gets its ``OutOfBandDone``.

The text is parsed as JSON and validated against the plan's schema (``jsonschema``); an
answer that is not JSON or not valid is logged (throttled), counted and stored as the
turn's error, never raised. Each turn's outcome goes into ``record.analysis``, out as a
``call.analysis`` event (the call page), and through the plan's ``[[analysis.actions]]``.

Bounds: at most ``max_concurrent`` analyses in flight per call (a turn beyond that is
recorded as ``busy`` and skipped), :data:`MAX_TURNS` turns per call (then only counted,
``limit``), each with a deadline of ``timeout_s`` on the call's media clock (``timeout``:
the response is cancelled by id, a late answer ignored). When the call ends, the analyses
still in flight are cancelled by id (``response.cancel`` with their ``response_id``: a
spoken response is untouched) and recorded as ``cancelled``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema

from bridge import metrics
from bridge.call.clock import TimerHandle
from bridge.call.events import AnalysisAdded
from bridge.call.state import EndReason
from bridge.dialplans.analysis import AnalysisAction
from bridge.errors import RealtimeError
from bridge.logthrottle import Throttle
from bridge.realtime import events as ev

if TYPE_CHECKING:
    from bridge.call.call import Call

KIND = "analysis"
#: Result text kept in the record for an answer that is not valid (characters)
MAX_BAD_TEXT = 300
#: Turns analysed per call at most (the record's ``analysis`` list stays bounded)
MAX_TURNS = 1000
_throttle = Throttle(logging.getLogger(__name__))


@dataclass
class _Pending:
    turn: int
    item_id: str
    asked_at: float
    timer: TimerHandle | None = None
    response_id: str | None = None


class CallAnalyser:
    """The live analysis of one call; inert when the plan has no ``[analysis]``."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self.config = call.dialplan.analysis
        self._validator = jsonschema.Draft202012Validator(dict(self.config.schema))
        self._turn = 0
        self._pending: dict[int, _Pending] = {}
        #: per action: matches in a row so far, matches in total
        self._streak = [0] * len(self.config.actions)
        self._total = [0] * len(self.config.actions)
        self._fired: set[int] = set()
        self._closed = False
        #: the upstream sessions seen at the last turn, and where the current session's
        #: items begin in the transcript (a new session re-creates the history under new
        #: ids: an older item's id would be an unknown reference)
        self._sessions = 0
        self._since = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ---------------------------------------------------------------- asking
    def caller_turn(self, item_id: str) -> None:
        """A caller turn's transcription completed: analyse the conversation up to it."""
        call = self._call
        if not self.config.enabled or self._closed or not call.upstream_usable:
            return
        if self._turn >= MAX_TURNS:
            metrics.ANALYSIS_RESULTS.labels(outcome="limit").inc()
            return
        self._turn += 1
        turn = self._turn
        sessions = len(call.record.session_ids)
        if self._sessions and sessions != self._sessions:
            self._since = next((i for i in range(len(call.record.transcript) - 1, -1, -1)
                                if call.record.transcript[i].item_id == item_id), 0)
        self._sessions = sessions
        if len(self._pending) >= self.config.max_concurrent:
            self._store(turn, item_id, "busy", error="too many analyses in flight")
            return
        self._pending[turn] = _Pending(turn, item_id, call.clock.time())
        call.spawn(self._ask(turn), f"analysis-{turn}")

    def _latest_items(self) -> list[str]:
        ids: list[str] = []
        for entry in reversed(self._call.record.transcript[self._since:]):
            if entry.item_id and entry.item_id not in ids:
                ids.append(entry.item_id)
            if len(ids) >= self.config.items:
                break
        return ids[::-1]

    async def _ask(self, turn: int) -> None:
        call, pending = self._call, self._pending.get(turn)
        client = call.client
        send = getattr(client, "create_out_of_band", None)
        if pending is None or send is None:
            self._finish(turn, "failed", error="the upstream has no out-of-band responses")
            return
        try:
            sent = await send(self.config.request_instructions(),
                              {"turn": str(turn), "kind": KIND}, self._latest_items())
        except RealtimeError as exc:
            sent, reason = False, repr(exc)
        else:
            reason = "not sent (the upstream is not connected)"
        if not sent:
            self._finish(turn, "failed", error=reason)
            return
        pending.timer = call.clock.call_later(self.config.timeout_s,
                                              lambda: self._finish(turn, "timeout"))

    # ---------------------------------------------------------------- answers
    def started(self, e: ev.OutOfBandStarted) -> None:
        """The upstream began one: its id, to cancel it on a timeout or the call's end."""
        pending = self._pending.get(self._turn_of(e.metadata) or 0)
        if pending is not None:
            pending.response_id = e.response_id

    @staticmethod
    def _turn_of(metadata: dict[str, str]) -> int | None:
        if metadata.get("kind") != KIND:
            return None
        try:
            return int(metadata.get("turn", ""))
        except ValueError:
            return None

    def done(self, e: ev.OutOfBandDone) -> None:
        """An out-of-band response ended; ours are those with ``kind`` = analysis."""
        turn = self._turn_of(e.metadata)
        if turn is None or turn not in self._pending:
            return                      # timed out, or the call is over: ignored
        if e.status != "completed":
            self._finish(turn, "failed", error=f"response {e.status}")
            return
        try:
            result = json.loads(e.text)
        except ValueError:
            self._finish(turn, "invalid", error="not JSON", text=e.text)
            return
        problem = jsonschema.exceptions.best_match(self._validator.iter_errors(result))
        if problem is not None:
            path = "/".join(str(p) for p in problem.absolute_path) or "(top)"
            self._finish(turn, "invalid", error=f"{path}: {problem.message}"[:200],
                         text=e.text)
            return
        self._finish(turn, "ok", result=result)

    def _finish(self, turn: int, status: str, *, result: dict[str, Any] | None = None,
                error: str = "", text: str = "") -> None:
        pending = self._pending.pop(turn, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        if status in ("timeout", "cancelled") and pending.response_id is not None:
            cancel = getattr(self._call.client, "cancel_out_of_band", None)
            if cancel is not None and self._call.upstream_usable:
                cancel(pending.response_id)     # no more tokens spent on it
        latency_ms = round((self._call.clock.time() - pending.asked_at) * 1000.0, 1)
        actions = self._evaluate(result) if result is not None and not self._closed else []
        self._store(turn, pending.item_id, status, result=result, error=error,
                    text=text, latency_ms=latency_ms, actions=actions)

    def _store(self, turn: int, item_id: str, status: str, *,
               result: dict[str, Any] | None = None, error: str = "", text: str = "",
               latency_ms: float | None = None, actions: list[str] | None = None) -> None:
        call = self._call
        metrics.ANALYSIS_RESULTS.labels(outcome=status).inc()
        if status in ("invalid", "failed"):
            _throttle.log(logging.WARNING, f"analysis-{status}", "[%s] analysis of turn %d %s: %s",
                          call.call_id, turn, status, error)
        entry: dict[str, Any] = {"at": time.time(), "turn": turn, "item_id": item_id,
                                 "status": status, "result": result, "error": error,
                                 "latency_ms": latency_ms, "actions": actions or []}
        if text:
            entry["text"] = text[:MAX_BAD_TEXT]
        call.record.analysis.append(entry)
        if error and status != "busy":
            call.record.errors.append(f"analysis turn {turn}: {status}: {error}"[:300])
        call.emit(AnalysisAdded(call_id=call.call_id, turn=turn, status=status,
                                result=result, error=error, actions=actions or []))
        call.recorder.save_soon()

    # ---------------------------------------------------------------- actions
    def _evaluate(self, result: dict[str, Any]) -> list[str]:
        fired: list[str] = []
        for index, action in enumerate(self.config.actions):
            if action.when.holds(result):
                self._streak[index] += 1
                self._total[index] += 1
            else:
                self._streak[index] = 0
            seen = self._streak[index] if action.consecutive else self._total[index]
            if index in self._fired or seen < action.count:
                continue
            self._fired.add(index)
            fired.append(self._act(action))
        return fired

    def _act(self, action: AnalysisAction) -> str:
        call = self._call
        metrics.ANALYSIS_ACTIONS.labels(action=action.do).inc()
        if action.do == "tag":
            assert action.tag is not None
            if action.tag not in call.record.tags:
                call.record.tags.append(action.tag)
            call.log.info("analysis: tagged %s", action.tag)
            return f"tag:{action.tag}"
        if action.do == "transfer":
            assert action.target is not None
            call.log.info("analysis: transferring to %s", action.target)
            call.spawn(self._transfer(action.target), "analysis-transfer")
            return f"transfer:{action.target}"
        call.log.info("analysis: hanging up")
        call.spawn(self._hang_up(), "analysis-hangup")
        return "hangup"

    async def _transfer(self, target: str) -> None:
        await self._call.control.drained()       # the agent's words first
        await self._call.control.transfer(target)

    async def _hang_up(self) -> None:
        await self._call.control.drained()
        self._call.end(EndReason.AGENT_HANGUP, "analysis")

    # ---------------------------------------------------------------- the end
    def close(self) -> None:
        """The call ended: analyses in flight are cancelled (answers ignored)."""
        self._closed = True
        for turn in list(self._pending):
            self._finish(turn, "cancelled")


__all__ = ["KIND", "MAX_TURNS", "CallAnalyser"]
