"""Live call analysis over a whole SIP call: baresip calls a real ``voicebridge serve``
whose upstream is the emulator (run here, with a script that says what each caller turn
was heard as); headless Chromium follows the call page while the call goes on.

The caller speaks three times: first about a refund, then angrily twice. Each turn's
analysis (an out-of-band response, never played) must appear live on the call page (rows
added from ``call.analysis`` events), and the record must hold one analysis per turn with
its labels, and the tag the dialplan's action sets after two angry turns in a row.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from bridge.bench.sip import ServeProcess
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support import baresip as phone
from tests.support.interop import require_binary
from tests.support.waiting import until

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SCRIPT = """
speech = "tone"
[[rule]]
on_turn = 1
heard = "Hello, I want a refund for my order"
[[rule]]
on_turn = 2
heard = "This is terrible, I am angry"
[[rule]]
on_turn = 3
heard = "Awful. I am furious, this is the worst"
"""

PLAN = """
description = "analysis over SIP"
[match]
default = true
[agent]
instructions = "test agent"
[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 400
[agent.transcription]
model = "whisper-1"
[targets]
operator = { uri = "sip:operator@127.0.0.1", description = "a person" }

[analysis]
items = 4

[[analysis.actions]]
when = "sentiment == 'negative'"
count = 2
do = "tag"
tag = "angry-caller"
"""


def three_turns(folder: Path) -> Path:
    """The caller's audio: a phrase three times, with pauses long enough for each reply."""
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    raw = folder / "espeak.wav"
    subprocess.run([espeak, "-w", str(raw), "Hello, I have a question about my order."],
                   check=True, capture_output=True)
    turn = folder / "turn.wav"
    subprocess.run([sox, str(raw), "-r", "8000", "-c", "1", "-b", "16", str(turn),
                    "pad", "0.3", "4.0"], check=True, capture_output=True)
    out = folder / "three.wav"
    subprocess.run([sox, str(turn), str(turn), str(turn), str(out), "pad", "2.0", "3.0"],
                   check=True, capture_output=True)
    return out


async def test_analysis_labels_in_the_record_and_live_on_the_call_page(
        tmp_path: Path) -> None:
    require_binary("baresip", "the SIP caller")
    chromium = require_binary("chromium", "the call page")
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "analysed.toml").write_text(PLAN)
    script = tmp_path / "script.toml"
    script.write_text(SCRIPT)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    cfg = phone.config(tmp_path, three_turns(tmp_path), sounds)
    async with Emulator(EmulatorConfig(script=script, greeting_ms=300)) as emu:
        serve = ServeProcess(tmp_path / "serve", dialplans=plans,
                             env={"VOICEBRIDGE_REALTIME_EMULATOR_URL": emu.url})
        with serve:
            started = time.time()
            call = asyncio.create_task(phone.call(
                cfg, sounds, f"sip:agent@127.0.0.1:{serve.sip_port}", serve.records, 60))
            try:
                def live_call() -> str | None:
                    return next((r["call_id"] for r in serve.records()
                                 if r["caller"] == "bs" and r["started_at"] >= started - 1
                                 and not r["ended_at"]), None)
                await until(lambda: live_call() is not None, 20, what="the call's record")
                call_id = live_call()
                rows = await follow_the_call_page(chromium, tmp_path, serve, str(call_id))
                done = await call
            finally:
                if not call.done():
                    call.cancel()
    info = f"{done.output[-1500:]}\n{serve.log_tail()}"
    record = done.record
    # Live on the page: the turns' rows came from call.analysis events, with their labels.
    assert [r["turn"] for r in rows][:3] == ["1", "2", "3"], rows
    assert rows[2]["live"] == "1", rows
    assert "intent=refund" in rows[0]["labels"], rows
    assert "sentiment=negative" in rows[1]["labels"] and "angry" in rows[1]["labels"], rows
    assert "tag:angry-caller" in rows[2]["actions"], rows
    # In the record, per turn, never played: no agent transcript entry is the JSON.
    ok = [a for a in record["analysis"] if a["status"] == "ok"]
    assert [a["turn"] for a in ok][:3] == [1, 2, 3], info
    assert ok[0]["result"]["intent"] == "refund"
    assert ok[1]["result"]["sentiment"] == "negative" and "angry" in ok[1]["result"]["labels"]
    assert record["tags"] == ["angry-caller"], record
    assert not any(t["text"].startswith("{") for t in record["transcript"]), record
    assert record["end_reason"] == "caller_hangup", info


async def follow_the_call_page(chromium: str, tmp: Path, serve: ServeProcess,
                               call_id: str) -> list[dict[str, str]]:
    """Open the call page while the call is live; its analysis rows once three turns are
    on it, at least one of them added by a live event."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True,
                                          args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            await page.goto(f"{serve.http_url}/login?token={ServeProcess.TOKEN}")
            await page.goto(f"{serve.http_url}/calls/{call_id}")
            assert await page.inner_text("header .state") == "live"

            async def three_live_rows() -> bool:
                # rows of turns analysed before the page opened are drawn by the server;
                # the later ones (at least the last) only by the live events
                rows = page.locator("#analysis tbody tr")
                return (await rows.count() >= 3 and
                        await page.locator('#analysis tr[data-live="1"]').count() >= 1)
            async def shown() -> str:
                rows = await page.inner_html("#analysis")
                return f"three analysed turns on the page:\n{rows}\n{serve.log_tail(40)}"
            try:
                await until(three_live_rows, 60, poll_s=0.2)
            except AssertionError:
                raise AssertionError(await shown()) from None
            return list(await page.eval_on_selector_all(
                "#analysis tbody tr",
                """rows => rows.map(r => ({turn: r.dataset.turn, live: r.dataset.live || "",
                     labels: r.children[2].textContent, actions: r.children[3].textContent}))
                """))
        finally:
            await browser.close()
