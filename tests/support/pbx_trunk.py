"""A ``voicebridge serve`` behind one trunk that authenticates both ways, as a PBX does:
the settings of the SIPp digest tests (SIPp plays the PBX at 127.0.0.1)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bridge.bench.sip import LoopbackCapture, ServeProcess
from tests.support.interop import require, require_binary

DIALPLANS = Path(__file__).parent.parent / "data" / "interop" / "auth_dialplans"
PASSWORD = "trunk-secret"
#: The trunk: requests from 127.0.0.1, user ``bridge``, realm ``pbx.test``.
TRUNK = """
[[sip.trunks]]
name = "pbx"
match = ["127.0.0.1/32"]
auth_user = "bridge"
password_env = "VB_TEST_TRUNK_PASSWORD"
realm = "pbx.test"
# SIPp 3.6 answers the first challenge whatever its algorithm, and knows only MD5.
digest_algorithms = ["MD5", "SHA-256"]
"""


@contextlib.contextmanager
def pbx_serve(factory: pytest.TempPathFactory, name: str, *, extra: str = "",
              env: Mapping[str, str] | None = None) -> Iterator[ServeProcess]:
    """The serve process for the trunk (plus ``extra`` trunk keys), with SIPp and a
    loopback capture available (skipped, or failed under REQUIRE_INTEROP=1, without)."""
    require_binary("sipp", "SIP interop")
    why = LoopbackCapture.unavailable()
    require(why is None, f"loopback capture: {why}")
    workdir = factory.mktemp(name)
    (workdir / "voicebridge.toml").write_text(TRUNK + extra)
    bridge = ServeProcess(workdir, dialplans=DIALPLANS,
                          env={"VB_TEST_TRUNK_PASSWORD": PASSWORD,
                               "VOICEBRIDGE_SIP_RING_MS": "0", **(env or {})})
    with bridge:
        yield bridge
