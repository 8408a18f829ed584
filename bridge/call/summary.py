"""Post-call summaries: an ended call's record, summarised over Chat Completions.

Theory of operation
-------------------
When a call on a dialplan with ``[summary] enabled`` ends (or an operator presses
"Summarise" on an ended call's page), its record goes into :class:`SummaryQueue`: a
bounded queue (``[summary] queue_max``; a call that does not fit is dropped, counted under
``voicebridge_summaries{outcome="dropped"}`` and noted on its record) served by
``[summary] concurrency`` workers. Nothing here runs before the call has ended, so nothing
here can affect a call.

A worker sends the transcript, the tool calls and the live analysis (when the record has
one) (:func:`call_messages`) with the
dialplan's instructions and the JSON schema of its answer (``response_format``,
``bridge.dialplans.summary``) and streams the answer: each piece is published as a
``call.summary_delta`` event (the call page shows the text grow), then ``call.summary``
with the parsed result. The record gets ``summary``: ``status`` ("queued", "running",
"delivering" (to the webhook), "done", "failed", "dropped"), ``text``, ``disposition``,
``fields``, ``attempts`` and, after a webhook delivery, ``webhook``; each failed attempt
(a 429 and its Retry-After, a 5xx, a network error) is appended to the record's
``errors`` as ``summary: ...``. The record is saved when the summary starts and ends.

With ``webhook_url`` the result is POSTed as JSON (:func:`webhook_body`) with the
dialplan's ``webhook_headers`` (secrets: never logged), up to :data:`WEBHOOK_ATTEMPTS`
times on a network error, 429 or 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from bridge import metrics
from bridge.call.events import CallEvent
from bridge.call.records import CallRecord, RecordStore
from bridge.config import SummarySettings
from bridge.dialplans.plan import Dialplan
from bridge.dialplans.summary import SummaryConfig
from bridge.errors import ChatFailed
from bridge.logthrottle import Throttle
from bridge.realtime.auth import TokenProvider
from bridge.realtime.chat import ChatClient, chat_target
from bridge.realtime.config import RealtimeTarget

__all__ = ["WEBHOOK_ATTEMPTS", "SummaryDelta", "SummaryDone", "SummaryQueue", "call_messages",
           "parse_answer", "summary_queue", "webhook_body"]

log = logging.getLogger(__name__)
#: drops and failures follow call volume and the chat service's health: bounded lines
_throttled = Throttle(log)

WEBHOOK_ATTEMPTS = 3
MAX_LINE = 2000          # characters of one transcript line or tool output sent
MAX_LINES = 400          # transcript entries sent (the last ones)


@dataclass(frozen=True, kw_only=True)
class SummaryDelta(CallEvent):
    """A piece of the summary as it streams; ``restart``: a retry, start the text again."""

    kind: ClassVar[str] = "call.summary_delta"
    delta: str
    restart: bool = False


@dataclass(frozen=True, kw_only=True)
class SummaryDone(CallEvent):
    kind: ClassVar[str] = "call.summary"
    status: str                      # "done" or "failed"
    summary: str = ""
    disposition: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def call_messages(record: CallRecord, config: SummaryConfig) -> list[dict[str, Any]]:
    """The Chat Completions messages for one call."""
    system = (config.instructions.strip() + "\n\nAnswer with one JSON object that matches "
              "this JSON schema:\n" + json.dumps(config.schema()))
    lines = [f"Call {record.call_id} from {record.caller or 'unknown'} to "
             f"{record.called or 'unknown'} (dialplan {record.dialplan}), "
             f"ended: {record.end_reason or 'unknown'}.", "", "Transcript:"]
    for e in record.transcript[-MAX_LINES:]:
        who = "Caller" if e.role == "caller" else "Agent"
        cut = " (cut off)" if e.truncated else ""
        lines.append(f"{who}: {e.text[:MAX_LINE]}{cut}")
    if not record.transcript:
        lines.append("(nothing was said)")
    if record.tool_calls:
        lines += ["", "Tool calls:"]
        lines += [f"- {t.name}({t.arguments[:MAX_LINE]}) -> {'ok' if t.ok else 'error'}: "
                  f"{t.output[:MAX_LINE]}" for t in record.tool_calls]
    # The live analysis of the caller's turns and its tags, on records that have them.
    analysis = getattr(record, "analysis", None)
    if analysis:
        lines += ["", "Analysis of the caller's turns:"]
        lines += [f"- {json.dumps(a, ensure_ascii=False)[:MAX_LINE]}"
                  for a in analysis[-MAX_LINES:]]
    tags = getattr(record, "tags", None)
    if tags:
        lines.append("Tags: " + ", ".join(str(t) for t in tags))
    return [{"role": "system", "content": system},
            {"role": "user", "content": "\n".join(lines)}]


def parse_answer(text: str) -> tuple[str, str, dict[str, Any]]:
    """``(summary, disposition, fields)`` of an answer; a model that did not answer JSON
    still has its text kept as the summary."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip(), "", {}
    if not isinstance(data, dict):
        return text.strip(), "", {}
    fields = data.get("fields")
    return (str(data.get("summary") or ""), str(data.get("disposition") or ""),
            dict(fields) if isinstance(fields, dict) else {})


def webhook_body(record: CallRecord) -> dict[str, Any]:
    """What the webhook receives."""
    s = record.summary or {}
    return {"call_id": record.call_id, "caller": record.caller, "called": record.called,
            "dialplan": record.dialplan, "started_at": record.started_at,
            "ended_at": record.ended_at, "end_reason": record.end_reason,
            "summary": s.get("text", ""), "disposition": s.get("disposition", ""),
            "fields": s.get("fields", {})}


Publish = Callable[[CallEvent], None]


class SummaryQueue:
    """The bounded background queue of summaries (module docstring)."""

    def __init__(self, chat: Callable[[], ChatClient], store: RecordStore, publish: Publish,
                 *, queue_max: int = 200, concurrency: int = 2,
                 http: httpx.AsyncClient | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """``http``: the connection pool of webhook deliveries (and of ``chat``'s clients,
        when they share it), closed with the queue; one of its own when not given."""
        self._chat = chat
        self._http = http or httpx.AsyncClient()
        self._store = store
        self._publish = publish
        self._queue: asyncio.Queue[tuple[CallRecord, SummaryConfig]] = asyncio.Queue(
            max(1, queue_max))
        self._concurrency = max(1, concurrency)
        self._workers: list[asyncio.Task[None]] = []
        self._sleep = sleep
        self._closed = False
        self._saves: set[asyncio.Task[None]] = set()
        self.running: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, record: CallRecord, config: SummaryConfig) -> bool:
        """Queue an ended call's summary; False (counted, noted) when the queue is full."""
        if self._closed:
            return self._drop(record, "the bridge is shutting down")
        if not self._workers:
            self._workers = [asyncio.get_running_loop().create_task(
                self._worker(), name=f"summary-{i}") for i in range(self._concurrency)]
        try:
            self._queue.put_nowait((record, config))
        except asyncio.QueueFull:
            return self._drop(record, "the summary queue was full")
        record.summary = {"status": "queued"}
        self.running.add(record.call_id)
        self._idle.clear()
        return True

    def _drop(self, record: CallRecord, why: str) -> bool:
        metrics.SUMMARIES.labels(outcome="dropped").inc()
        record.summary = {"status": "dropped"}
        record.errors.append(f"summary: dropped, {why}")
        _throttled.log(logging.WARNING, "summary dropped", "call %s: summary dropped (%s)",
                       record.call_id, why)
        if not self._closed:            # keep the note (shutting down: the store is closing)
            task = asyncio.get_running_loop().create_task(self._save(record))
            self._saves.add(task)
            task.add_done_callback(self._saves.discard)
        return False

    def after_call(self, record: CallRecord, plan: Dialplan) -> None:
        """The manager's after-call hook: summarise when the dialplan asks for it."""
        if plan.summary.enabled:
            self.submit(record, plan.summary)

    async def close(self, grace_s: float = 5.0) -> None:
        """Take no more; give the summaries under way ``grace_s`` to finish, then stop."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        if self._saves:
            await asyncio.wait(self._saves, timeout=5.0)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        await self._http.aclose()

    async def _worker(self) -> None:
        while True:
            record, config = await self._queue.get()
            try:
                await self.run(record, config)
            except Exception:       # asyncio.CancelledError is not an Exception
                log.exception("call %s: summary failed", record.call_id)
            finally:
                self.running.discard(record.call_id)
                if not self.running:
                    self._idle.set()

    async def run(self, record: CallRecord, config: SummaryConfig) -> None:
        """Summarise one call now (see the module docstring)."""
        call_id = record.call_id
        record.summary = {"status": "running", "started_at": time.time()}
        await self._save(record)
        client = self._chat()

        def delta(piece: str) -> None:
            self._publish(SummaryDelta(call_id=call_id, delta=piece))

        def restart() -> None:
            self._publish(SummaryDelta(call_id=call_id, delta="", restart=True))

        try:
            result = await client.complete(
                call_messages(record, config), on_delta=delta, on_restart=restart,
                response_format={"type": "json_schema", "json_schema": {
                    "name": "call_summary", "strict": True, "schema": config.schema()}})
        except ChatFailed as exc:
            metrics.SUMMARIES.labels(outcome="failed").inc()
            record.errors.append(f"summary: {exc}")
            record.summary = {"status": "failed", "attempts": exc.attempts,
                              "error": str(exc), "finished_at": time.time()}
            self._publish(SummaryDone(call_id=call_id, status="failed", error=str(exc)))
            _throttled.log(logging.WARNING, "summary failed", "call %s: no summary (%s)",
                           call_id, exc)
            await self._save(record)
            return
        record.errors += [f"summary: attempt {i + 1}: {e}" for i, e in enumerate(result.errors)]
        text, disposition, fields = parse_answer(result.text)
        record.summary = {"status": "delivering" if config.webhook_url else "done",
                          "text": text, "disposition": disposition,
                          "fields": fields, "attempts": result.attempts,
                          "usage": result.usage, "finished_at": time.time()}
        metrics.SUMMARIES.labels(outcome="done").inc()
        self._publish(SummaryDone(call_id=call_id, status="done", summary=text,
                                  disposition=disposition, fields=fields))
        if config.webhook_url:
            record.summary["webhook"] = await self._deliver(record, config)
            record.summary["status"] = "done"
        await self._save(record)

    async def _deliver(self, record: CallRecord, config: SummaryConfig) -> str:
        """POST the summary to the dialplan's webhook; what happened, in a few words."""
        assert config.webhook_url is not None
        headers = {name: secret.value for name, secret in config.webhook_headers.items()}
        outcome = ""
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                response = await self._http.post(config.webhook_url, json=webhook_body(record),
                                                 headers=headers,
                                                 timeout=config.webhook_timeout_s)
            except httpx.TransportError as exc:
                outcome = f"failed: {type(exc).__name__}"
            else:
                outcome = f"{response.status_code}"
                if response.is_success:
                    metrics.SUMMARIES.labels(outcome="webhook_delivered").inc()
                    return f"delivered ({outcome})"
                outcome = f"failed: HTTP {outcome}"
                if response.status_code != 429 and response.status_code < 500:
                    break
            record.errors.append(f"summary webhook: attempt {attempt}: {outcome}")
            if attempt < WEBHOOK_ATTEMPTS:
                await self._sleep(float(attempt))
        metrics.SUMMARIES.labels(outcome="webhook_failed").inc()
        if not record.errors or not record.errors[-1].startswith("summary webhook"):
            record.errors.append(f"summary webhook: {outcome}")
        return outcome

    async def _save(self, record: CallRecord) -> None:
        try:
            await self._store.save(record)
        except Exception as exc:    # asyncio.CancelledError is not an Exception
            log.warning("call %s: could not save the summary (%s)", record.call_id,
                        type(exc).__name__)


def summary_queue(settings: SummarySettings, target: RealtimeTarget,
                  tokens: TokenProvider | None, store: RecordStore,
                  publish: Publish) -> SummaryQueue:
    """The process's queue: chat at ``[summary] chat_deployment`` beside ``target``."""
    chat = chat_target(target, settings.chat_deployment, settings.chat_api_version or None)
    http = httpx.AsyncClient()          # one pool (and one TLS context) for every summary
    log.info("post-call summaries: Chat Completions at %s", chat.safe_url)

    def client() -> ChatClient:
        return ChatClient(chat, token_provider=tokens, http=http,
                          total_s=float(settings.total_s))

    return SummaryQueue(client, store, publish, queue_max=settings.queue_max,
                        concurrency=settings.concurrency, http=http)
