"""Write ulaw.txt and alaw.txt from the segment definitions of ITU-T G.711 (11/1988).

Run from this folder: ``python3 derive.py``. Plain Python, nothing from the bridge, so the
tables are an independent reference for the code under test.

Both laws are 8 segments per polarity, 16 equal quantisation intervals per segment; the
decoder output of an interval is its midpoint (Tables 1a and 2a), except µ-law's first
interval, which is [0, 1) with output 0.

µ-law (Table 2a, scale 0..8159): segment s starts at decision value 2^(s+5) - 33 and has
steps of 2^(s+1) (segment 0 has a half-width first interval at 0). The character signal is
sent with all bits inverted: +0 is 0xFF, the largest positive value 0x80, -0 is 0x7F.

A-law (Table 1a, scale 0..4096): segment 0 is [0, 32) and segment 1 [32, 64), both with
steps of 2; segment s >= 2 is [2^(s+4), 2^(s+5)) with steps of 2^s. Bit 1 (the sign) is 1
for positive, and the even bits are inverted on the line (XOR 0x55): +1 is 0xD5.

PCM16 values are the standard's values left-justified in 16 bits: µ-law's 14-bit scale
times 4, A-law's 13-bit scale times 8.
"""

from __future__ import annotations

from pathlib import Path

HEADER = """\
# ITU-T G.711 {law} decoder table, derived by derive.py from the standard's segment
# definitions ({table}). One line per code byte as sent on the line:
#   code  sign  segment  step  decision  value  pcm16
# decision: lower decision value of the magnitude interval (the standard's scale, 0..{top})
# value:    decoder output value in the standard's scale (signed)
# pcm16:    the same left-justified in 16 bits (value * {scale})
"""


def ulaw_interval(seg: int, step: int) -> tuple[int, int]:
    """(lower decision value, output value) of µ-law interval ``step`` of ``seg``."""
    base = 2 ** (seg + 5) - 33
    width = 2 ** (seg + 1)
    lower = base + step * width
    output = lower + width // 2
    return max(lower, 0), output


def alaw_interval(seg: int, step: int) -> tuple[int, int]:
    """(lower decision value, output value) of A-law interval ``step`` of ``seg``."""
    base = 0 if seg == 0 else 2 ** (seg + 4)
    width = 2 if seg < 2 else 2 ** seg
    lower = base + step * width
    return lower, lower + width // 2


def rows(law: str) -> list[tuple[int, int, int, int, int, int, int]]:
    out = []
    for sign in (1, -1):
        for seg in range(8):
            for step in range(16):
                n = seg * 16 + step
                if law == "ulaw":
                    lower, value = ulaw_interval(seg, step)
                    code = (0x80 | (127 - n)) if sign > 0 else (127 - n)
                    scale = 4
                else:
                    lower, value = alaw_interval(seg, step)
                    code = ((0x80 | n) if sign > 0 else n) ^ 0x55
                    scale = 8
                out.append((code, sign, seg, step, lower, sign * value, sign * value * scale))
    return sorted(out)


def write(law: str, table: str, top: int, scale: int) -> None:
    lines = [HEADER.format(law="µ-law" if law == "ulaw" else "A-law", table=table, top=top,
                           scale=scale)]
    for code, sign, seg, step, lower, value, pcm in rows(law):
        lines.append(f"0x{code:02X} {'+' if sign > 0 else '-'} {seg} {step:2d} {lower:4d} "
                     f"{value:5d} {pcm:6d}\n")
    Path(__file__).with_name(f"{law}.txt").write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    write("ulaw", "Table 2a", 8159, 4)
    write("alaw", "Table 1a", 4096, 8)
