"""G.722 wideband with a real softphone: baresip with its ``g722`` module calls a real
``voicebridge serve`` whose emulator echoes what it hears.

baresip offers G.722 first and G.711 after it (module load order); the bridge answers
G.722 (its ``[sip] codecs`` preference), so the whole call runs at 16 kHz on the phone's
side: G.722 decode, 16 -> 24 kHz up the Realtime session, the echo 24 -> 16 kHz and
G.722 encode back. The phone's recording of what it heard must be the echoed phrase
(its envelope correlates with what it said, delayed) and must be wideband: the phrase's
energy between 4 and 7 kHz, which no 8 kHz stage anywhere on the path could carry, comes
back too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.bench.sip import ServeProcess
from tests.support import baresip
from tests.support.interop import require_binary

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
RATE = 16000


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_binary("baresip", "softphone interop")
    with ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS,
                      env={"VOICEBRIDGE_SIP_CODECS": "g722,pcmu,pcma"}) as bridge:
        yield bridge


async def test_baresip_g722_call_hears_its_phrase_echoed(serve: ServeProcess,
                                                         tmp_path: Path) -> None:
    source = baresip.phrase_wav(tmp_path, RATE)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    cfg = baresip.config(tmp_path, source, sounds, codecs=("g722", "g711"), rate=RATE)
    call = await baresip.call(cfg, sounds, f"sip:echo@127.0.0.1:{serve.sip_port}",
                              serve.records)
    info = f"--- baresip ---\n{call.output[-2500:]}\n{serve.log_tail()}"

    # The answer chose G.722 (offered before PCMU and PCMA): baresip set it up both
    # ways, and its codec ran at 16 kHz.
    assert "Set audio encoder: G722 16000Hz" in call.output, info
    assert "Set audio decoder: G722 16000Hz" in call.output, info
    assert call.rate == RATE, info

    sent_levels = baresip.levels(call.sent, RATE)
    heard_levels = baresip.levels(call.heard, RATE)
    speech = np.flatnonzero(sent_levels > -45)
    assert speech.size, f"baresip sent no speech: {sent_levels}\n{info}"
    first, last = int(speech[0]), int(speech[-1]) + 1
    phrase_bins = last - first
    assert heard_levels[:first + 2].max() < -55, f"heard before speaking: {heard_levels}"
    window = heard_levels[last + 2:last + 2 + phrase_bins + 10]
    loud = int(np.count_nonzero(window > -40))
    assert loud >= 0.5 * np.count_nonzero(sent_levels[first:last] > -40), \
        f"echo window {window}\nsent {sent_levels[first:last]}\n{info}"
    corr, delay = baresip.envelope_alignment(call.sent, call.heard, RATE)
    assert corr > 0.6 and delay >= phrase_bins * baresip.BIN_S, \
        f"heard audio is not the echoed phrase (r={corr:.2f}, delay {delay} s)\n{info}"

    # Wideband end to end: the share of the phrase's energy between 4 and 7 kHz comes
    # back within a few dB (an 8 kHz stage would cut it by 60 dB or more).
    n = int(RATE * baresip.BIN_S)
    said = call.sent[first * n:last * n]
    lag = int(round(delay / baresip.BIN_S))
    echoed = call.heard[(first + lag) * n:(last + lag) * n]
    said_hf = baresip.band_energy_db(said, RATE, 4000, 7000)
    echoed_hf = baresip.band_energy_db(echoed, RATE, 4000, 7000)
    assert said_hf > -35, f"the phrase has too little above 4 kHz to tell: {said_hf:.1f} dB"
    assert echoed_hf > said_hf - 6, \
        f"the echo lost its high band: {echoed_hf:.1f} dB vs {said_hf:.1f} dB said\n{info}"

    record = call.record
    assert record["source"] == "sip" and record["called"] == "echo", record
    assert record["end_reason"] == "caller_hangup", record
    assert record["errors"] == [] and record["fallback"] is None, record
    agent = [e for e in record["transcript"] if e["role"] == "agent"]
    assert agent and "echo" in agent[0]["text"], record["transcript"]
