"""The drain-and-reframe helper both G.711 legs use (bridge.media.drain)."""

from __future__ import annotations

import asyncio
from collections import deque

from bridge.media.drain import FrameDrain, Reframer
from bridge.rtp.jitter import JitterBuffer


def test_whole_frames_pass_and_a_remainder_is_carried() -> None:
    out: list[bytes] = []
    cut = Reframer(4)
    cut.push(b"abcd", out.append)
    cut.push(b"efgh" b"ij", out.append)           # 1.5 frames: half is carried
    assert out == [b"abcd", b"efgh"] and cut.pending == 2
    cut.push(b"klmnop", out.append)
    assert out[2:] == [b"ijkl", b"mnop"] and cut.pending == 0
    cut.push(b"q", out.append)
    cut.reset(2)
    cut.push(b"rs", out.append)
    assert out[4:] == [b"rs"]                      # the reset dropped "q"


def test_drain_converts_each_payload_and_polls_before_each_frame() -> None:
    events: list[str] = []
    cut = Reframer(4)
    ready = deque([b"ab", b"cdef", b"gh"])
    cut.drain(ready, lambda p: p.upper(), lambda f: events.append(f.decode()),
              lambda: events.append("poll"))
    assert not ready
    assert events == ["poll", "ABCD", "poll", "EFGH"]
    plain: list[bytes] = []
    cut.drain(deque([b"wxyz"]), None, plain.append)  # None: payloads pass as is
    assert plain == [b"wxyz"]


async def test_the_gap_timer_conceals_a_lost_packet_and_delivers_what_was_held() -> None:
    loop = asyncio.get_running_loop()
    jitter = JitterBuffer(silence_byte=0xFF, depth_ms=20)
    out: list[bytes] = []
    fired = asyncio.Event()

    def on_deadline() -> None:
        drain.drain(jitter, loop.time(), None, out.append)
        fired.set()

    drain = FrameDrain(loop, 160, on_deadline)
    now = loop.time()
    jitter.push(1, 0, b"\x01" * 160, now)
    drain.drain(jitter, now, None, out.append)
    jitter.push(3, 320, b"\x03" * 160, now)       # 2 is missing: held, timer armed
    drain.drain(jitter, now, None, out.append)
    assert out == [b"\x01" * 160]
    await asyncio.wait_for(fired.wait(), 1.0)
    assert out == [b"\x01" * 160, b"\xff" * 160, b"\x03" * 160]
    drain.close()


async def test_close_cancels_an_armed_timer() -> None:
    loop = asyncio.get_running_loop()
    jitter = JitterBuffer(depth_ms=20)
    calls: list[None] = []
    drain = FrameDrain(loop, 160, lambda: calls.append(None))
    jitter.push(1, 0, bytes(160), loop.time())
    jitter.push(3, 320, bytes(160), loop.time())
    drain.drain(jitter, loop.time(), None, lambda f: None)
    drain.close()
    await asyncio.sleep(0.06)
    assert calls == []
