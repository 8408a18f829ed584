"""Post-call summaries without a call: the ``[summary]`` table, and the queue that streams a
record's summary from the emulator over real HTTP and delivers it to a real webhook."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge import metrics
from bridge.call.events import CallEvent
from bridge.call.records import CallRecord, MemoryRecordStore, ToolCallRecord, TranscriptEntry
from bridge.call.summary import SummaryDelta, SummaryDone, SummaryQueue, call_messages
from bridge.dialplans.loader import load_dialplans
from bridge.dialplans.summary import SummaryConfig
from bridge.errors import DialplanError
from bridge.realtime.chat import ChatClient, chat_target
from bridge.realtime.config import RealtimeTarget
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.waiting import until

KEY = "summary-key-0123"
SECRET = "crm-secret-token-abcdef"
PLAN = """
[match]
default = true
[summary]
enabled = true
dispositions = ["resolved", "escalated", "handled", "no_conversation"]
webhook_url = "${CRM_URL}/calls"
webhook_headers = { Authorization = "Bearer ${CRM_TOKEN}" }
[summary.fields]
intent = { type = "string", description = "what the caller wanted" }
escalate = { type = "boolean" }
"""


def write_plan(tmp: Path, text: str = PLAN) -> Path:
    folder = tmp / "plans"
    folder.mkdir(exist_ok=True)
    (folder / "crm.toml").write_text(text)
    return folder


def test_the_summary_table_loads_with_its_secret_hidden(tmp_path: Path) -> None:
    plans = load_dialplans(write_plan(tmp_path), env={"CRM_URL": "http://crm.example",
                                                      "CRM_TOKEN": SECRET})
    config = plans["crm"].summary
    assert config.enabled and config.webhook_url == "http://crm.example/calls"
    assert config.webhook_headers["Authorization"].value == f"Bearer {SECRET}"
    assert SECRET not in repr(config) and SECRET not in repr(plans["crm"])
    schema = config.schema()
    assert schema["properties"]["disposition"]["enum"][0] == "resolved"
    assert schema["properties"]["fields"]["required"] == ["intent", "escalate"]
    assert schema["properties"]["fields"]["properties"]["escalate"]["type"] == [
        "boolean", "null"]


def test_summary_table_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(DialplanError) as missing:
        load_dialplans(write_plan(tmp_path), env={"CRM_URL": "http://crm.example"})
    assert missing.value.field == "summary.webhook_headers.Authorization"
    assert "CRM_TOKEN" in str(missing.value)
    with pytest.raises(DialplanError) as unknown:
        load_dialplans(write_plan(tmp_path, "[match]\ndefault = true\n[summary]\nenable = 1\n"))
    assert unknown.value.field == "summary.enable"
    with pytest.raises(DialplanError) as bad_type:
        load_dialplans(write_plan(tmp_path, "[match]\ndefault = true\n[summary.fields]\n"
                                            "x = { type = \"date\" }\n"))
    assert bad_type.value.field.startswith("summary.fields.x")


def test_check_dialplans_shows_the_summary(tmp_path: Path) -> None:
    folder = write_plan(tmp_path)
    out = subprocess.run([sys.executable, "-m", "bridge", "check-dialplans", "--dir",
                          str(folder)], capture_output=True, text=True, check=True,
                         env={"CRM_URL": "http://crm.example", "CRM_TOKEN": SECRET,
                              "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())})
    line = next(x for x in out.stdout.splitlines() if x.strip().startswith("summary:"))
    assert "fields intent, escalate" in line and "webhook to crm.example" in line
    assert SECRET not in out.stdout


# ---- the queue ---------------------------------------------------------------------------

class Crm:
    """A webhook receiver on loopback: answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], Any]] = []
        self.statuses: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    receiver = Crm()
    app = web.Application()
    app.router.add_post("/calls", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/calls"
    yield receiver
    await runner.cleanup()


def test_the_messages_carry_transcript_tool_calls_and_analysis() -> None:
    record = ended_call()
    setattr(record, "analysis", [{"turn": 1, "intent": "refund"}])  # noqa: B010 (newer records)
    setattr(record, "tags", ["vip"])  # noqa: B010
    system, user = call_messages(record, SummaryConfig(fields={"x": {"type": "string"}}))
    assert system["role"] == "system" and '"x": {"type": ["string", "null"]}' in system["content"]
    text = user["content"]
    assert "Caller: This is terrible, I want my money back" in text
    assert "Agent: Hello, how can I help?" in text
    assert '- order_status({"order_id":"1234"}) -> ok: {"status":"lost"}' in text
    assert '- {"turn": 1, "intent": "refund"}' in text and "Tags: vip" in text


def ended_call() -> CallRecord:
    record = CallRecord(call_id="c_summary1", caller="+15550100", called="100",
                        dialplan="crm", started_at=1.0, ended_at=9.0,
                        end_reason="caller_hangup")
    record.transcript += [
        TranscriptEntry("agent", "i1", "Hello, how can I help?", 2.0),
        TranscriptEntry("caller", "i2", "This is terrible, I want my money back", 3.0),
        TranscriptEntry("agent", "i3", "I am sorry, let me check.", 4.0)]
    record.tool_calls.append(ToolCallRecord(5.0, "r1", "call1", "order_status",
                                            '{"order_id":"1234"}', True, '{"status":"lost"}',
                                            None, 0.1))
    return record


def queue_for(emu: Emulator, store: MemoryRecordStore, events: list[CallEvent],
              sleeps: list[float], key: str = KEY, **kw: Any) -> SummaryQueue:
    host = emu.url.removeprefix("ws://")
    target = chat_target(RealtimeTarget("azure", f"ws://{host}/openai/v1/realtime?model=rt",
                                        "ga", key), "gpt-4o-mini")

    async def sleep(s: float) -> None:
        sleeps.append(s)

    return SummaryQueue(lambda: ChatClient(target, sleep=sleep), store, events.append,
                        sleep=sleep, **kw)


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    return write_plan(tmp_path)


async def test_a_summary_streams_is_stored_and_reaches_the_webhook(
        crm: Crm, plan_dir: Path) -> None:
    config = load_dialplans(plan_dir, env={"CRM_URL": crm.url.removesuffix("/calls"),
                                           "CRM_TOKEN": SECRET})["crm"].summary
    store, events, sleeps = MemoryRecordStore(), [], []
    record = ended_call()
    done = metrics.SUMMARIES.labels(outcome="done")._value.get()
    async with Emulator(EmulatorConfig(api_key=KEY, chat_chunk_ms=1)) as emu:
        emu.chat.refuse(1, 429, retry_after_s=2.0)
        queue = queue_for(emu, store, events, sleeps)
        assert queue.submit(record, config)
        await asyncio.wait_for(wait_status(record, "done"), 20)
        await queue.close()
    summary = record.summary
    assert summary is not None
    assert summary["text"].startswith("The caller said: This is terrible")
    assert summary["disposition"] == "escalated" and summary["attempts"] == 2
    assert summary["fields"] == {"intent": "refund", "escalate": True}
    assert summary["webhook"] == "delivered (200)"
    # The 429 and its Retry-After are in the record; the wait was what it said.
    assert sleeps == [2.0]
    assert record.errors == ["summary: attempt 1: 429 Rate limit reached; retry later. "
                             "(retry after 2 s)"]
    stored = await store.get(record.call_id)
    assert stored is not None and stored.summary == summary
    # Events: the pieces, in order, make the answer; then the result.
    deltas = [e for e in events if isinstance(e, SummaryDelta)]
    assert len(deltas) > 5 and all(e.call_id == record.call_id for e in deltas)
    assert [type(e) for e in events][-1] is SummaryDone
    assert '"summary": "The caller said' in "".join(e.delta for e in deltas)
    # The webhook got the result with the dialplan's secret header.
    headers, body = crm.received[0]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["call_id"] == "c_summary1" and body["disposition"] == "escalated"
    assert body["summary"] == summary["text"] and body["fields"]["intent"] == "refund"
    assert metrics.SUMMARIES.labels(outcome="done")._value.get() == done + 1


async def wait_status(record: CallRecord, status: str) -> None:
    await until(lambda: (record.summary or {}).get("status") in (status, "failed"), 20,
                what=lambda: f"summary {status} ({record.summary})")


async def test_failures_are_recorded_and_the_webhook_is_retried(
        crm: Crm, plan_dir: Path) -> None:
    config = load_dialplans(plan_dir, env={"CRM_URL": crm.url.removesuffix("/calls"),
                                           "CRM_TOKEN": SECRET})["crm"].summary
    crm.statuses = [503, 503, 503]
    store, events, sleeps = MemoryRecordStore(), [], []
    good, refused = ended_call(), ended_call()
    refused.call_id = "c_summary2"
    async with Emulator(EmulatorConfig(api_key=KEY, chat_chunk_ms=1)) as emu:
        webhook_fails = queue_for(emu, store, events, sleeps)
        webhook_fails.submit(good, config)
        await asyncio.wait_for(wait_status(good, "done"), 20)
        await webhook_fails.close()
        bad_key = queue_for(emu, store, events, sleeps, key="wrong")
        bad_key.submit(refused, config)
        await asyncio.wait_for(wait_status(refused, "failed"), 20)
        await bad_key.close()
    assert good.summary is not None and good.summary["webhook"] == "failed: HTTP 503"
    assert len(crm.received) == 3 and sleeps == [1.0, 2.0]
    assert [e.split(":")[0] for e in good.errors] == ["summary webhook"] * 3
    assert refused.summary is not None and refused.summary["status"] == "failed"
    assert refused.errors[0].startswith("summary: 401")
    failed = [e for e in events if isinstance(e, SummaryDone) and e.status == "failed"]
    assert [e.call_id for e in failed] == ["c_summary2"]
    assert len(crm.received) == 3                 # no webhook for a failed summary


async def test_a_full_queue_drops_and_counts(plan_dir: Path) -> None:
    store, events, sleeps = MemoryRecordStore(), [], []
    config = SummaryConfig(enabled=True)
    dropped = metrics.SUMMARIES.labels(outcome="dropped")._value.get()
    async with Emulator(EmulatorConfig(api_key=KEY, chat_chunk_ms=1)) as emu:
        queue = queue_for(emu, store, events, sleeps, queue_max=1, concurrency=1)
        first, second = ended_call(), ended_call()
        second.call_id = "c_summary3"
        assert queue.submit(first, config)
        assert not queue.submit(second, config)     # the worker has not taken the first yet
        await asyncio.wait_for(wait_status(first, "done"), 20)
        await queue.close()
        assert not queue.submit(ended_call(), config)   # closed: shutting down
    assert second.summary == {"status": "dropped"}
    assert second.errors == ["summary: dropped, the summary queue was full"]
    kept = await store.get("c_summary3")            # the note is saved on the record
    assert kept is not None and kept.summary == {"status": "dropped"}
    assert metrics.SUMMARIES.labels(outcome="dropped")._value.get() == dropped + 2
    assert len([r for r in emu.chat.requests if r.status == 200]) == 1


async def test_closing_lets_a_summary_under_way_finish() -> None:
    store, events, sleeps = MemoryRecordStore(), [], []
    async with Emulator(EmulatorConfig(api_key=KEY, chat_chunk_ms=20)) as emu:
        queue = queue_for(emu, store, events, sleeps)
        record = ended_call()
        assert queue.submit(record, SummaryConfig(enabled=True))
        await queue.close()                 # at once: the summary is queued, not yet begun
    assert record.summary is not None and record.summary["status"] == "done"
    stored = await store.get(record.call_id)
    assert stored is not None and stored.summary == record.summary


def test_the_front_desk_plan_is_summarised() -> None:
    from bridge.dialplans.loader import PACKAGED_DIR  # noqa: PLC0415

    config = load_dialplans(PACKAGED_DIR, env={})["front-desk"].summary
    assert config.enabled and "transferred" in config.dispositions
    fields = config.schema()["properties"]["fields"]["properties"]
    assert fields["department"]["enum"] == ["sales", "support", "billing", None]
    assert list(fields) == ["department", "order_number", "callback_wanted"]
