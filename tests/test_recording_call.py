"""Whole SIP calls (SIPp through ``voicebridge serve``, the Realtime emulator in this
process) with a dialplan that records: the recording's left channel is what the caller
sent, its right channel what the caller heard, and a barge-in's cut leaves nothing of the
interrupted item after the truncation point.

The caller's audio is a µ-law pattern whose every frame is unique (seeded noise, loud
enough for the emulator's VAD) between stretches of µ-law silence; the session is G.711
passthrough, so the echo agent plays the caller's own bytes back and every frame can be
found, sample for sample, where it came from. What the caller heard is the RTP the bridge
sent to SIPp's media port, captured on loopback.
"""

from __future__ import annotations

import os
import random
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.bench.sip import (
    PT_PCMU,
    LoopbackCapture,
    Scenario,
    ServeProcess,
    free_udp_port,
    run_sipp,
)
from bridge.codecs import g711
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.interop import require_binary

PLAN = """
[match]
default = true

[agent]
instructions = "Recording test line."
audio_format = "g711"

[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 400

[recording]
retention_days = 7

[fallback]
action = "hangup"
"""
FRAME = 160                                   # 20 ms at 8 kHz
SILENT = b"\xff"


def caller_audio() -> tuple[bytes, list[tuple[int, int]]]:
    """µ-law: 1 s silence, 2 s "speech", 1.4 s silence, 1.2 s speech (the barge-in),
    4 s silence; and the byte spans of the two speech stretches."""
    rng = random.Random(11)
    out = bytearray()
    spans = []
    for kind, seconds in (("s", 1.0), ("v", 2.0), ("s", 1.4), ("v", 1.2), ("s", 4.0)):
        n = int(8000 * seconds)
        if kind == "s":
            out += SILENT * n
        else:
            spans.append((len(out), len(out) + n))
            # 0x00-0x5f and 0x80-0xdf: loud codes only, never a zero
            out += bytes(rng.choice((rng.randrange(0x00, 0x60), rng.randrange(0x80, 0xE0)))
                         for _ in range(n))
    return bytes(out), spans


def pcm(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(g711.ulaw_decode(ulaw), dtype="<i2")


def read_wav(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (2, 2)
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return rate, data[0::2], data[1::2]


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def frames(channel: np.ndarray) -> list[np.ndarray]:
    """The channel's non-silent 20 ms frames."""
    out = []
    for at in range(0, len(channel) - FRAME + 1, FRAME):
        f = channel[at:at + FRAME]
        if np.any(f):
            out.append(f)
    return out


def found(frame: np.ndarray, within: bytes) -> int:
    return within.find(frame.tobytes())


@pytest.mark.interop
async def test_recording_channels_are_what_was_sent_and_heard_and_stop_at_a_barge_in(
        tmp_path: Path) -> None:
    sipp = require_binary("sipp", "recording")
    if LoopbackCapture.unavailable():
        pytest.skip(str(LoopbackCapture.unavailable()))
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "rec.toml").write_text(PLAN)
    sent, spans = caller_audio()
    media = tmp_path / "caller.ulaw"
    media.write_bytes(sent)
    media_port = free_udp_port(pair=True)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    expired = recordings / "old-call.keep2d.wav"      # left by an earlier run, 3 days old
    expired.write_bytes(b"RIFF")
    os.utime(expired, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    async with Emulator(EmulatorConfig()) as emu:
        with ServeProcess(tmp_path / "serve", dialplans=plans,
                          env={"VOICEBRIDGE_REALTIME_EMULATOR_URL": emu.url,
                               "VOICEBRIDGE_SIP_TRANSPORTS": "udp",
                               "VOICEBRIDGE_RECORDS_RECORDINGS_PATH": str(recordings)}
                          ) as bridge:
            scenario = (Scenario("recording", service="rec", codecs=("pcmu",))
                        .invite(answer=r"m=audio [0-9]+ RTP/AVP 0 101")
                        .rtp_stream(media, loops=1, payload_type=PT_PCMU)
                        .pause(10500).bye().write(tmp_path))
            async with LoopbackCapture(dst_ports=[media_port]) as capture:
                run = await run_sipp(scenario, bridge.sip_port, workdir=tmp_path,
                                     media_port=media_port, sipp=sipp, limit_s=45,
                                     call_id_prefix="rec")
                assert run.successful == 1, run.explain()
                record = await bridge.wait_record("rec-1@127.0.0.1")
            # The retention sweep ran at start.
            assert not expired.exists()
            assert bridge.metric("voicebridge_recordings_total", 'event="expired"') == 1
            assert bridge.metric("voicebridge_recordings_total", 'event="written"') == 1
            # The download, behind the operator's token, and its link on the call's page.
            url = f"/calls/{record['call_id']}/recording"
            assert bridge.get(url)[0] == 401
            status, wav = bridge.get(url, token=True)
            page = bridge.get(f"/calls/{record['call_id']}", token=True)[1].decode()
            heard_rtp = [p for _at, _src, p in capture.rtp(dst_port=media_port).packets]
        session = emu.record.last
        assert session is not None
    path = Path(record["recording"])
    assert path.parent == recordings.resolve() and path.name.endswith(".keep7d.wav")
    assert status == 200 and wav == file_bytes(path)
    assert f'href="{url}"' in page
    rate, left, right = read_wav(path)
    assert rate == 8000
    sent_pcm = pcm(sent).tobytes()
    heard_pcm = pcm(b"".join(p.payload for p in heard_rtp if p.payload_type == PT_PCMU))

    # Left: the caller's audio as sent, frame for frame and in order.
    caller = frames(left)
    speech_frames = sum(hi - lo for lo, hi in spans) // FRAME
    assert len(caller) >= speech_frames - 10, (len(caller), speech_frames)
    where = [found(f, sent_pcm) for f in caller]
    assert all(w >= 0 for w in where), "a caller frame that was never sent"
    assert where == sorted(where)

    # Right: exactly what the bridge sent the caller, nothing else.
    agent = frames(right)
    heard = frames(heard_pcm)
    assert agent, "no agent audio recorded"
    assert abs(len(agent) - len(heard)) <= 2, (len(agent), len(heard))
    assert all(found(f, heard_pcm.tobytes()) >= 0 for f in agent)

    # The barge-in: the first echo (of the 2 s turn) was cut where the caller spoke.
    assert record["barge_ins"], record
    truncation = session.truncations[0]
    assert record["barge_ins"][0]["truncated_ms"] == truncation.audio_end_ms
    assert 100 <= truncation.audio_end_ms < truncation.item_audio_ms - 300, truncation
    # The echo is the caller's first turn played back: the first run of agent frames is a
    # stretch of it, and the rest of that turn never reached the caller or the recording.
    run = first_run(right)
    assert len(run) >= 5
    first, last = found(run[0], sent_pcm), found(run[-1], sent_pcm)
    lo, hi = 2 * spans[0][0], 2 * spans[0][1]
    assert lo - 2 * FRAME < first < last < hi, (first, last, lo, hi)
    assert last - first == 2 * FRAME * (len(run) - 1)         # contiguous, nothing skipped
    right_bytes = right.tobytes()
    after = [sent_pcm[at:at + 2 * FRAME]
             for at in range(last + 2 * FRAME, hi - 2 * FRAME, 2 * FRAME)]
    assert len(after) >= 10, "the barge-in cut less than 200 ms"
    assert not any(right_bytes.find(f) >= 0 for f in after), "audio after the truncation point"
    # ... and what was heard of it matches the truncation point (± two frames and the
    # silence the item began with, before the caller's speech).
    heard_ms = len(run) * 20
    assert heard_ms <= truncation.audio_end_ms + 40, (heard_ms, truncation)
    assert heard_ms >= truncation.audio_end_ms - 400 - 40, (heard_ms, truncation)


def first_run(channel: np.ndarray) -> list[np.ndarray]:
    """The first run of consecutive non-silent 20 ms frames (aligned to the recording)."""
    run: list[np.ndarray] = []
    for at in range(0, len(channel) - FRAME + 1, FRAME):
        f = channel[at:at + FRAME]
        if np.any(f):
            run.append(f)
        elif run:
            break
    return run
