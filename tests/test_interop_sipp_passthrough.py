"""G.711 passthrough end to end: a SIPp caller's µ-law reaches the Realtime session as is.

A real ``voicebridge serve`` (subprocess) answers SIPp, whose RTP carries a µ-law pattern
that never repeats within the call; the Realtime upstream is an emulator in this process,
which keeps the input audio each session was sent. With a dialplan whose session audio is
``g711`` the appended audio must be the caller's RTP payload byte for byte (zero
transcodes: decoded and encoded again, µ-law's negative zero 0x7F comes back as 0xFF, and
the pattern is full of it); with a ``pcm16`` dialplan the same caller's audio arrives
resampled (the check below tells the two apart, so it cannot pass by accident).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bridge.bench.sip import PT_PCMU, Scenario, ServeProcess, free_udp_port, run_sipp
from bridge.codecs import g711
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.interop import require_binary

PLAN = """
[match]
{match}

[agent]
instructions = "Passthrough test line."
audio_format = "{fmt}"

[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 500

[fallback]
action = "hangup"
"""
FRAME = 160                                     # 20 ms of µ-law


def pattern(seconds: float) -> bytes:
    """µ-law bytes whose every 160-byte frame is unique (random, seeded) and loud enough
    to be speech for the emulator's VAD; every eighth byte is 0x7F (negative zero), which
    a decode and re-encode turns into 0xFF."""
    rng = random.Random(7)
    out = bytearray(rng.randrange(256) for _ in range(int(8000 * seconds)))
    out[::8] = b"\x7f" * len(out[::8])
    return bytes(out)


def longest_run(received: bytes, sent: bytes) -> int:
    """Bytes of ``received`` that continue ``sent`` exactly, from where its first whole
    frame is found in ``sent`` (0 when no frame of it is)."""
    best = 0
    for start in range(0, min(len(received), 50 * FRAME) - FRAME + 1, FRAME):
        at = sent.find(received[start:start + FRAME])
        if at < 0:
            continue
        n = 0
        while (start + n < len(received) and at + n < len(sent)
               and received[start + n] == sent[at + n]):
            n += 1
        best = max(best, n)
    return best


@pytest.mark.interop
async def test_a_sip_callers_ulaw_goes_upstream_byte_for_byte(tmp_path: Path) -> None:
    sipp = require_binary("sipp", "SIP passthrough")
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "pass.toml").write_text(PLAN.format(match='called = ["pass"]', fmt="g711"))
    (plans / "pcm.toml").write_text(PLAN.format(match="default = true", fmt="pcm16"))
    sent = pattern(6.0)
    media = tmp_path / "caller.ulaw"
    media.write_bytes(sent)
    received: dict[str, bytes] = {}
    async with Emulator(EmulatorConfig(keep_input_audio=1_000_000)) as emu:
        with ServeProcess(tmp_path / "serve", dialplans=plans, records=False,
                          env={"VOICEBRIDGE_REALTIME_EMULATOR_URL": emu.url,
                               "VOICEBRIDGE_SIP_TRANSPORTS": "udp"}) as bridge:
            for service in ("pass", "pcm"):
                scenario = (Scenario(f"passthrough-{service}", service=service,
                                     codecs=("pcmu",))
                            .invite(answer=r"m=audio [0-9]+ RTP/AVP 0 101")
                            .rtp_stream(media, loops=1, payload_type=PT_PCMU)
                            .pause(5000).bye().write(tmp_path))
                before = len(emu.record)
                sipp_run = await run_sipp(scenario, bridge.sip_port, workdir=tmp_path,
                                     media_port=free_udp_port(pair=True), sipp=sipp,
                                     limit_s=40)
                assert sipp_run.successful == 1, sipp_run.explain()
                await emu.wait_for(lambda r, n=before: len(r) > n and r.sessions[-1].open
                                   is False, 15)
                session = emu.record.last
                assert session is not None
                received[service] = bytes(session.appended_audio)
    passed = received["pass"]
    # Audio flows once the session is up: most of the 5 s of the call went upstream, and
    # every byte of it continues the caller's RTP exactly.
    assert len(passed) >= 3 * 8000, len(passed)
    run = longest_run(passed, sent)
    assert run >= len(passed) - 4 * FRAME, (run, len(passed))
    assert passed.count(0x7F) >= len(passed) // 8 - 4 * FRAME      # -0 kept as sent
    # The same caller on a PCM16 session: resampled to 24 kHz, nothing of it is µ-law.
    pcm = received["pcm"]
    assert len(pcm) >= 3 * 48000
    assert longest_run(pcm, sent) == 0
    # ... and what it carries is the caller's audio, decoded (a sanity check of the
    # comparison itself: the decoded pattern is loud, as the resampled audio is).
    assert max(abs(s) for s in memoryview(g711.ulaw_decode(sent[:FRAME])).cast("h")) > 1000
