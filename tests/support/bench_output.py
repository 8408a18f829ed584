"""Reading the figures a ``voicebridge bench`` run prints."""

from __future__ import annotations

import re


def figure(out: str, pattern: str) -> float:
    match = re.search(pattern, out)
    assert match, f"no {pattern!r} in:\n{out}"
    return float(match.group(1))
