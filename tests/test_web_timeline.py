"""The call timeline SVG: elements at the right x positions, parsed as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bridge.call.records import (
    BargeIn,
    CallRecord,
    DtmfRecord,
    ToolCallRecord,
    TranscriptEntry,
    TurnLatency,
)
from bridge.web.timeline import LEFT, render_svg, scale_for, timeline_from_record

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000.0


def record() -> CallRecord:
    r = CallRecord(call_id="c_test", caller="alice", called="100", source="webrtc",
                   dialplan="echo", started_at=T0, connected_at=T0 + 0.4, ended_at=T0 + 20.0,
                   end_reason="caller_hangup")
    # turn 1: caller speaks, agent answers from t=3.0 s and is cut off at t=4.5 s
    r.transcript.append(TranscriptEntry("caller", "u1", "what is the weather", T0 + 1.0))
    # caller stopped at 2.4 s; the first reply frame went out 450 + 30 ms later
    r.turns.append(TurnLatency(T0 + 2.88, "resp1", upstream_ms=450.0, pipeline_ms=30.0))
    r.transcript.append(TranscriptEntry("agent", "a1", "It is sunny and", T0 + 3.0,
                                        truncated=True))
    r.barge_ins.append(BargeIn(at=T0 + 4.5, item_id="a1", heard_ms=1500, received_ms=4000,
                               truncated_ms=1500, dropped_ms=2500))
    # turn 2: a tool call at t=8.0 s lasting 250 ms, then DTMF at t=12.0 s
    r.tool_calls.append(ToolCallRecord(at=T0 + 8.0, response_id="resp2", call_id="fc1",
                                       name="transfer_call", arguments='{"target":"sales"}',
                                       ok=True, output="{}", error=None, duration_s=0.25))
    r.dtmf.append(DtmfRecord(at=T0 + 12.0, digit="5", direction="in", action="model"))
    return r


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def find(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if cls in e.get("class", "").split()]


def x_of(seconds: float, duration: float) -> float:
    return LEFT + seconds * scale_for(duration)


def test_barge_in_and_tool_call_are_at_their_times() -> None:
    rec = record()
    root = parse(render_svg(timeline_from_record(rec)))
    duration = float(root.get("data-duration", "0"))
    assert duration == pytest.approx(20.0)
    assert float(root.get("data-px-per-s", "0")) == pytest.approx(scale_for(20.0), rel=1e-3)

    (barge,) = find(root, "line", "barge-in")
    assert float(barge.get("x1", "0")) == pytest.approx(x_of(4.5, duration), abs=0.01)
    assert barge.get("data-heard-ms") == "1500"
    # the truncation point sits on the agent's item: its start (3.0 s) + 1500 ms heard
    (cut,) = find(root, "circle", "truncation")
    assert float(cut.get("cx", "0")) == pytest.approx(x_of(4.5, duration), abs=0.01)
    assert cut.get("data-audio-end-ms") == "1500"

    (tool,) = find(root, "rect", "tool")
    assert "ok" in tool.get("class", "").split()
    assert float(tool.get("x", "0")) == pytest.approx(x_of(8.0, duration), abs=0.01)
    assert float(tool.get("width", "0")) == pytest.approx(0.25 * scale_for(duration), abs=0.01)
    assert tool.get("data-name") == "transfer_call"
    assert "transfer_call" in (tool.find(f"{SVG}title").text or "")

    (digit,) = find(root, "text", "dtmf")
    assert float(digit.get("x", "0")) == pytest.approx(x_of(12.0, duration), abs=0.01)
    assert (digit.text or "").startswith("5")


def test_agent_speech_is_cut_at_the_barge_in_and_latency_is_drawn() -> None:
    root = parse(render_svg(timeline_from_record(record())))
    (agent,) = find(root, "rect", "agent")
    assert "truncated" in agent.get("class", "").split()
    start = float(agent.get("x", "0"))
    end = start + float(agent.get("width", "0"))
    assert start == pytest.approx(x_of(3.0, 20.0), abs=0.01)
    assert end == pytest.approx(x_of(4.5, 20.0), abs=0.01)
    (caller,) = find(root, "rect", "caller")
    # the caller's speech ends where the turn's end of speech was
    caller_end = float(caller.get("x", "0")) + float(caller.get("width", "0"))
    assert float(caller.get("x", "0")) == pytest.approx(x_of(1.0, 20.0), abs=0.01)
    assert caller_end == pytest.approx(x_of(2.4, 20.0), abs=0.01)

    (turn,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "turn"]
    assert turn.get("data-total-ms") == "480.0"
    upstream, pipeline = find(turn, "rect", "latency")
    assert float(upstream.get("x", "0")) == pytest.approx(x_of(2.4, 20.0), abs=0.01)
    assert float(upstream.get("width", "0")) == pytest.approx(0.45 * scale_for(20.0), abs=0.01)
    assert float(pipeline.get("x", "0")) == pytest.approx(x_of(2.85, 20.0), abs=0.01)


def test_explicit_speech_spans_win_over_estimates() -> None:
    data = record().to_dict()
    data["speech"] = [{"role": "caller", "item_id": "u1", "start": T0 + 0.5, "end": T0 + 2.2},
                      {"role": "agent", "item_id": "a1", "start": T0 + 3.0, "end": T0 + 4.5}]
    root = parse(render_svg(timeline_from_record(data)))
    (caller,) = find(root, "rect", "caller")
    assert "estimated" not in caller.get("class", "")
    assert float(caller.get("x", "0")) == pytest.approx(x_of(0.5, 20.0), abs=0.01)
    assert caller.find(f"{SVG}title").text == "what is the weather"


def test_text_is_escaped_and_live_calls_run_to_now() -> None:
    rec = record()
    rec.ended_at = None
    rec.transcript.append(TranscriptEntry("caller", "u2", "<script>&", T0 + 15.0))
    svg = render_svg(timeline_from_record(rec, now=T0 + 30.0))
    root = parse(svg)   # still well-formed XML
    assert root.get("data-live") == "true"
    assert float(root.get("data-duration", "0")) == pytest.approx(30.0)
    assert "<script>" not in svg


def test_long_calls_are_scaled_down() -> None:
    rec = record()
    rec.ended_at = T0 + 3600
    root = parse(render_svg(timeline_from_record(rec)))
    assert float(root.get("width", "0")) <= 1600
