"""The one RTP timestamp rule both legs send with (bridge.rtp.timestamps)."""

from __future__ import annotations

from bridge.rtp.timestamps import RtpTimeline


def test_first_packet_marks_a_talkspurt_then_timestamps_count_samples() -> None:
    line = RtpTimeline(1000, gap_s=0.1)
    assert line.stamp(5.0, 160) == (1000, True)
    # late and early ticks do not bend the timestamps within a talkspurt
    assert line.stamp(5.027, 160) == (1160, False)
    assert line.stamp(5.039, 160) == (1320, False)
    assert line.next_ts == 1480


def test_a_pause_longer_than_the_gap_follows_real_time_with_a_marker() -> None:
    line = RtpTimeline(0, gap_s=0.05)
    line.stamp(0.0, 160)
    line.stamp(0.02, 160)
    # 0.5 s of nothing: the next packet's timestamp is 0.5 s after the last packet's
    assert line.stamp(0.52, 160) == (160 + 4000, True)
    # a pause shorter than the gap is not one
    assert line.stamp(0.56, 160) == (4320, False)


def test_a_requested_talkspurt_follows_real_time_and_never_goes_backwards() -> None:
    line = RtpTimeline(0xFFFFFF00, gap_s=0.1)
    line.stamp(0.0, 160)
    line.talkspurt = True                     # resumed from hold
    assert line.stamp(0.01, 160) == (0xFFFFFFA0, True)   # 10 ms later: no step back
    line.talkspurt = True
    assert line.stamp(0.05, 160) == (0x40 + 160, True)   # 40 ms after, wrapped


def test_peek_does_not_move_the_timeline_and_resume_after_skips_past_an_event() -> None:
    line = RtpTimeline(0, gap_s=0.1)
    line.stamp(0.0, 160)
    assert line.peek(0.02) == (160, False)
    assert line.peek(0.02) == (160, False)
    line.resume_after(160 + 800, 0.12)        # a 100 ms DTMF event took the timeline
    assert line.stamp(0.14, 160) == (960 + 160, True)
    line.resume_after(0, 0.2)                 # an end behind the timeline: ignored
    assert line.next_ts == 1280
