"""MemoryLeg: G.711 passthrough frames, and the clock polled before each inbound frame."""

from __future__ import annotations

from bridge.call.clock import MediaClock, VirtualScheduler
from bridge.call.memory import MemoryLeg
from tests.support.leg_sink import Sink


def test_carry_encoded_only_for_the_leg_s_own_law() -> None:
    assert not MemoryLeg(g711="pcmu").carry_encoded("pcma")
    assert not MemoryLeg(g711="pcmu").carry_encoded("opus")
    leg = MemoryLeg(g711="pcma")
    assert leg.carry == "pcm16" and leg.carried_frame_bytes == 320
    assert leg.carry_encoded("pcma")
    assert leg.carry == "pcma" and leg.carried_frame_bytes == 160


def test_carried_frames_are_encoded_both_ways() -> None:
    leg = MemoryLeg(g711="pcmu")
    assert leg.carry_encoded("pcmu")
    sink = Sink()
    leg.attach(sink)
    leg.feed(b"\x01" * 200)                       # a frame and a short tail
    assert sink.frames == [b"\x01" * 160, b"\x01" * 40 + b"\xff" * 120]
    leg.write_frame(b"\x02" * 160)
    leg.write_silence()
    assert [f.pcm for f in leg.frames] == [b"\x02" * 160, b"\xff" * 160]
    assert [f.silent for f in leg.frames] == [False, True]


def test_idle_inbound_is_the_carried_law_s_silence() -> None:
    clock = MediaClock(scheduler=VirtualScheduler(start=10.0))
    leg = MemoryLeg(g711="pcma", clock=clock)
    assert leg.carry_encoded("pcma")
    sink = Sink()
    leg.attach(sink)
    leg.play_silence(40)
    leg.on_tick(0.0)
    leg.on_tick(0.02)
    leg.on_tick(0.04)                              # script empty: idle silence
    assert sink.frames == [b"\xd5" * 160] * 3


def test_the_poll_hook_runs_before_each_inbound_frame() -> None:
    leg = MemoryLeg()
    order: list[str] = []
    sink = Sink()
    sink.on_leg_audio = lambda pcm: order.append("frame")  # type: ignore[method-assign]
    leg.attach(sink)
    leg.poll = lambda: order.append("poll")
    leg.feed(bytes(640))
    assert order == ["poll", "frame", "poll", "frame"]


def test_without_a_hook_the_leg_polls_its_own_clock() -> None:
    clock = MediaClock(scheduler=VirtualScheduler(start=10.0))
    polls: list[None] = []
    clock.poll = lambda: polls.append(None) is None  # type: ignore[method-assign]
    leg = MemoryLeg(clock=clock)
    leg.attach(Sink())
    leg.feed(bytes(960))
    assert len(polls) == 3
