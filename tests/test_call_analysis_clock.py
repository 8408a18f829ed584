"""Out-of-band analysis beside a spoken response, on the virtual media clock.

The wire events go through the Realtime client's own mapping (``EventMapper``, the
sans-I/O core of ``RealtimeClient``) and the mapped events into a whole ``Call`` on a
virtual clock (tests/support/call_rig.py): an analysis response interleaved with the
spoken one, the caller barging in while both are in progress. Only the spoken response is
played, truncated and interrupted; the analysis completes after the barge-in and lands
in the record. Deadlines (``timeout_s``) run on the call's clock.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.dialplans.loader import load_dialplans
from bridge.dialplans.plan import Dialplan
from bridge.realtime import events as ev
from bridge.realtime.dialects import EventMapper
from bridge.realtime.outofband import OOB_KEY, cancel
from tests.support.audio import tone
from tests.support.call_rig import Rig, make_plan
from tests.support.realtime_oracle import validate_client_event

ANALYSIS = """
[agent.transcription]
model = "whisper-1"

[analysis]
timeout_s = {timeout}
max_concurrent = 2
"""


def plan(tmp: Path, timeout: float = 10.0) -> Dialplan:
    p = make_plan(tmp)
    text = p.file.read_text() + ANALYSIS.format(timeout=timeout)
    p.file.write_text(text)
    return load_dialplans(p.file.parent).default


def wire(**event: Any) -> str:
    return json.dumps(event)


def audio(rid: str, item: str, ms: int) -> str:
    return wire(type="response.output_audio.delta", response_id=rid, item_id=item,
                output_index=0, content_index=0,
                delta=base64.b64encode(tone(ms, amp=8000)).decode())


async def test_a_barge_in_during_a_spoken_and_an_analysis_response(tmp_path: Path) -> None:
    rig = Rig(plan(tmp_path))
    await rig.start()
    mapper = EventMapper("ga")
    seen: list[ev.Event] = []

    async def feed(*messages: str) -> None:
        for message in messages:
            mapped = mapper.feed(message)
            seen.extend(mapped)
            await rig.emit(*mapped)

    # The caller's turn is transcribed: the analyser asks for its out-of-band response.
    await rig.emit(ev.UserTranscript("u1", "This is terrible, I am angry"))
    (ask,) = rig.session.sent("out_of_band")
    assert ask[2] == {"turn": "1", "kind": "analysis"} and ask[3] == ["u1"]
    # The spoken reply and the analysis, interleaved on the wire.
    rig.session.response_active = True
    await feed(
        wire(type="response.created", response={"id": "resp_s", "status": "in_progress"}),
        audio("resp_s", "item_a1", 1000),
        wire(type="response.created", response={
            "id": "resp_o", "status": "in_progress", "conversation_id": None,
            "metadata": {"turn": "1", "kind": "analysis", OOB_KEY: "1"}}),
        wire(type="response.output_text.delta", response_id="resp_o", item_id="item_o",
             output_index=0, content_index=0, delta='{"sentiment":'),
        audio("resp_o", "item_o", 1000),     # even if a server sent it audio: never played
        audio("resp_s", "item_a1", 1000))
    await rig.tick(20)                       # 400 ms of the reply reach the caller
    heard_frames = len(rig.agent_frames())
    assert heard_frames >= 15
    # The caller talks over the agent while both responses are in progress.
    await feed(wire(type="input_audio_buffer.speech_started", audio_start_ms=3000,
                    item_id="u2"))
    await rig.tick(10)
    assert len(rig.agent_frames()) == heard_frames          # the spoken one stopped at once
    (truncate,) = rig.session.sent("truncate")
    assert truncate[1] == "item_a1" and 300 <= truncate[2] <= 500, truncate
    assert [b.item_id for b in rig.call.record.barge_ins] == ["item_a1"]
    assert rig.call.analyser.in_flight == 1                 # the analysis is untouched
    # The analysis finishes after the barge-in; the spoken reply ends cancelled.
    result = {"intent": "general", "sentiment": "negative", "escalate": True,
              "labels": ["angry", "escalation"]}
    await feed(
        wire(type="response.output_text.done", response_id="resp_o", item_id="item_o",
             output_index=0, content_index=0, text=json.dumps(result)),
        wire(type="response.done", response={"id": "resp_o", "status": "completed",
                                             "metadata": {"turn": "1", "kind": "analysis",
                                                          OOB_KEY: "1"}}),
        wire(type="response.done", response={"id": "resp_s", "status": "cancelled"}))
    rig.session.response_active = False
    await rig.tick(5)
    # The mapping kept the analysis out of the spoken response's events entirely.
    spoken = [e for e in seen if isinstance(e, ev.ResponseCreated | ev.AudioDelta
                                            | ev.ResponseDone)]
    assert {e.response_id for e in spoken} == {"resp_s"}
    assert [type(e) for e in seen if "OutOfBand" in type(e).__name__] == [
        ev.OutOfBandStarted, ev.OutOfBandDone]
    (entry,) = rig.call.record.analysis
    assert entry["status"] == "ok" and entry["result"] == result and entry["turn"] == 1
    assert len(rig.agent_frames()) == heard_frames           # nothing of it was ever played
    assert rig.session.sent("cancel_response") == []         # the server interrupts itself
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert record.analysis == [entry]


async def test_deadlines_and_the_call_end_on_the_media_clock(tmp_path: Path) -> None:
    rig = Rig(plan(tmp_path, timeout=1.0))
    await rig.start()
    await rig.emit(ev.UserTranscript("u1", "hello"),
                   ev.OutOfBandStarted("ro1", {"turn": "1", "kind": "analysis"}))
    await rig.tick(45)                                       # 0.9 s: still waiting
    assert rig.call.analyser.in_flight == 1 and rig.call.record.analysis == []
    await rig.tick(10)                                       # past 1 s: timed out
    assert [a["status"] for a in rig.call.record.analysis] == ["timeout"]
    assert rig.session.sent("cancel_out_of_band") == [("cancel_out_of_band", "ro1")]
    # A late answer is ignored.
    await rig.emit(ev.OutOfBandDone("resp_late", "completed",
                                    {"turn": "1", "kind": "analysis"}, "{}"))
    assert len(rig.call.record.analysis) == 1
    # Two in flight at most; a third turn meanwhile is skipped as busy.
    for n in (2, 3, 4):
        await rig.emit(ev.UserTranscript(f"u{n}", "hello"))
    assert [a["status"] for a in rig.call.record.analysis] == ["timeout", "busy"]
    assert len(rig.session.sent("out_of_band")) == 3
    await rig.emit(ev.OutOfBandStarted("ro2", {"turn": "2", "kind": "analysis"}),
                   ev.OutOfBandStarted("ro3", {"turn": "3", "kind": "analysis"}))
    # The call ends with two in flight: both cancelled, in the record.
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert [a["status"] for a in record.analysis] == ["timeout", "busy", "cancelled",
                                                      "cancelled"]
    # ... by id, on the wire: the upstream stops spending on them
    assert [e[1] for e in rig.session.sent("cancel_out_of_band")] == ["ro1", "ro2", "ro3"]
    assert rig.session.sent("cancel_response") == []


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_the_cancel_by_id_is_a_valid_client_event(dialect: str) -> None:
    event = {**cancel("resp_o"), "event_id": "vb_1"}
    validate_client_event(event, dialect)
    assert event["response_id"] == "resp_o"


async def test_after_a_reconnect_only_the_new_sessions_items_are_referenced(
        tmp_path: Path) -> None:
    rig = Rig(plan(tmp_path))
    await rig.start()
    answer = json.dumps({"intent": "general", "sentiment": "neutral", "escalate": False,
                         "labels": []})

    async def turn(item: str, n: int) -> None:
        await rig.emit(ev.UserTranscript(item, "hello"))
        await rig.emit(ev.OutOfBandDone(f"r{n}", "completed",
                                        {"turn": str(n), "kind": "analysis"}, answer))

    await rig.emit(ev.SessionReady("s1", None))
    await turn("u1", 1)
    await turn("u2", 2)
    # The upstream was replaced: the history lives on under new ids, u1 and u2 are gone.
    await rig.emit(ev.Reconnected("s2"))
    await turn("u3", 3)
    await turn("u4", 4)
    refs = [entry[3] for entry in rig.session.sent("out_of_band")]
    assert refs == [["u1"], ["u1", "u2"], ["u3"], ["u3", "u4"]]
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert [a["status"] for a in record.analysis] == ["ok"] * 4
