"""A post-call summary over a whole SIP call: SIPp calls a real ``voicebridge serve``
whose Realtime and Chat Completions upstream is the emulator (run here, so its pace and
its record are the test's); headless Chromium watches the call's page.

When the caller hangs up, the dialplan's ``[summary]`` sends the call to Chat Completions
with ``stream: true``: the page, open since the call was live, shows the summary text grow
chunk by chunk (``call.summary_delta`` events), then the disposition and the dialplan's
fields; the stored record has the same summary. The page's "Summarise" button asks for it
again and the text streams in once more.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from bridge.bench.sip import Scenario, ServeProcess, free_udp_port, run_sipp
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.interop import require_binary
from tests.support.waiting import until

pytestmark = [pytest.mark.interop, pytest.mark.slow]

BROWSER_POLL_S = 0.03
PLAN = """
description = "summarised calls"
[match]
default = true
[agent]
instructions = "test agent"
greeting = "Say hello."
[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 300
[agent.transcription]
model = "whisper-1"
[summary]
enabled = true
dispositions = ["resolved", "escalated", "handled", "no_conversation"]
[summary.fields]
intent = { type = "string", description = "what the caller wanted" }
caller_turns = { type = "integer" }
"""


def phrase_ulaw(tmp: Path) -> Path:
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    wav, ulaw = tmp / "phrase.wav", tmp / "phrase.ulaw"
    subprocess.run([espeak, "-w", str(wav), "Hello, I would like a refund for my order."],
                   check=True, capture_output=True)
    subprocess.run([sox, str(wav), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw",
                    str(ulaw), "pad", "0.3", "2.5"], check=True, capture_output=True)
    return ulaw


async def live_call_id(serve: ServeProcess) -> str | None:
    status, body = await asyncio.to_thread(serve.get, "/calls", True)
    live = json.loads(body)["live"] if status == 200 else []
    return str(live[0]["call_id"]) if live else None


async def growth(page: Any, seen: list[str], done: str = "done") -> bool:
    """Note each new text of the summary; true once the page says the summary is done."""
    text = await page.inner_text("#summary-text")
    if text and (not seen or seen[-1] != text):
        seen.append(text)
    return bool(await page.get_attribute("#call-summary", "data-status") == done)


async def test_a_streamed_summary_on_the_call_page_and_in_the_record(tmp_path: Path) -> None:
    require_binary("sipp", "the SIP caller")
    chromium = require_binary("chromium", "the call page")
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "summarised.toml").write_text(PLAN)
    ulaw = phrase_ulaw(tmp_path)
    async with Emulator(EmulatorConfig(greeting_ms=300, chat_chunk_ms=120)) as emu:
        serve = ServeProcess(tmp_path / "serve", dialplans=plans,
                             env={"VOICEBRIDGE_REALTIME_EMULATOR_URL": emu.url,
                                  "VOICEBRIDGE_SUMMARY_CHAT_DEPLOYMENT": "gpt-4o-mini"})
        with serve:
            prefix = f"summary-{uuid.uuid4().hex[:8]}"
            scenario = (Scenario("summary").invite().rtp_stream(ulaw).pause(9000).bye()
                        .write(tmp_path))
            sipp = asyncio.create_task(run_sipp(
                scenario, serve.sip_port, workdir=tmp_path, local_port=free_udp_port(),
                media_port=free_udp_port(pair=True), call_id_prefix=prefix))
            found: list[str] = []

            async def live() -> bool:
                cid = await live_call_id(serve)
                found.extend([cid] if cid else [])
                return bool(found)
            await until(live, 30, what="the SIP call to be live", poll_s=0.2)
            call_id = found[0]
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium, headless=True,
                                                  args=["--no-sandbox", "--disable-gpu"])
                try:
                    page = await browser.new_page()
                    await page.goto(f"{serve.http_url}/login?token={serve.TOKEN}")
                    await page.goto(f"{serve.http_url}/calls/{call_id}")
                    assert await page.get_attribute("#call-summary", "data-status") == ""
                    run = await sipp
                    assert run.returncode == 0 and run.failed == 0, run.explain()
                    seen: list[str] = []
                    await until(lambda: growth(page, seen), 60, poll_s=BROWSER_POLL_S,
                                what=lambda: f"the summary on the page ({seen[-3:]})")
                    final = await page.inner_text("#summary-text")
                    result = await page.inner_text("#summary-result")
                    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")

                    async def stored() -> bool:
                        nonlocal record
                        record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
                        return (record.get("summary") or {}).get("status") == "done"
                    await until(stored, 20, what="the summary in the record", poll_s=0.2)

                    # Summarise again, on demand, from the ended call's page.
                    await page.reload()
                    await page.click("#summarise")
                    again: list[str] = []
                    await until(lambda: growth(page, again, "running"), 30,
                                poll_s=BROWSER_POLL_S, what="the second summary to start")
                    await until(lambda: growth(page, again), 30, poll_s=BROWSER_POLL_S,
                                what=lambda: f"the second summary ({again[-3:]})")
                finally:
                    await browser.close()
    # The text grew on the page, prefix by prefix, to the stored summary.
    assert len(seen) >= 4, seen
    assert all(b.startswith(a) for a, b in zip(seen[:-1], seen[1:], strict=True)), seen
    summary = record["summary"]
    assert final == summary["text"] and final.startswith("The caller said: (")
    assert summary["disposition"] == "handled" and summary["attempts"] == 1
    assert summary["fields"] == {"intent": "general", "caller_turns": 1}
    assert "disposition" in result and "handled" in result
    assert record["end_reason"] == "caller_hangup" and record["errors"] == []
    assert len(again) >= 3 and again[-1] == final
    # Both summaries were streamed Chat Completions of the call's transcript.
    chats = [r for r in emu.chat.requests if r.status == 200]
    assert len(chats) == 2 and all(r.stream and r.model == "gpt-4o-mini" for r in chats)
    assert chats[0].path == "/openai/v1/chat/completions"
    user = chats[0].body["messages"][1]["content"]
    assert "Caller: (" in user and "Agent: " in user
    assert chats[0].body["response_format"]["json_schema"]["strict"] is True
