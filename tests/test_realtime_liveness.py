"""The keepalive/watchdog and the replay buffer, sans-I/O: times and bytes in, verdicts out."""

from __future__ import annotations

import pytest

from bridge.realtime.liveness import Action, Liveness, LivenessPolicy
from bridge.realtime.recovery import RecoveryPolicy
from bridge.realtime.replay import ReplayBuffer

POLICY = LivenessPolicy(ping_after_s=0.5, dead_after_s=2.0, answer_within_s=5.0)


def run(live: Liveness, start: float, end: float, step: float = 0.25) -> list[tuple[float, Action]]:
    out: list[tuple[float, Action]] = []
    t = start
    while t <= end + 1e-9:
        action = live.check(t)
        if action is not Action.NOTHING:
            out.append((round(t, 2), action))
        t += step
    return out


def test_a_quiet_socket_is_pinged_then_declared_hung() -> None:
    live = Liveness(POLICY, now=0.0)
    seen = run(live, 0.25, 2.0)
    assert seen[:3] == [(0.5, Action.PING), (1.0, Action.PING), (1.5, Action.PING)]
    assert seen[-1] == (2.0, Action.HUNG_KEEPALIVE)


def test_pongs_keep_a_quiet_session_alive() -> None:
    live = Liveness(POLICY, now=0.0)
    for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        assert live.check(t) is not Action.HUNG_KEEPALIVE
        live.received(t + 0.01)        # the pong of the ping just sent
    assert live.check(3.75) is Action.NOTHING


def test_a_request_unanswered_while_pongs_arrive_is_hung_by_the_watchdog() -> None:
    live = Liveness(POLICY, now=0.0)
    live.expect(1.0, "response.create")
    for step in range(1, 20):          # 1.25 .. 5.75 s
        t = 1.0 + step * 0.25
        assert live.check(t) in (Action.NOTHING, Action.PING)
        live.received(t)               # pongs: bytes, but no server event
    assert live.check(6.0) is Action.HUNG_WATCHDOG
    assert live.what == "response.create"


def test_an_event_answers_the_wait_and_a_response_in_progress_rearms_it() -> None:
    live = Liveness(POLICY, now=0.0)
    live.expect(0.0, "response.create")
    live.event(3.0, still_waiting=True, what="the response in progress")
    assert live.check(7.9) is not Action.HUNG_WATCHDOG or live.silent_for(7.9) >= 2
    live.received(7.9)
    assert live.check(7.95) is not Action.HUNG_WATCHDOG      # 4.95 s since the last event
    assert live.check(8.0) is Action.HUNG_WATCHDOG
    live.event(8.1, still_waiting=False)
    assert not live.waiting
    live.received(20.0)
    assert live.check(20.0) is Action.NOTHING


def test_the_earliest_wait_counts() -> None:
    live = Liveness(POLICY, now=0.0)
    live.expect(1.0, "the caller's turn")
    live.expect(4.0, "response.create")       # a later request does not restart the wait
    live.received(5.9)
    assert live.check(6.0) is Action.HUNG_WATCHDOG
    assert live.what == "the caller's turn"


@pytest.mark.parametrize("kw", [dict(ping_after_s=2.0, dead_after_s=2.0),
                                dict(ping_after_s=0.0), dict(answer_within_s=0.0)])
def test_unusable_policies_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LivenessPolicy(**kw)


def test_backoff_doubles_up_to_its_cap_with_jitter_from_the_upper_half() -> None:
    policy = RecoveryPolicy(backoff_s=0.2, backoff_max_s=2.0)
    for attempt, step in ((1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (9, 2.0)):
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 10      # jittered, not fixed
    with pytest.raises(ValueError):
        RecoveryPolicy(budget_s=-1)


# -- the replay buffer ------------------------------------------------------------------------

def frames(n: int, size: int = 10, start: int = 0) -> list[bytes]:
    return [bytes([(start + i) % 256]) * size for i in range(n)]


def test_keeps_what_came_after_the_last_server_event_plus_the_margin() -> None:
    buf = ReplayBuffer(max_bytes=1000, margin=20)
    for f in frames(10):
        buf.push(f)
    buf.server_event()                  # the server acted on all 100 bytes
    for f in frames(5, start=10):
        buf.push(f)
    data = b"".join(buf.take())
    assert data == b"".join(frames(7, start=8))      # 20 bytes before the event, then 50
    assert buf.take() == []                          # started afresh


def test_an_unanswered_turn_is_kept_whole() -> None:
    buf = ReplayBuffer(max_bytes=10_000, margin=0, turn_margin=30)
    for f in frames(10):
        buf.push(f)
    buf.turn_started()                  # reported at byte 100 (began before: the margin)
    for f in frames(10, start=10):
        buf.push(f)
        buf.server_event()              # e.g. transcription deltas: the turn still counts
    data = b"".join(buf.take())
    assert data[:10] == bytes([7]) * 10 and len(data) == 130


def test_an_answered_turn_is_not_replayed() -> None:
    buf = ReplayBuffer(max_bytes=10_000, margin=0, turn_margin=30)
    for f in frames(10):
        buf.push(f)
    buf.turn_started()
    for f in frames(10, start=10):
        buf.push(f)
    buf.turn_answered()
    for f in frames(3, start=20):
        buf.push(f)
    assert b"".join(buf.take()) == b"".join(frames(3, start=20))


def test_memory_is_bounded_by_max_bytes_on_a_sample_boundary() -> None:
    buf = ReplayBuffer(max_bytes=101, margin=0)
    buf.turn_started()                   # a turn that never ends must not keep everything
    for f in frames(1000, size=10):
        buf.push(f)
        assert buf.kept <= 111
    data = b"".join(buf.take())
    assert len(data) == 100              # 101 rounded down to whole PCM16 samples


def test_a_zero_sized_buffer_keeps_nothing() -> None:
    buf = ReplayBuffer(max_bytes=0, margin=0)
    for f in frames(10):
        buf.push(f)
    assert buf.take() == [] and buf.kept == 0
