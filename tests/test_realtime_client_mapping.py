"""Wire -> internal event mapping, both dialects, from literal JSON server events."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from bridge.realtime import events as ev
from bridge.realtime.dialects import EventMapper

PCM = bytes(range(256)) * 2
B64 = base64.b64encode(PCM).decode()


def feed(mapper: EventMapper, *messages: str) -> list[ev.Event]:
    out: list[ev.Event] = []
    for message in messages:
        out.extend(mapper.feed(message))
    return out


GA_TURN = [
    '{"type":"session.created","event_id":"e1","session":{"type":"realtime","object":'
    '"realtime.session","id":"sess_1","expires_at":1900000000,"model":"gpt-realtime"}}',
    '{"type":"session.updated","event_id":"e2","session":{"type":"realtime","id":"sess_1"}}',
    '{"type":"input_audio_buffer.speech_started","event_id":"e3","audio_start_ms":1200,'
    '"item_id":"item_u1"}',
    '{"type":"input_audio_buffer.speech_stopped","event_id":"e4","audio_end_ms":2900,'
    '"item_id":"item_u1"}',
    '{"type":"input_audio_buffer.committed","event_id":"e5","previous_item_id":null,'
    '"item_id":"item_u1"}',
    '{"type":"conversation.item.added","event_id":"e6","item":{"id":"item_u1","type":'
    '"message","role":"user","content":[{"type":"input_audio"}]}}',
    '{"type":"response.created","event_id":"e7","response":{"id":"resp_1","object":'
    '"realtime.response","status":"in_progress","output":[]}}',
    '{"type":"response.output_item.added","event_id":"e8","response_id":"resp_1",'
    '"output_index":0,"item":{"id":"item_a1","type":"message","role":"assistant",'
    '"status":"in_progress","content":[]}}',
    '{"type":"response.output_audio.delta","event_id":"e9","response_id":"resp_1",'
    '"item_id":"item_a1","output_index":0,"content_index":0,"delta":"' + B64 + '",'
    '"obfuscation":"Zx81"}',
    '{"type":"response.output_audio_transcript.delta","event_id":"e10","response_id":'
    '"resp_1","item_id":"item_a1","output_index":0,"content_index":0,"delta":"Hello",'
    '"obfuscation":"q"}',
    '{"type":"response.output_audio.done","event_id":"e11","response_id":"resp_1",'
    '"item_id":"item_a1","output_index":0,"content_index":0}',
    '{"type":"response.output_audio_transcript.done","event_id":"e12","response_id":'
    '"resp_1","item_id":"item_a1","output_index":0,"content_index":0,'
    '"transcript":"Hello there"}',
    '{"type":"conversation.item.input_audio_transcription.completed","event_id":"e13",'
    '"item_id":"item_u1","content_index":0,"transcript":"hi",'
    '"usage":{"type":"duration","seconds":1.7}}',
    '{"type":"rate_limits.updated","event_id":"e14","rate_limits":[]}',
    '{"type":"response.done","event_id":"e15","response":{"id":"resp_1","status":'
    '"completed","status_details":null,"usage":{"total_tokens":42}}}',
]


def test_ga_turn_maps_to_internal_events() -> None:
    mapper = EventMapper("ga")
    out = feed(mapper, *GA_TURN)
    assert out == [
        ev.SessionCreated("sess_1", 1900000000.0),
        ev.SessionReady("sess_1", 1900000000.0),
        ev.SpeechStarted("item_u1", 1200),
        ev.SpeechStopped("item_u1", 2900),
        ev.InputCommitted("item_u1"),
        ev.ResponseCreated("resp_1"),
        ev.OutputItemAdded("resp_1", "item_a1", "message", None, None),
        ev.AudioDelta("resp_1", "item_a1", PCM),
        ev.TranscriptDelta("resp_1", "item_a1", "Hello"),
        ev.AudioDone("resp_1", "item_a1"),
        ev.TranscriptDone("resp_1", "item_a1", "Hello there"),
        ev.UserTranscript("item_u1", "hi"),
        ev.RateLimits(()),
        ev.ResponseDone("resp_1", "completed", None, {"total_tokens": 42}, None),
    ]
    # conversation.item.added is known to be ignorable.
    assert mapper.stats.ignored == 1
    assert mapper.stats.malformed == 0


def test_rate_limits_and_transcription_deltas() -> None:
    mapper = EventMapper("ga")
    out = feed(
        mapper,
        '{"type":"rate_limits.updated","event_id":"e1","rate_limits":[{"name":"requests",'
        '"limit":1000,"remaining":999,"reset_seconds":0.06},{"name":"tokens","limit":'
        '50000,"remaining":48200,"reset_seconds":2}]}',
        '{"type":"conversation.item.input_audio_transcription.delta","event_id":"e2",'
        '"item_id":"item_u1","content_index":0,"delta":"my order"}',
        '{"type":"rate_limits.updated","event_id":"e3","rate_limits":[{"name":"tokens"}]}',
        '{"type":"rate_limits.updated","event_id":"e4","rate_limits":"lots"}')
    assert out == [
        ev.RateLimits((ev.RateLimit("requests", 1000, 999, 0.06),
                       ev.RateLimit("tokens", 50000, 48200, 2.0))),
        ev.UserTranscriptDelta("item_u1", "my order"),
    ]
    assert mapper.stats.malformed == 2          # logged and skipped, never raised


def test_preview_names_map_to_the_same_events() -> None:
    preview = [
        '{"type":"response.audio.delta","event_id":"e9","response_id":"r","item_id":"i",'
        '"output_index":0,"content_index":0,"delta":"' + B64 + '"}',
        '{"type":"response.audio_transcript.delta","event_id":"e","response_id":"r",'
        '"item_id":"i","output_index":0,"content_index":0,"delta":"Hel"}',
        '{"type":"response.audio.done","event_id":"e","response_id":"r","item_id":"i",'
        '"output_index":0,"content_index":0}',
        '{"type":"response.audio_transcript.done","event_id":"e","response_id":"r",'
        '"item_id":"i","output_index":0,"content_index":0,"transcript":"Hello"}',
        '{"type":"response.text.done","event_id":"e","response_id":"r","item_id":"i",'
        '"output_index":0,"content_index":0,"text":"Typed"}',
        '{"type":"conversation.item.created","event_id":"e","previous_item_id":null,'
        '"item":{"id":"i","type":"message","role":"assistant","content":[]}}',
    ]
    assert feed(EventMapper("preview"), *preview) == [
        ev.AudioDelta("r", "i", PCM),
        ev.TranscriptDelta("r", "i", "Hel"),
        ev.AudioDone("r", "i"),
        ev.TranscriptDone("r", "i", "Hello"),
        ev.TranscriptDone("r", "i", "Typed"),
    ]
    # The GA mapper does not take preview names (they are unknown types there).
    ga = EventMapper("ga")
    assert feed(ga, *preview) == []
    assert ga.stats.ignored == len(preview)


def _call_events(dialect: str, *, with_name_on_done: bool, status: str = "completed",
                 response_status: str = "completed") -> list[str]:
    name = ',"name":"transfer_call"' if with_name_on_done else ""
    return [
        '{"type":"response.created","event_id":"e","response":{"id":"resp_7"}}',
        '{"type":"response.output_item.added","event_id":"e","response_id":"resp_7",'
        '"output_index":0,"item":{"id":"item_f","type":"function_call","status":'
        '"in_progress","name":"transfer_call","call_id":"call_9","arguments":""}}',
        '{"type":"response.function_call_arguments.delta","event_id":"e","response_id":'
        '"resp_7","item_id":"item_f","output_index":0,"call_id":"call_9","delta":"{\\"ta"}',
        '{"type":"response.function_call_arguments.done","event_id":"e","response_id":'
        '"resp_7","item_id":"item_f","output_index":0,"call_id":"call_9",'
        '"arguments":"{\\"target\\": \\"sales\\"}"' + name + '}',
        # Preview's output_item.done item may lack name/arguments: the mapper fills them in.
        '{"type":"response.output_item.done","event_id":"e","response_id":"resp_7",'
        '"output_index":0,"item":{"id":"item_f","type":"function_call","status":"'
        + status + '","call_id":"call_9"}}',
        '{"type":"response.done","event_id":"e","response":{"id":"resp_7","status":"'
        + response_status + '"}}',
    ]


@pytest.mark.parametrize(("dialect", "named"), [("ga", True), ("preview", False)])
def test_function_call_surfaces_once_when_item_completes(dialect: str, named: bool) -> None:
    mapper = EventMapper(dialect)
    out = feed(mapper, *_call_events(dialect, with_name_on_done=named))
    calls = [e for e in out if isinstance(e, ev.FunctionCall)]
    assert calls == [ev.FunctionCall("resp_7", "item_f", "call_9", "transfer_call",
                                     '{"target": "sales"}')]
    # ...and only at output_item.done: nothing before it.
    partial = feed(EventMapper(dialect), *_call_events(dialect, with_name_on_done=named)[:4])
    assert not [e for e in partial if isinstance(e, ev.FunctionCall)]


def test_preview_name_comes_from_output_item_added() -> None:
    # Preview's arguments.done carries no name; without output_item.added there is nothing
    # to name the call with, so no call is surfaced (and nothing crashes).
    events = _call_events("preview", with_name_on_done=False)
    out = feed(EventMapper("preview"), *(events[:1] + events[2:]))
    assert not [e for e in out if isinstance(e, ev.FunctionCall)]


def test_no_function_call_from_cancelled_response() -> None:
    out = feed(EventMapper("ga"), *_call_events("ga", with_name_on_done=True,
                                                status="incomplete",
                                                response_status="cancelled"))
    assert not [e for e in out if isinstance(e, ev.FunctionCall)]
    done = [e for e in out if isinstance(e, ev.ResponseDone)]
    assert done[0].status == "cancelled"


def test_no_function_call_after_client_marks_response_cancelled() -> None:
    mapper = EventMapper("ga")
    events = _call_events("ga", with_name_on_done=True)
    feed(mapper, *events[:2])
    mapper.cancelled("resp_7")
    out = feed(mapper, *events[2:])
    assert not [e for e in out if isinstance(e, ev.FunctionCall)]


def test_cancelled_response_done_carries_reason() -> None:
    msg = ('{"type":"response.done","event_id":"e","response":{"id":"r","status":"cancelled",'
           '"status_details":{"type":"cancelled","reason":"turn_detected"}}}')
    assert feed(EventMapper("ga"), msg) == [ev.ResponseDone("r", "cancelled", "turn_detected",
                                                            None, None)]
    failed = ('{"type":"response.done","event_id":"e","response":{"id":"r","status":"failed",'
              '"status_details":{"type":"failed","error":{"type":"rate_limit",'
              '"code":"rate_limit_exceeded"}}}}')
    (done,) = feed(EventMapper("ga"), failed)
    assert isinstance(done, ev.ResponseDone)
    assert done.error == {"type": "rate_limit", "code": "rate_limit_exceeded"}


def test_errors_and_transcription_failures() -> None:
    out = feed(EventMapper("ga"),
               '{"type":"error","event_id":"e","error":{"type":"invalid_request_error",'
               '"code":"conversation_already_has_active_response","message":"busy",'
               '"param":null,"event_id":"vb_3"}}',
               '{"type":"conversation.item.input_audio_transcription.failed","event_id":"e",'
               '"item_id":"item_u2","content_index":0,"error":{"type":"x",'
               '"code":"audio_unintelligible","message":"m"}}',
               '{"type":"input_audio_buffer.timeout_triggered","event_id":"e",'
               '"audio_start_ms":100,"audio_end_ms":5100,"item_id":"item_u3"}')
    assert out == [ev.ServerError("conversation_already_has_active_response", "busy", "vb_3"),
                   ev.UserTranscriptFailed("item_u2", "audio_unintelligible"),
                   ev.InputTimeout("item_u3", 100, 5100)]


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_unknown_and_malformed_input_is_skipped_and_logged_without_payload(
        dialect: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.realtime")
    mapper = EventMapper(dialect)
    secret = "SECRET-CALLER-WORDS"
    junk = [
        '{"type":"response.output_audio.delta", "delta": "' + secret,   # truncated JSON
        "not json " + secret,
        json.dumps([secret]),                                             # not an object
        json.dumps({"no_type": secret}),
        json.dumps({"type": "conversation.item.retrieved", "item": {"text": secret}}),
        json.dumps({"type": "response.mcp_call.in_progress", "x": secret}),
        json.dumps({"type": "input_audio_buffer.speech_started", "item_id": secret}),  # no ms
        json.dumps({"type": "response.output_audio.delta", "response_id": "r",
                    "item_id": "i", "delta": "!!" + secret}),             # bad base64
        json.dumps({"type": "response.output_item.added", "response_id": "r",
                    "item": secret}),
        b'{"type":"error"}',                                              # binary frame
    ]
    for message in junk:
        assert mapper.feed(message) == []
    # ...and the mapper still works afterwards.
    assert mapper.feed(json.dumps({"type": "response.created",
                                   "response": {"id": "r2"}})) == [ev.ResponseCreated("r2")]
    assert mapper.stats.malformed == 8
    assert mapper.stats.ignored == 2
    for record in caplog.records:
        assert secret not in record.getMessage()
    assert any("malformed JSON" in r.getMessage() for r in caplog.records)


def test_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="dialect"):
        EventMapper("beta")


def test_audio_delta_repr_hides_audio() -> None:
    text = repr(ev.AudioDelta("r", "i", b"\x01" * 4800))
    assert "4800 bytes" in text
    assert "\\x01" not in text
