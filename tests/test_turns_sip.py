"""Must show (issue 11, turn policies): whole SIP calls where the bridge runs the turn.

baresip calls a real ``voicebridge serve`` (built-in emulator) and speaks an espeak-ng
phrase; it must hear the phrase echoed back, which the emulator does only when a response
is created:

* ``gatekeeper`` (the shipped plan): server VAD with ``create_response = false``; the
  server commits the turn and never answers by itself; the plan's Python hook
  (``gatekeeper_hooks:screen``) answers, counted as ``hook="python",outcome="answered"``.
* ``manual``: ``turn_detection = none``; only the bridge's VAD can end the turn
  (``input_audio_buffer.commit``), then the ``answer`` hook replies.

Before ``[turns]`` both callers heard silence: the record would show no response.
"""

from __future__ import annotations

import shutil
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import ServeProcess
from tests.support import baresip as phone
from tests.support.interop import require_binary

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


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_binary("baresip", "softphone interop")
    plans = tmp_path_factory.mktemp("plans")
    shutil.copy(SHIPPED / "gatekeeper.toml", plans)
    shutil.copy(SHIPPED / "gatekeeper_hooks.py", plans)
    shutil.copy(ECHO, plans)                       # the default: no greeting
    (plans / "manual.toml").write_text(MANUAL)
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
