"""Voicing a script's ``say`` texts: espeak-ng when installed, otherwise a tone.

Texts are rendered once, when the emulator starts (the session core never waits on a
program), to PCM16LE mono 24 kHz: the session converts them to its output format.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path

from bridge.errors import ConfigError
from bridge.realtime.emulator.audio import PCM16, resample

__all__ = ["render_texts"]

log = logging.getLogger(__name__)


async def _espeak(program: str, text: str, workdir: Path, n: int) -> bytes:
    out = workdir / f"say{n}.wav"
    proc = await asyncio.create_subprocess_exec(
        program, "-w", str(out), "--", text,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise ConfigError(f"espeak-ng failed ({proc.returncode}): "
                          f"{err.decode(errors='replace').strip()[:200]}")
    with wave.open(io.BytesIO(out.read_bytes())) as wav:
        if wav.getsampwidth() != 2:
            raise ConfigError("espeak-ng wrote a WAV that is not 16-bit")
        frames = wav.readframes(wav.getnframes())
        rate = wav.getframerate()
        channels = wav.getnchannels()
    if channels != 1:
        raise ConfigError("espeak-ng wrote a WAV that is not mono")
    return resample(frames, rate, PCM16.rate)


async def render_texts(texts: Iterable[str], mode: str = "auto") -> dict[str, bytes]:
    """Render ``texts`` with espeak-ng (``mode`` "auto"/"espeak"); {} means tones.

    "espeak" insists on the program (:class:`ConfigError` without it); "auto" falls back to
    tones; "tone" never runs it.
    """
    texts = sorted(set(texts))
    if mode == "tone" or not texts:
        return {}
    program = shutil.which("espeak-ng")
    if program is None:
        if mode == "espeak":
            raise ConfigError("the script asks for espeak-ng speech but espeak-ng is not "
                              "installed")
        log.info("espeak-ng not installed: scripted texts are voiced as tones")
        return {}
    with tempfile.TemporaryDirectory(prefix="vb-emulator-") as tmp:
        rendered = await asyncio.gather(*(_espeak(program, t, Path(tmp), i)
                                          for i, t in enumerate(texts)))
    return dict(zip(texts, rendered, strict=True))
