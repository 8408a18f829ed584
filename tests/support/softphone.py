"""baresip as a headless caller for the interop tests: its configuration, the phrase it
says (espeak-ng), and what its recordings are checked with (levels per 100 ms, and the
best envelope correlation of what it heard with what it said, delayed)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from bridge.bench.sip import ServeProcess, free_udp_port
from tests.support.interop import require_binary

PHRASE = "Hello, this is the voice bridge interop test. One, two, three."
TAIL_S = 4.8             # silence after the phrase: VAD end of turn plus the whole echo
BIN_S = 0.1


def phrase(folder: Path) -> Path:
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    raw = folder / "espeak.wav"
    subprocess.run([espeak, "-w", str(raw), PHRASE], check=True, capture_output=True)
    out = folder / "phrase.wav"
    subprocess.run([sox, str(raw), "-r", "8000", "-c", "1", "-b", "16", str(out),
                    "pad", "0.3", str(TAIL_S)], check=True, capture_output=True)
    return out


def config(folder: Path, source: Path, sounds: Path, *, modules: tuple[str, ...] = (),
           account_params: str = "") -> Path:
    """baresip's configuration folder: ``modules`` loaded besides the audio ones, and
    ``account_params`` added to its one account (``;mediaenc=srtp-mand``)."""
    cfg = folder / "baresip"
    cfg.mkdir()
    extra = "".join(f"module {m}\n" for m in modules)
    # No net_interface: baresip then writes the host's first interface into its SDP
    # while it sends from loopback, so its media latches only because it comes from
    # where its SIP came from (the bridge's pre-latch rule; no latch_any needed).
    (cfg / "config").write_text(f"""poll_method epoll
sip_listen 127.0.0.1:{free_udp_port()}
audio_player aufile,/dev/null
audio_source aufile,{source}
audio_alert aufile,/dev/null
audio_srate 8000
audio_channels 1
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module sndfile.so
{extra}snd_path {sounds}
module_app account.so
module_app menu.so
""")
    (cfg / "accounts").write_text(f"<sip:bs@127.0.0.1>;regint=0{account_params}\n")
    (cfg / "contacts").write_text("")
    return cfg


def read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def levels(x: np.ndarray) -> np.ndarray:
    n = int(8000 * BIN_S)
    bins = len(x) // n
    rms = np.sqrt(np.mean(x[:bins * n].reshape(bins, n) ** 2, axis=1))
    out: np.ndarray = 20 * np.log10(np.maximum(rms, 1.0) / 32768)
    return out


def envelope_alignment(sent: np.ndarray, heard: np.ndarray) -> tuple[float, float]:
    """Best normalised correlation of the heard envelope with the sent one delayed by
    0.2–10 s: (correlation, delay in seconds)."""
    a_env, b_env = (10 ** (levels(x) / 20) for x in (sent, heard))
    best = (-1.0, 0.0)
    for lag in range(2, 100):
        a, b = a_env[:len(a_env) - lag], b_env[lag:]
        n = min(len(a), len(b))
        if n < 15 or a[:n].std() == 0 or b[:n].std() == 0:
            continue
        corr = float(np.corrcoef(a[:n], b[:n])[0, 1])
        if corr > best[0]:
            best = (corr, round(lag * BIN_S, 1))
    return best


async def call_and_wait(serve: ServeProcess, baresip: str, cfg: Path, user: str,
                        limit_s: float = 40.0) -> tuple[dict[str, Any], str]:
    """baresip dials ``user`` at ``serve`` and hangs up when its source file ends: the
    call's finished record, and baresip's output with the bridge's log for messages."""
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        baresip, "-f", str(cfg), "-e", f"/dial sip:{user}@127.0.0.1:{serve.sip_port}",
        "-t", str(int(limit_s)), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    record = None
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while record is None:
                    record = next((r for r in serve.records() if r["caller"] == "bs"
                                   and r["started_at"] >= started - 1 and r["ended_at"]),
                                  None)
                    await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)          # baresip closes its recordings with the call
    finally:
        if proc.returncode is None:
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
        output = (await proc.communicate())[0].decode(errors="replace")
    output = re.sub(r"\[\d+:\d+:\d+\] audio=\S+ \(bit/s\)\s*", "", output)   # status ticker
    info = f"--- baresip ---\n{output[-2500:]}\n{serve.log_tail()}"
    assert record is not None, f"no finished call record\n{info}"
    return record, info


def check_echo(sounds: Path, info: str) -> np.ndarray:
    """baresip's recordings in ``sounds``: it heard nothing before it spoke, then its
    phrase echoed (energy after the phrase, an envelope that correlates with it, delayed).
    Returns what it sent."""
    [enc] = sounds.glob("dump-*-enc.wav")
    [dec] = sounds.glob("dump-*-dec.wav")
    sent, heard = read(enc), read(dec)
    sent_levels, heard_levels = levels(sent), levels(heard)
    speech = np.flatnonzero(sent_levels > -45)
    assert speech.size, f"baresip sent no speech: {sent_levels}\n{info}"
    first, last = int(speech[0]), int(speech[-1]) + 1
    phrase_bins = last - first
    # Nothing but silence reached the phone before it had spoken (no greeting).
    assert heard_levels[:first + 2].max() < -55, f"heard before speaking: {heard_levels}"
    # The echo: energy after the phrase (plus the 500 ms end-of-turn silence), about as
    # long as the phrase.
    window = heard_levels[last + 2:last + 2 + phrase_bins + 10]
    loud = int(np.count_nonzero(window > -40))
    assert loud >= 0.5 * np.count_nonzero(sent_levels[first:last] > -40), \
        f"echo window {window}\nsent {sent_levels[first:last]}\n{info}"
    corr, delay = envelope_alignment(sent, heard)
    # (A tone or noise scores near 0; the echo scores ~0.9 on an idle machine and stays
    # well above 0.6 on a loaded one, where the phone's playout timing wobbles.)
    assert corr > 0.6 and delay >= phrase_bins * BIN_S, \
        f"heard audio is not the echoed phrase (r={corr:.2f}, delay {delay} s)\n{info}"
    return sent
