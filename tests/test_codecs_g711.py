"""G.711 against the ITU-T tables in tests/vectors/g711 (derived from the standard's
segment definitions by derive.py there, independently of the code under test)."""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codecs import g711

VECTORS = Path(__file__).parent / "vectors" / "g711"
ALL_INT16 = np.arange(-32768, 32768, dtype="<i2")


class Row(NamedTuple):
    code: int
    negative: bool
    magnitude_index: int    # segment * 16 + step
    decision: int           # lower decision value of the interval (standard's scale)
    pcm16: int


def load(law: str) -> list[Row]:
    rows = []
    for line in (VECTORS / f"{law}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        code, sign, seg, step, decision, _value, pcm = line.split()
        rows.append(Row(int(code, 16), sign == "-", int(seg) * 16 + int(step), int(decision),
                        int(pcm)))
    return rows


def test_vector_files_are_complete_and_match_published_anchors() -> None:
    # A few values printed in G.711 / every G.711 implementation, typed in by hand, so a
    # slip in derive.py cannot make the tables and the code agree on something wrong.
    anchors = {
        "ulaw": {0xFF: 0, 0x7F: 0, 0x80: 32124, 0x00: -32124, 0xFE: 8, 0xEF: 132, 0xDF: 396},
        "alaw": {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256, 0xC5: 264, 0xF5: 528},
    }
    for law, expected in anchors.items():
        rows = load(law)
        assert sorted(r.code for r in rows) == list(range(256))
        by_code = {r.code: r.pcm16 for r in rows}
        for code, value in expected.items():
            assert by_code[code] == value, (law, hex(code))


@pytest.mark.parametrize(("law", "decode"), [("ulaw", g711.ulaw_decode),
                                             ("alaw", g711.alaw_decode)])
def test_all_256_codes_decode_to_the_itu_values(
        law: str, decode: Callable[[bytes], bytes]) -> None:
    expected = np.array([r.pcm16 for r in load(law)], dtype="<i2")
    assert np.array_equal(np.frombuffer(decode(bytes(range(256))), dtype="<i2"), expected)
    codec = "pcmu" if law == "ulaw" else "pcma"
    assert g711.decode(codec, bytes(range(256))) == expected.tobytes()


def reference_encode(law: str, x: np.ndarray) -> np.ndarray:
    """Quantise int16 ``x`` on the decision values of the vector file.

    The 16-bit sample is floored to the standard's 14-bit (µ-law) / 13-bit (A-law) linear
    code, as the reference implementation shared by audioop and most stacks does.
    """
    rows = load(law)
    shift = 2 if law == "ulaw" else 3
    v = x.astype(np.int32) >> shift
    negative = v < 0
    # A-law's negative side is the one's complement of the positive one.
    magnitude = np.where(negative, -v if law == "ulaw" else -v - 1, v)
    positive_rows = sorted((r for r in rows if not r.negative and not
                            (law == "ulaw" and r.code == 0x7F)), key=lambda r: r.magnitude_index)
    decisions = np.array([r.decision for r in positive_rows])
    index = np.searchsorted(decisions, magnitude, side="right") - 1
    code_of = {(r.negative, r.magnitude_index): r.code for r in rows}
    table = np.array([[code_of[(neg, i)] for i in range(128)] for neg in (False, True)])
    codes: np.ndarray = table[negative.astype(int), index].astype(np.uint8)
    return codes


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encoding_all_65536_inputs_matches_the_itu_decision_values(law: str) -> None:
    codec = "pcmu" if law == "ulaw" else "pcma"
    expected = reference_encode(law, ALL_INT16)
    # Whole buffer: the 64k table path.
    whole = np.frombuffer(g711.encode(codec, ALL_INT16.tobytes()), dtype=np.uint8)
    assert np.array_equal(whole, expected)
    # Frame-sized pieces: the audioop path.
    step = 160
    assert step < g711.TABLE_MIN_SAMPLES
    pieces = b"".join(g711.encode(codec, ALL_INT16[i:i + step].tobytes())
                      for i in range(0, len(ALL_INT16), step))
    assert np.array_equal(np.frombuffer(pieces, dtype=np.uint8), expected)


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="stdlib audioop is the 3.11/3.12 oracle")
@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_encoding_matches_stdlib_audioop(codec: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = importlib.import_module("audioop")
    oracle = audioop.lin2ulaw if codec == "pcmu" else audioop.lin2alaw
    assert g711.encode(codec, ALL_INT16.tobytes()) == oracle(ALL_INT16.tobytes(), 2)


@settings(deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["pcmu", "pcma"]))
def test_any_length_round_trips_through_decode(data: bytes, codec: str) -> None:
    # Every code decodes to a value that encodes back to the same code, at any length,
    # except µ-law's negative zero, which decodes to 0 and re-encodes as positive zero.
    pcm = g711.decode(codec, data)
    assert len(pcm) == 2 * len(data)
    again = g711.encode(codec, pcm)
    expected = data.replace(b"\x7f", b"\xff") if codec == "pcmu" else data
    assert again == expected


def test_odd_byte_is_ignored_and_unknown_codec_is_refused() -> None:
    assert g711.ulaw_encode(b"\x00\x00\x01") == b"\xff"
    assert g711.alaw_encode(b"\x01") == b""
    assert g711.encode("PCMU", b"\x00\x00") == b"\xff"
    with pytest.raises(ValueError, match="unknown G.711 codec"):
        g711.encode("g722", b"")


def test_silence_and_transcode_between_the_laws() -> None:
    assert g711.silence("pcmu", 3) == b"\xff\xff\xff"
    assert g711.silence("PCMA", 2) == b"\xd5\xd5"
    assert g711.decode("pcmu", g711.silence("pcmu", 4)) == bytes(8)    # zero samples
    quiet = memoryview(g711.decode("pcma", g711.silence("pcma", 4))).cast("h")
    assert max(abs(x) for x in quiet) <= 8                              # A-law's smallest
    ulaw = bytes(range(256))
    assert g711.transcode("pcmu", "pcmu", ulaw) is ulaw                 # the identity
    alaw = g711.transcode("pcmu", "pcma", ulaw)
    assert alaw == g711.alaw_encode(g711.ulaw_decode(ulaw)) and len(alaw) == 256
    assert g711.transcode("pcma", "pcmu", alaw) == g711.ulaw_encode(g711.alaw_decode(alaw))
