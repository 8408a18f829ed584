"""What a call passes on as it happens: the caller's words as they are transcribed, and the
account's rate limits (``rate_limits.updated``) as metrics."""

from __future__ import annotations

from pathlib import Path

from bridge import metrics
from bridge.call.events import CallEvent, TranscriptAdded, TranscriptDelta
from bridge.realtime import events as ev
from tests.support.call_rig import Rig, make_plan


def gauge(name: str, label: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(f"voicebridge_{name}", {"name": label})


async def test_transcription_deltas_reach_listeners_before_the_whole_turn(
        tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    seen: list[CallEvent] = []
    rig.call._on_event = seen.append
    await rig.start()
    await rig.emit(ev.UserTranscriptDelta("u1", "where is "),
                   ev.UserTranscriptDelta("u1", "my order"),
                   ev.UserTranscript("u1", "where is my order"))
    await rig.tick(2)
    words = [e for e in seen if isinstance(e, TranscriptDelta | TranscriptAdded)]
    assert [(type(e).__name__, getattr(e, "delta", getattr(e, "text", ""))) for e in words] == [
        ("TranscriptDelta", "where is "), ("TranscriptDelta", "my order"),
        ("TranscriptAdded", "where is my order")]
    assert words[0].to_json()["type"] == "call.transcript_delta"
    assert words[0].to_json()["item_id"] == "u1"
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert [t.text for t in record.transcript if t.role == "caller"] == ["where is my order"]


async def test_rate_limits_updated_become_gauges(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.emit(ev.RateLimits((ev.RateLimit("requests", 1000, 998, 0.1),
                                  ev.RateLimit("tokens", 50000, 41000, 3.0))))
    await rig.tick(2)
    assert gauge("upstream_rate_limit", "tokens") == 50000
    assert gauge("upstream_rate_limit_remaining", "tokens") == 41000
    assert gauge("upstream_rate_limit_remaining", "requests") == 998
    await rig.emit(ev.RateLimits((ev.RateLimit("tokens", 50000, 39000, 2.0),)))
    await rig.tick(2)
    assert gauge("upstream_rate_limit_remaining", "tokens") == 39000    # the latest wins
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_stale_caller_audio_is_cleared_on_hold_and_before_a_dtmf_transfer(
        tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.tick(2)
    assert rig.session.sent("clear_input") == []
    rig.leg.set_hold(True)                 # the far end's re-INVITE: sendonly
    await rig.tick(2)
    assert len(rig.session.sent("clear_input")) == 1
    rig.leg.set_hold(False)
    await rig.tick(2)
    assert len(rig.session.sent("clear_input")) == 2
    rig.call.on_leg_dtmf("0")              # the plan's "0": transfer to the operator
    await rig.until(lambda: bool(rig.leg.transfers))
    log = [entry[0] for entry in rig.session.log]
    assert log.count("clear_input") == 4   # the DTMF menu took over, then the transfer
    record = await rig.finish()
    assert record.end_reason == "transferred"
