"""Skip an interop test whose program is missing, or fail it under ``REQUIRE_INTEROP=1``.

Interop tests need real programs (SIPp, baresip, Chromium, espeak-ng, sox). Run by hand
without them, they skip with the reason; with ``REQUIRE_INTEROP=1`` (as ``.ci/run`` sets)
a missing program is a failure, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_INTEROP = os.environ.get("REQUIRE_INTEROP", "") not in ("", "0")


def require_binary(name: str, why: str = "") -> str:
    """Return the path of program ``name``, or skip (fail under REQUIRE_INTEROP=1)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed" + (f" ({why})" if why else "")
        if REQUIRE_INTEROP:
            pytest.fail(f"REQUIRE_INTEROP=1 but {reason}")
        pytest.skip(reason)
    return path


def require(condition: bool, reason: str) -> None:
    """Skip (or fail under REQUIRE_INTEROP=1) unless ``condition`` holds."""
    if not condition:
        if REQUIRE_INTEROP:
            pytest.fail(f"REQUIRE_INTEROP=1 but {reason}")
        pytest.skip(reason)
