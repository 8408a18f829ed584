"""Live call analysis (``[analysis]``) over whole calls against the emulator: an in-memory
leg, the real Realtime client, the emulator's keyword analysis over a real WebSocket.

The emulator's script says what each caller turn was heard as (``heard``); its
out-of-band analysis reads those words. Two angry turns in a row tag the call and hand
it to a person; a schema the answer cannot meet is recorded as an error, never a crash.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge import metrics
from bridge.call.events import AnalysisAdded, CallEvent
from bridge.call.records import CallRecord, MemoryRecordStore
from bridge.dialplans.analysis import Condition
from bridge.dialplans.loader import load_dialplans
from bridge.errors import DialplanError
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.web.timeline import render_svg, timeline_from_record
from tests.support.call_harness import OPERATOR, PLAN, SALES, Harness

SCRIPT = """
speech = "tone"
[[rule]]
on_turn = 1
heard = "I want a refund for my order"
[[rule]]
on_turn = 2
heard = "This is terrible, I am angry"
[[rule]]
on_turn = 3
heard = "Awful. I am furious, the worst service ever"
"""

ANALYSIS = """
[analysis]
items = 2
max_concurrent = 2
timeout_s = 10
{schema}

[[analysis.actions]]
when = "sentiment == 'negative'"
count = 2
do = "tag"
tag = "angry-caller"

[[analysis.actions]]
when = "labels has 'angry'"
count = 2
do = "transfer"
target = "operator"
"""


def plans(tmp: Path, schema: str = "") -> Path:
    folder = tmp / "plans"
    folder.mkdir(exist_ok=True)
    text = PLAN.format(tools="[]", greeting="", sales=SALES, operator=OPERATOR,
                       max_call_s=120, silence="", announcement="unavailable-transfer",
                       audio_format="pcm16")
    (folder / "test.toml").write_text(text + ANALYSIS.format(schema=schema))
    return folder


async def run_call(tmp: Path, turns: int, schema: str = "", *,
                   ends: bool = False) -> tuple[CallRecord, list[CallEvent]]:
    script = tmp / "script.toml"
    script.write_text(SCRIPT)
    plan = load_dialplans(plans(tmp, schema)).default
    events: list[CallEvent] = []
    async with Emulator(EmulatorConfig(script=script, greeting_ms=300)) as emu:
        h = Harness(emu.url, plan, MemoryRecordStore(), on_event=events.append)
        h.start()
        for n in range(1, turns + 1):
            await h.speak(600, then_silence_ms=1500)
            await h.until(lambda n=n: len(h.call.record.analysis) >= n  # type: ignore[misc]
                          or h.call.ended, 20)
            if h.call.ended:
                break
        if ends:                    # the analysis' own action ends it
            await h.until(lambda: h.call.ended, 20)
        else:
            h.leg.far_end_hangup()
        record = await h.finish()
    return record, events


async def test_two_angry_turns_tag_the_call_and_transfer_it(tmp_path: Path) -> None:
    transfers_before = metrics.ANALYSIS_ACTIONS.labels(action="transfer")._value.get()
    rec, events = await run_call(tmp_path, 3, ends=True)
    results = [a for a in rec.analysis if a["status"] == "ok"]
    assert [a["turn"] for a in results][:3] == [1, 2, 3], rec.analysis
    first, second, third = (a["result"] for a in results[:3])
    assert first["intent"] == "refund" and first["sentiment"] != "negative"
    assert second["sentiment"] == "negative" and "angry" in second["labels"]
    assert third["sentiment"] == "negative"
    # The analysis read the latest items only (items = 2) and its turns are stored per item.
    assert all(a["item_id"] for a in results)
    assert "tag:angry-caller" in results[2]["actions"]
    assert rec.tags == ["angry-caller"]
    assert rec.transferred_to == "operator" and rec.end_reason == "transferred"
    assert metrics.ANALYSIS_ACTIONS.labels(action="transfer")._value.get() == transfers_before + 1
    live = [e for e in events if isinstance(e, AnalysisAdded)]
    assert [e.turn for e in live][:3] == [1, 2, 3]
    assert live[2].to_json()["type"] == "call.analysis"
    # ... and on the call page's timeline, one mark per analysed turn
    svg = render_svg(timeline_from_record(rec))
    assert svg.count('class="analysis ok"') == len(results) >= 3
    # never played: every agent transcript entry is a spoken response's, none is JSON
    assert not any(t.text.startswith("{") for t in rec.transcript)


async def test_an_answer_off_the_schema_is_an_error_not_a_crash(tmp_path: Path) -> None:
    schema = ('schema = { type = "object", required = ["mood"], '
              'properties = { mood = { type = "string" } } }')
    rec, _ = await run_call(tmp_path, 1, schema)
    (entry,) = rec.analysis
    assert entry["status"] == "invalid" and "mood" in entry["error"], entry
    assert any(e.startswith("analysis turn 1: invalid") for e in rec.errors)
    assert rec.end_reason == "caller_hangup"


def test_conditions_are_tiny_and_safe() -> None:
    assert Condition.parse("sentiment == 'negative'").holds({"sentiment": "negative"})
    assert not Condition.parse("escalate == true").holds({"escalate": 1})
    assert Condition.parse("labels has \"angry\"").holds({"labels": ["x", "angry"]})
    assert not Condition.parse("labels has 'angry'").holds({"labels": "angry"})
    for bad in ("__import__('os')", "a == b", "x == [1]", "a.b == 1"):
        with pytest.raises(ValueError):
            Condition.parse(bad)


def test_an_action_naming_an_unknown_target_is_refused(tmp_path: Path) -> None:
    folder = plans(tmp_path)
    text = (folder / "test.toml").read_text().replace('target = "operator"',
                                                       'target = "nobody"')
    (folder / "test.toml").write_text(text)
    with pytest.raises(DialplanError, match="unknown target"):
        load_dialplans(folder)


@pytest.mark.parametrize(("change", "message"), [
    (("[agent.transcription]\nmodel = \"whisper-1\"\n", ""), "needs [agent.transcription]"),
    (("items = 2", 'items = 2\nschema = { type = "object", properties = 3 }'),
     "not a valid JSON schema"),
    (("items = 2", 'items = 2\nschema = { type = "array" }'), "must describe an object"),
    (("sentiment == 'negative'", "sentiment = 'negative'"), "FIELD == VALUE"),
])
def test_check_dialplans_refuses_a_bad_analysis_table(tmp_path: Path, change: tuple[str, str],
                                                      message: str) -> None:
    folder = plans(tmp_path)
    text = (folder / "test.toml").read_text()
    assert change[0] in text
    (folder / "test.toml").write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(DialplanError, match=re.escape(message)):
        load_dialplans(folder)
