"""Must show (issue 11, turn policies): whole SIP calls where the bridge runs the turn.

baresip calls a real ``voicebridge serve`` (built-in emulator) and speaks an espeak-ng
phrase; it must hear the phrase echoed back, which the emulator does only when a response
is created:

* ``gatekeeper`` (the shipped plan): server VAD with ``create_response = false``; the
  server commits the turn and never answers by itself; the plan's Python hook
  (``gatekeeper_hooks:screen``) answers, counted as ``hook="python",outcome="answered"``.
* ``manual``: ``turn_detection = none``; only the bridge's VAD can end the turn
  (``input_audio_buffer.commit``), then the ``answer`` hook replies.

SIPp makes the same ``turn_detection = none`` call with G.711 passed through untranscoded
(``manual-g711``): the detector hears the caller's µ-law frames decoded, and what the
bridge sends back on the wire is captured on loopback.

Before ``[turns]`` these callers heard silence: the record would show no response.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import (
    PT_PCMU,
    LoopbackCapture,
    Scenario,
    ServeProcess,
    free_udp_port,
    run_sipp,
)
from tests.support import baresip as phone
from tests.support.interop import require, require_binary

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "dialplans" / "plans"
ECHO = Path(__file__).parent / "data" / "interop" / "dialplans" / "echo.toml"

MANUAL = """
description = "Turns test: no server turn detection, the bridge's VAD ends the turn"
tools = ["hang_up"]

[match]
called = ["manual"]

[agent]
instructions = "You are the interop test line. Repeat what the caller says."
audio_format = "pcm16"

[agent.turn_detection]
type = "none"

[turns]
end_silence_ms = 500

[limits]
max_call_s = 120
"""


MANUAL_G711 = MANUAL.replace('called = ["manual"]', 'called = ["manualg711"]').replace(
    'audio_format = "pcm16"', 'audio_format = "g711"')


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_binary("baresip", "softphone interop")
    plans = tmp_path_factory.mktemp("plans")
    shutil.copy(SHIPPED / "gatekeeper.toml", plans)
    shutil.copy(SHIPPED / "gatekeeper_hooks.py", plans)
    shutil.copy(ECHO, plans)                       # the default: no greeting
    (plans / "manual.toml").write_text(MANUAL)
    (plans / "manual-g711.toml").write_text(MANUAL_G711)
    with ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=plans) as bridge:
        yield bridge


def source_with_tail(folder: Path, extra_s: float) -> Path:
    """The phrase with ``extra_s`` more silence (the bridge's end of turn comes on top of
    the server's in the manual case, and baresip hangs up when its file ends)."""
    src = phone.phrase(folder)
    with wave.open(str(src)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    out = folder / "phrase-long.wav"
    with wave.open(str(out), "wb") as w:
        w.setparams(params)
        w.writeframes(frames + bytes(int(2 * params.framerate * extra_s)))
    return out


async def dial(serve: ServeProcess, tmp_path: Path, user: str) -> phone.BaresipCall:
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    cfg = phone.config(tmp_path, source_with_tail(tmp_path, 2.0), sounds)
    result = await phone.call(cfg, sounds, f"sip:{user}@127.0.0.1:{serve.sip_port}",
                              serve.records, timeout_s=50)
    info = f"--- baresip ---\n{result.output[-2500:]}\n{serve.log_tail()}"
    phone.check_echo(sounds, info)
    record = result.record
    assert record["end_reason"] == "caller_hangup", record
    assert record["errors"] == [] and record["fallback"] is None, record
    assert record["responses"] >= 1, record
    return result


async def test_create_response_false_the_gatekeeper_hook_answers(
        serve: ServeProcess, tmp_path: Path) -> None:
    answered = 'hook="python",outcome="answered"'
    before = serve.metric("voicebridge_turns_decided_total", answered)
    result = await dial(serve, tmp_path, "gatekeeper")
    assert result.record["dialplan"] == "gatekeeper"
    caller = [e for e in result.record["transcript"] if e["role"] == "caller"]
    assert caller, result.record["transcript"]          # the plan transcribes
    assert serve.metric("voicebridge_turns_decided_total", answered) >= before + 1


async def test_turn_detection_none_the_bridge_vad_ends_the_turn(
        serve: ServeProcess, tmp_path: Path) -> None:
    answered = 'hook="answer",outcome="answered"'
    before = serve.metric("voicebridge_turns_decided_total", answered)
    result = await dial(serve, tmp_path, "manual")
    assert result.record["dialplan"] == "manual"
    assert serve.metric("voicebridge_turns_decided_total", answered) == before + 1


def phrase_ulaw(folder: Path) -> Path:
    """The phrase as raw µ-law, 0.3 s of silence before and 6 s after (the phone keeps
    sending RTP while it listens to the reply)."""
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    wav, ulaw = folder / "phrase.wav", folder / "phrase.ulaw"
    subprocess.run([espeak, "-w", str(wav), phone.PHRASE], check=True, capture_output=True)
    subprocess.run([sox, str(wav), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw",
                    str(ulaw), "pad", "0.3", "6"], check=True, capture_output=True)
    return ulaw


async def test_sipp_g711_passthrough_turn_detection_none(serve: ServeProcess,
                                                        tmp_path: Path) -> None:
    require_binary("sipp", "SIP interop")
    why = LoopbackCapture.unavailable()
    require(why is None, f"loopback capture: {why}")
    ulaw = phrase_ulaw(tmp_path)
    sip_port, media_port = free_udp_port(), free_udp_port(pair=True)
    prefix = f"turns-g711-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("turnsg711", service="manualg711", codecs=("pcmu",))
                .invite(answer=r"m=audio [0-9]+ RTP/AVP 0")
                .rtp_stream(ulaw, loops=1, payload_type=PT_PCMU)
                .pause(int(ulaw.stat().st_size / 8) + 200).bye().write(tmp_path))
    answered = 'hook="answer",outcome="answered"'
    before = serve.metric("voicebridge_turns_decided_total", answered)
    async with LoopbackCapture(src_ports=(media_port,), dst_ports=(media_port,)) as capture:
        run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                             media_port=media_port, call_id_prefix=prefix)
    assert run.returncode == 0 and run.failed == 0, f"{run.explain()}\n{serve.log_tail()}"
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["dialplan"] == "manual-g711" and record["responses"] >= 1, record
    assert serve.metric("voicebridge_turns_decided_total", answered) == before + 1
    # on the wire: silence while the caller speaks, then the agent's reply (the echo)
    back, sent = capture.rtp(dst_port=media_port), capture.rtp(src_port=media_port)
    speech = [t for t, level in sent.levels(100) if level > -45.0]
    assert speech, sent.levels(100)
    first, last = speech[0], speech[-1] + 0.1
    during = back.window(first, last).levels(100)
    assert during and max(level for _, level in during) < -55.0, during
    after = back.window(last + 0.3, last + 4.0).levels(100)
    assert after and max(level for _, level in after) > -35.0, \
        f"no reply after the caller's turn: {after}\n{serve.log_tail()}"
