"""Interop with a real softphone: baresip calls a real ``voicebridge serve``.

baresip runs headless with audio from and to files: its source is a WAV of a phrase made
with espeak-ng (0.3 s of silence, the phrase, then silence long enough for the echo); its
``sndfile`` module records what it sent (``dump-*-enc.wav``) and what it heard
(``dump-*-dec.wav``). When the source file ends baresip hangs up, so the end of the file
is the caller's hang-up. The heard recording must hold the echoed phrase (silence before,
energy in the window after the phrase, an envelope that matches the phrase), and the call
record must be complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import ServeProcess
from tests.support import baresip as phone
from tests.support.interop import require_binary

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_binary("baresip", "softphone interop")
    with ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS) as bridge:
        yield bridge


async def test_baresip_hears_its_phrase_echoed(serve: ServeProcess, tmp_path: Path) -> None:
    require_binary("baresip", "softphone interop")
    source = phone.phrase(tmp_path)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    cfg = phone.config(tmp_path, source, sounds)
    call = await phone.call(cfg, sounds, f"sip:echo@127.0.0.1:{serve.sip_port}", serve.records)
    record, output = call.record, call.output
    info = f"--- baresip ---\n{output[-2500:]}\n{serve.log_tail()}"
    sent, _heard = phone.check_echo(sounds, info)

    # The record of the call, as the serve process stored it.
    assert record["source"] == "sip" and record["caller"] == "bs" and record["called"] == "echo"
    assert record["dialplan"] == "echo"
    assert record["end_reason"] == "caller_hangup", record
    assert record["errors"] == [] and record["fallback"] is None, record
    assert record["started_at"] <= record["connected_at"] < record["ended_at"]
    assert record["ended_at"] - record["started_at"] >= (len(sent) / 8000) - 1.0
    agent = [e for e in record["transcript"] if e["role"] == "agent"]
    assert agent and "echo" in agent[0]["text"], record["transcript"]
    assert record["responses"] >= 1 and record["usage"], record
