"""Responses: the Realtime client's response bookkeeping, sans-I/O -- events in, verdicts
out. One response at a time, queued creates, a create colliding with server VAD's own
response, cancels before and after ``response.created``, barge-in suppression, truncation,
tool outputs across sessions, the quiet moment a rotation needs, and a session lost."""

from __future__ import annotations

from bridge.realtime import events as ev
from bridge.realtime.history import History
from bridge.realtime.responses import (
    DROP,
    FORWARD,
    MAX_REMEMBERED_CALLS,
    Responses,
    SessionItems,
    ToolOutputPlan,
    Verdict,
)

BYTES_PER_MS = 48        # pcm16 at 24 kHz
BUSY = "conversation_already_has_active_response"


def books(*, server_answers: bool = True, interrupt: bool = True) -> Responses:
    return Responses(History(), bytes_per_ms=BYTES_PER_MS, server_answers=server_answers,
                     interrupt_response=interrupt)


def audio(rid: str, item: str, ms: int) -> ev.AudioDelta:
    return ev.AudioDelta(rid, item, b"\x00" * (ms * BYTES_PER_MS))


def done(rid: str, status: str = "completed") -> ev.ResponseDone:
    return ev.ResponseDone(rid, status, None, None, None)


def call(rid: str, call_id: str) -> ev.FunctionCall:
    return ev.FunctionCall(rid, f"item_{call_id}", call_id, "lookup", "{}")


def assistant_reply(r: Responses, s: SessionItems, rid: str, item: str, text: str,
                    ms: int) -> None:
    for event in (ev.ResponseCreated(rid),
                  ev.OutputItemAdded(rid, item, "message", None, None),
                  audio(rid, item, ms), ev.TranscriptDone(rid, item, text), done(rid)):
        r.on_event(event, s)


# -- one response at a time ---------------------------------------------------------------

def test_creates_wait_while_a_response_is_active_and_go_one_by_one_in_order() -> None:
    r, s = books(), SessionItems()
    assert r.request_create("first", ready=True)          # nothing active: send now
    r.create_sent("vb_1", "first")
    assert r.active == "" and r.response_active
    assert not r.request_create("second", ready=True)     # queued behind the pending one
    assert not r.request_create("third", ready=True)
    assert not r.due_create()
    assert r.on_event(ev.ResponseCreated("r1"), s) == FORWARD
    assert r.active == "r1"
    verdict = r.on_event(done("r1"), s)
    assert verdict.forward and verdict.pump and verdict.rotate
    assert r.active is None and r.due_create()
    assert r.pop_queued() == "second"
    r.create_sent("vb_2", "second")
    assert not r.due_create()                            # "third" waits for this one
    r.on_event(ev.ResponseCreated("r2"), s)
    r.on_event(done("r2"), s)
    assert r.pop_queued() == "third"


def test_a_create_with_no_session_ready_is_queued_and_an_unsent_one_goes_first() -> None:
    r = books()
    assert not r.request_create("a", ready=False)
    assert r.due_create()
    assert r.pop_queued() == "a"
    r.create_unsent("a")                                 # the write failed
    r.request_create("b", ready=False)
    assert [r.pop_queued(), r.pop_queued()] == ["a", "b"]


def test_done_of_another_response_leaves_the_active_one_alone() -> None:
    r, s = books(), SessionItems()
    r.on_event(ev.ResponseCreated("r1"), s)
    r.on_event(done("r0"), s)
    assert r.active == "r1"


def test_a_create_refused_because_server_vad_started_one_runs_after_it() -> None:
    r, s = books(), SessionItems()
    r.request_create("after the tool", ready=True)
    r.create_sent("vb_7", "after the tool")
    r.on_event(ev.ResponseCreated("r_vad"), s)            # the server's own response
    assert r.on_event(ev.ServerError(BUSY, "busy", "vb_7"), s) == FORWARD
    assert r.active == "r_vad" and not r.due_create()
    assert r.on_event(done("r_vad"), s).pump
    assert r.due_create() and r.pop_queued() == "after the tool"


def test_a_busy_error_for_another_event_requeues_nothing() -> None:
    r, s = books(), SessionItems()
    r.create_sent("vb_7", None)
    r.on_event(ev.ServerError(BUSY, "busy", "vb_99"), s)
    r.on_event(ev.ServerError("other", "x", "vb_7"), s)
    assert r.active == "" and not r.due_create()


def test_a_refused_create_the_call_cancelled_meanwhile_is_dropped() -> None:
    r, s = books(), SessionItems()
    r.create_sent("vb_1", "hello")
    assert r.cancel() is None                            # not acknowledged yet
    r.on_event(ev.ServerError(BUSY, "busy", "vb_1"), s)
    assert r.active is None and not r.due_create()
    # ...and the cancel is spent: the next response is not cancelled.
    assert r.on_event(ev.ResponseCreated("r2"), s) == FORWARD


# -- cancelling ---------------------------------------------------------------------------

def test_cancel_of_an_active_response_mutes_its_audio_transcript_items_and_tools() -> None:
    r, s = books(), SessionItems()
    assert r.cancel() is None                            # nothing active
    r.on_event(ev.ResponseCreated("r1"), s)
    assert r.cancel() == "r1"
    assert r.suppressed("r1")
    for event in (audio("r1", "a1", 20), ev.TranscriptDelta("r1", "a1", "hi"),
                  ev.OutputItemAdded("r1", "a1", "message", None, None), call("r1", "c1")):
        assert r.on_event(event, s) == DROP, event
    assert s.call_ids == set()                           # no tool of a cancelled response
    assert r.quiet() is False                            # still active until done
    r.on_event(done("r1", "cancelled"), s)
    assert not r.suppressed("r1") and r.active is None


def test_cancel_before_response_created_is_sent_once_it_is() -> None:
    r, s = books(), SessionItems()
    r.create_sent("vb_1", None)
    assert r.cancel() is None
    verdict = r.on_event(ev.ResponseCreated("r1"), s)
    assert verdict == Verdict(forward=True, mute="r1", send_cancel=True)
    assert r.on_event(audio("r1", "a1", 20), s) == DROP
    assert r.on_event(ev.ResponseCreated("r2"), s) == FORWARD   # only once


# -- barge-in -----------------------------------------------------------------------------

def test_barge_in_mutes_the_running_response_and_marks_it_unheard() -> None:
    r, s = books(), SessionItems()
    assistant_reply(r, s, "r0", "a0", "Heard in full.", 400)
    r.on_event(ev.ResponseCreated("r1"), s)
    r.on_event(ev.OutputItemAdded("r1", "a1", "message", None, None), s)
    assert r.on_event(audio("r1", "a1", 100), s) == FORWARD
    r.on_event(ev.TranscriptDone("r1", "a1", "Cut off mid sentence."), s)
    assert r.on_event(ev.SpeechStarted("u1", 900), s) == Verdict(mute="r1")
    assert r.on_event(audio("r1", "a1", 100), s) == DROP
    assert r.on_event(call("r1", "c1"), s) == DROP
    assert r.history.texts() == [("assistant", "Heard in full.")]
    assert r.history.audio_ms("a1") == 100                # the muted audio is not counted


def test_without_interrupt_response_barge_in_leaves_the_response_playing() -> None:
    r, s = books(interrupt=False), SessionItems()
    r.on_event(ev.ResponseCreated("r1"), s)
    assert r.on_event(ev.SpeechStarted("u1", 900), s) == FORWARD
    assert r.on_event(audio("r1", "a1", 20), s) == FORWARD


# -- truncation and history ---------------------------------------------------------------

def test_truncate_is_clamped_to_the_audio_received_and_skipped_when_not_sendable() -> None:
    r, s = books(), SessionItems()
    assistant_reply(r, s, "r1", "a1", "one two three four five six seven eight", 1000)
    assert "a1" in s.items
    assert r.truncate("a1", 5000, s) == 1000              # clamped
    assert r.truncate("a1", 500, s) == 500
    assert r.history.texts() == [("assistant", "one two three four")]
    assert r.truncate("a1", 500, SessionItems()) == 0     # an item of an earlier session
    assert r.truncate("a1", 500, None) == 0               # no live session
    assert r.truncate("nope", 300, s) == 0                # no audio received for it
    assert r.truncate("a1", 0, s) == 0                    # 0 ms is never sent...
    assert r.history.texts() == []                        # ...but trims the history


def test_caller_turns_and_transcripts_go_into_the_history_in_order() -> None:
    r, s = books(), SessionItems()
    r.on_event(ev.InputCommitted("u1"), s)
    assistant_reply(r, s, "r1", "a1", "Hello.", 200)
    r.on_event(ev.UserTranscript("u1", "Hi there"), s)   # arrives after the reply
    assert r.history.texts() == [("user", "Hi there"), ("assistant", "Hello.")]


# -- tools --------------------------------------------------------------------------------

def test_tool_output_on_the_same_session_is_sent_as_is() -> None:
    r, s = books(), SessionItems()
    r.on_event(call("r1", "c1"), s)
    assert s.call_ids == {"c1"} and not r.quiet()         # a tool is outstanding
    assert r.tool_output("c1", s) == ToolOutputPlan(send=True)
    r.on_event(done("r1"), s)
    assert r.quiet()


def test_tool_output_on_a_new_session_recreates_the_call_first() -> None:
    r, old, new = books(), SessionItems(), SessionItems()
    made = call("r1", "c7")
    r.on_event(made, old)
    assert r.tool_output("c7", new) == ToolOutputPlan(send=True, recreate=made)
    # Answered: a second output for it is unknown on the new session.
    assert r.tool_output("c7", new) == ToolOutputPlan(send=False)
    assert r.tool_output("c8", None) == ToolOutputPlan(send=True)   # no live session


def test_only_the_newest_unanswered_calls_are_remembered() -> None:
    r, s, new = books(), SessionItems(), SessionItems()
    for i in range(MAX_REMEMBERED_CALLS + 2):
        r.on_event(call("r1", f"c{i}"), s)
    assert r.tool_output("c0", new) == ToolOutputPlan(send=False)
    last = f"c{MAX_REMEMBERED_CALLS + 1}"
    assert r.tool_output(last, new).recreate == call("r1", last)


# -- the quiet moment ---------------------------------------------------------------------

def test_each_busy_state_holds_quiet_back() -> None:
    r, s = books(), SessionItems()
    assert r.quiet()
    r.playout_active = True
    assert not r.quiet()
    r.playout_active = False
    r.request_create(None, ready=False)                   # a queued create
    assert not r.quiet()
    r.pop_queued()
    r.on_event(ev.SpeechStarted("u1", 0), s)              # the caller speaks
    assert not r.quiet()
    assert r.on_event(ev.SpeechStopped("u1", 900), s) == Verdict(rotate=True)
    assert not r.quiet()                                  # server VAD will answer the turn
    r.on_event(ev.InputCommitted("u1"), s)
    r.on_event(ev.ResponseCreated("r1"), s)               # its answer starts
    assert not r.quiet()
    r.on_event(done("r1"), s)
    assert r.quiet()


def test_no_answer_is_due_when_server_vad_does_not_create_responses() -> None:
    r, s = books(server_answers=False), SessionItems()
    r.on_event(ev.SpeechStarted("u1", 0), s)
    r.on_event(ev.SpeechStopped("u1", 900), s)
    assert r.quiet()
    r2 = books()
    r2.on_event(ev.InputTimeout("u2", 0, 5000), s)        # the server answers the silence
    assert not r2.quiet()


# -- a session lost -----------------------------------------------------------------------

def test_a_session_lost_with_a_response_running_closes_it_for_the_call() -> None:
    r, s = books(), SessionItems()
    r.on_event(ev.ResponseCreated("r1"), s)
    r.on_event(call("r1", "c1"), s)
    r.on_event(ev.SpeechStarted("u1", 0), s)
    lost = r.session_lost("closed with 1006")
    assert lost == ev.ResponseDone("r1", "failed", "connection_lost", None,
                                   {"code": "connection_lost",
                                    "message": "closed with 1006"})
    assert r.active is None and r.quiet()                 # nothing outstanding any more
    assert r.session_lost("again") is None


def test_a_session_lost_with_our_create_unacknowledged_reports_nothing() -> None:
    r = books()
    r.create_sent("vb_1", None)
    r.cancel()
    assert r.session_lost("gone") is None
    assert r.on_event(ev.ResponseCreated("r2"), SessionItems()) == FORWARD   # cancel spent


def test_session_created_is_internal() -> None:
    r = books()
    assert r.on_event(ev.SessionCreated("sess_1", None), SessionItems()) == DROP
    assert r.on_event(ev.Reconnected("sess_2"), SessionItems()) == FORWARD
