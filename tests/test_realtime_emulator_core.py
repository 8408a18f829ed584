"""The session core, sans-I/O, on a virtual clock: pacing, expiry, scripted closes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bridge.realtime.emulator import parse_script
from bridge.realtime.emulator.dialect import SessionUpdateError, apply_update, default_session
from bridge.realtime.emulator.record import SessionRecord
from bridge.realtime.emulator.session import Close, SessionCore
from tests.support.audio import silence, tone


def make_core(**kwargs: Any) -> SessionCore:
    record = SessionRecord("", "/openai/v1/realtime", {}, {}, "ga")
    core = SessionCore(record, dialect="ga", model="m", now=0.0, wall_time=1e9, **kwargs)
    core.start(0.0)
    return core


def events(core: SessionCore) -> list[dict[str, Any]]:
    return [json.loads(f) for f in core.take_output() if isinstance(f, str)]


def send(core: SessionCore, now: float, **event: Any) -> None:
    core.receive_text(json.dumps(event), now)


def test_deltas_are_paced_on_the_clock_given() -> None:
    core = make_core(pace=4.0, greeting_ms=1000)
    events(core)
    send(core, 10.0, type="response.create")
    first = [e["type"] for e in events(core)]
    assert first.count("response.output_audio.delta") == 1  # 100 ms at once
    assert core.next_deadline() == pytest.approx(10.0 + 0.100 / 4)
    core.handle_timer(10.02)  # too early: nothing
    assert not events(core)
    core.handle_timer(10.025)
    sizes = [len(base64.b64decode(e["delta"])) for e in events(core)
             if e["type"] == "response.output_audio.delta"]
    assert sizes == [150 * 48]
    assert core.next_deadline() == pytest.approx(10.025 + 0.150 / 4)
    # a late timer catches up in one go, and the response completes
    core.handle_timer(20.0)
    rest = events(core)
    assert [len(base64.b64decode(e["delta"])) for e in rest
            if e["type"] == "response.output_audio.delta"] == [250 * 48, 250 * 48, 250 * 48]
    assert rest[-1]["type"] == "response.done"
    assert core.next_deadline() == pytest.approx(1800.0)  # only the expiry is left


def test_expiry_on_the_virtual_clock() -> None:
    core = make_core(session_max_s=60.0)
    events(core)
    assert core.next_deadline() == 60.0
    core.handle_timer(59.9)
    assert not core.take_output()
    core.handle_timer(60.0)
    out = core.take_output()
    assert json.loads(out[0])["error"]["code"] == "session_expired"  # type: ignore[arg-type]
    assert out[1] == Close(1001, "session expired")
    send(core, 61.0, type="response.create")  # a closed session ignores input
    assert not core.take_output()


def test_scripted_close_after_t() -> None:
    script = parse_script("[[rule]]\non_turn = 1\nclose = 1011\nafter_s = 2.0\n")
    core = make_core(script=script, pace=0.0)
    send(core, 1.0, type="session.update", session={
        "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 200}}}})
    audio = silence(100) + tone(400) + silence(300)
    send(core, 1.0, type="input_audio_buffer.append", audio=base64.b64encode(audio).decode())
    assert core.next_deadline() == pytest.approx(3.0)
    core.handle_timer(3.0)
    assert core.take_output()[-1] == Close(1011, "scripted close")


def test_idle_timeout_counts_audio_time() -> None:
    core = make_core(pace=0.0, greeting_ms=500)
    send(core, 0.0, type="session.update", session={
        "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "idle_timeout_ms": 5000, "silence_duration_ms": 200}}}})
    send(core, 0.0, type="response.create")
    events(core)
    # the reply's 500 ms count as playing time: the timeout is 5000 ms after that
    send(core, 0.0, type="input_audio_buffer.append",
         audio=base64.b64encode(silence(5480)).decode())
    assert not [e for e in events(core) if e["type"] == "input_audio_buffer.timeout_triggered"]
    send(core, 0.0, type="input_audio_buffer.append", audio=base64.b64encode(silence(40)).decode())
    triggered = [e for e in events(core) if e["type"] == "input_audio_buffer.timeout_triggered"]
    assert [(e["audio_start_ms"], e["audio_end_ms"]) for e in triggered] == [(500, 5520)]


def test_update_validation_is_all_or_nothing() -> None:
    current = default_session("s", "m", 0)
    with pytest.raises(SessionUpdateError) as info:
        apply_update(current, {"type": "realtime", "instructions": "new", "audio": {
            "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}}}},
            "ga", {})
    assert info.value.code == "integer_below_min_value"
    assert current["instructions"] != "new"
    merged, _ = apply_update(current, {"type": "realtime", "audio": {
        "output": {"voice": "cedar"}}}, "ga", {})
    assert merged["audio"]["output"]["voice"] == "cedar"
    assert merged["audio"]["input"] == current["audio"]["input"]  # untouched parts kept
    preview, extras = apply_update(current, {"input_audio_format": "g711_ulaw",
                                             "turn_detection": None, "temperature": 0.9},
                                   "preview", {})
    assert preview["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert preview["audio"]["input"]["turn_detection"] is None
    assert extras == {"temperature": 0.9}


def turn_events(core: SessionCore, turn_detection: dict[str, Any],
                audio: bytes) -> list[dict[str, Any]]:
    send(core, 0.0, type="session.update", session={
        "type": "realtime", "audio": {"input": {"turn_detection": turn_detection}}})
    events(core)
    send(core, 0.0, type="input_audio_buffer.append", audio=base64.b64encode(audio).decode())
    return [e for e in events(core) if e["type"].startswith("input_audio_buffer.speech")]


@pytest.mark.parametrize(("threshold", "heard"), [(0.2, True), (0.5, True), (0.9, False)])
def test_session_threshold_reaches_the_vad(threshold: float, heard: bool) -> None:
    # A -30 dBFS voice: speech at the default threshold, too quiet for a high one.
    core = make_core(pace=0.0)
    got = turn_events(core, {"type": "server_vad", "threshold": threshold,
                             "silence_duration_ms": 300, "create_response": False},
                      silence(200) + tone(500, dbfs=-30) + silence(600))
    assert bool(got) == heard


@pytest.mark.parametrize(("eagerness", "wait_ms"), [("high", 400), ("auto", 800),
                                                    ("low", 1500)])
def test_semantic_vad_eagerness_sets_how_long_silence_must_last(eagerness: str,
                                                                wait_ms: int) -> None:
    core = make_core(pace=0.0)
    got = turn_events(core, {"type": "semantic_vad", "eagerness": eagerness,
                             "create_response": False},
                      silence(200) + tone(500) + silence(1600))
    assert [(e["type"].rsplit(".", 1)[1], e.get("audio_end_ms")) for e in got] == [
        ("speech_started", None), ("speech_stopped", 700 + wait_ms)]


@pytest.mark.parametrize("keep", [0, 1000])
def test_input_audio_is_kept_only_up_to_what_the_config_asks(keep: int) -> None:
    """Kept for tests that compare bytes; never by default (the emulator `serve` runs
    in-process must not grow by a minute of audio per call)."""
    core = make_core()
    core.record.keep_input_audio = keep
    audio = bytes(range(256)) * 8                       # 2048 bytes, recognisable
    for now in (1.0, 1.02):
        send(core, now, type="input_audio_buffer.append",
             audio=base64.b64encode(audio).decode())
    assert bytes(core.record.appended_audio) == (audio + audio)[:keep]
