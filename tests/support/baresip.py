"""A headless baresip caller for interop tests: a spoken phrase in, what it heard out.

baresip runs with audio from and to files: its source is a WAV of a phrase made with
espeak-ng (0.3 s of silence, the phrase, then silence long enough for the echo); its
``sndfile`` module records what it sent (``dump-*-enc.wav``) and what it heard
(``dump-*-dec.wav``) at the codec's rate. When the source file ends baresip hangs up.
The envelope helpers compare the two recordings in 100 ms bins; :func:`check_echo` asserts
the heard recording holds the echoed phrase: silence before, energy in the window after the
phrase, an envelope that matches the phrase's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.bench.sip import free_udp_port
from tests.support.interop import require_binary

PHRASE = "Hello, this is the voice bridge interop test. One, two, three."
TAIL_S = 4.8             # silence after the phrase: VAD end of turn plus the whole echo
BIN_S = 0.1

Samples = npt.NDArray[np.float64]


def phrase_wav(folder: Path, rate: int) -> Path:
    """The caller's source: the spoken phrase at ``rate``, padded with silence."""
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    raw = folder / "espeak.wav"
    subprocess.run([espeak, "-w", str(raw), PHRASE], check=True, capture_output=True)
    out = folder / "phrase.wav"
    subprocess.run([sox, str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out),
                    "pad", "0.3", str(TAIL_S)], check=True, capture_output=True)
    return out


def phrase(folder: Path) -> Path:
    """The phrase at 8 kHz (a G.711 caller)."""
    return phrase_wav(folder, 8000)


def config(folder: Path, source: Path, sounds: Path, *, codecs: tuple[str, ...] = ("g711",),
           rate: int = 8000, account: str = "<sip:bs@127.0.0.1>", extra: str = "") -> Path:
    """A baresip configuration folder: codec modules in ``codecs`` order (baresip offers
    them in load order), audio from ``source``, recordings into ``sounds``; ``account`` is
    its account line (before ``;regint=0``), ``extra`` more ``config`` lines."""
    cfg = folder / "baresip"
    cfg.mkdir()
    modules = "\n".join(f"module {name}.so" for name in codecs)
    # No net_interface: baresip then writes the host's first interface into its SDP
    # while it sends from loopback, so its media latches only because it comes from
    # where its SIP came from (the bridge's pre-latch rule; no latch_any needed).
    (cfg / "config").write_text(f"""poll_method epoll
sip_listen 127.0.0.1:{free_udp_port()}
{extra}audio_player aufile,/dev/null
audio_source aufile,{source}
audio_alert aufile,/dev/null
audio_srate {rate}
audio_channels 1
module_path /usr/lib/baresip/modules
{modules}
module aufile.so
module sndfile.so
snd_path {sounds}
module_app account.so
module_app menu.so
""")
    (cfg / "accounts").write_text(f"{account};regint=0\n")
    (cfg / "contacts").write_text("")
    return cfg


@dataclass
class BaresipCall:
    record: dict[str, Any]
    output: str
    sent: Samples
    heard: Samples
    rate: int


async def call(cfg: Path, sounds: Path, uri: str, records: Any,
               timeout_s: float = 40) -> BaresipCall:
    """Dial ``uri`` and wait for the call's record (``records()`` lists the serve
    process's records); returns the record, baresip's output and both recordings."""
    baresip = require_binary("baresip", "softphone interop")
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        baresip, "-f", str(cfg), "-e", f"/dial {uri}", "-t", str(int(timeout_s)),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    record = None
    try:
        async with asyncio.timeout(timeout_s):
            while record is None:
                record = next((r for r in records() if r["caller"] == "bs"
                               and r["started_at"] >= started - 1 and r["ended_at"]), None)
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)          # baresip closes its recordings with the call
    finally:
        output = await stop(proc)
    return BaresipCall(record, output, *_recordings(sounds))


async def stop(proc: asyncio.subprocess.Process) -> str:
    """End baresip (if it still runs) and return its output, without the status ticker."""
    if proc.returncode is None:
        proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)
    if proc.returncode is None:
        proc.kill()
    output = (await proc.communicate())[0].decode(errors="replace")
    return re.sub(r"\[\d+:\d+:\d+\] audio=\S+ \(bit/s\)\s*", "", output)


def _recordings(sounds: Path) -> tuple[Samples, Samples, int]:
    """What baresip sent and heard, and their rate (the codec's)."""
    [enc] = sounds.glob("dump-*-enc.wav")
    [dec] = sounds.glob("dump-*-dec.wav")
    (sent, rate), (heard, heard_rate) = read_wav(enc), read_wav(dec)
    assert rate == heard_rate, (rate, heard_rate)
    return sent, heard, rate


def read_wav(path: Path) -> tuple[Samples, int]:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return data, w.getframerate()


def levels(x: Samples, rate: int = 8000) -> Samples:
    """dBFS of each 100 ms bin."""
    n = int(rate * BIN_S)
    bins = len(x) // n
    rms = np.sqrt(np.mean(x[:bins * n].reshape(bins, n) ** 2, axis=1))
    out: Samples = 20 * np.log10(np.maximum(rms, 1.0) / 32768)
    return out


def envelope_alignment(sent: Samples, heard: Samples, rate: int = 8000
                       ) -> tuple[float, float]:
    """Best normalised correlation of the heard envelope with the sent one delayed by
    0.2–10 s: (correlation, delay in seconds)."""
    a_env, b_env = (10 ** (levels(x, rate) / 20) for x in (sent, heard))
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


def band_energy_db(x: Samples, rate: int, low: float, high: float) -> float:
    """Energy of ``x`` between ``low`` and ``high`` Hz relative to all of it, in dB."""
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = spectrum[(freqs >= low) & (freqs < high)].sum()
    return float(10 * np.log10(max(band, 1e-12) / max(spectrum.sum(), 1e-12)))


def check_echo(sounds: Path, info: str) -> tuple[Samples, Samples]:
    """Assert that baresip heard its phrase echoed (audio both ways); (sent, heard)."""
    sent, heard, rate = _recordings(sounds)
    sent_levels, heard_levels = levels(sent, rate), levels(heard, rate)
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
    corr, delay = envelope_alignment(sent, heard, rate)
    # (A tone or noise scores near 0; the echo scores ~0.9 on an idle machine and stays
    # well above 0.6 on a loaded one, where the phone's playout timing wobbles.)
    assert corr > 0.6 and delay >= phrase_bins * BIN_S, \
        f"heard audio is not the echoed phrase (r={corr:.2f}, delay {delay} s)\n{info}"
    return sent, heard
