"""Digest authentication with a trunk, against SIPp and a real ``voicebridge serve``.

The bridge's settings file names one trunk, ``pbx``: requests from 127.0.0.1, user
``bridge``, its password in an environment variable, realm ``pbx.test``, dialplan
``desk`` (key 1 transfers, # hangs up). SIPp plays the PBX from 127.0.0.1: its INVITEs
are challenged, and it challenges the bridge's REFER (407) and BYE (401) in turn. SIPp
from 127.0.0.2 is outside the trunk and is let in as before.

SIPp's ``verifyauth`` checks an ``Authorization`` header only, so the
``Proxy-Authorization`` of the REFER and of the BYE after it are checked here from a
capture of what the bridge sent, with RFC 2617 computed by hashlib (not the bridge's
own digest code).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import (
    LoopbackCapture,
    Scenario,
    ServeProcess,
    SippRun,
    free_udp_port,
    run_sipp,
)
from tests.support import digest_check
from tests.support.pbx_trunk import PASSWORD, pbx_serve

HERE = Path(__file__).parent
SIPP_DIR = HERE / "sipp"
REJECTED = "voicebridge_calls_rejected_total"
CHALLENGES = "voicebridge_sip_challenges_total"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # The trunk's calls go to the "desk" dialplan whatever they dial.
    with pbx_serve(tmp_path_factory, "serve-auth", extra='dialplan = "desk"\n') as bridge:
        yield bridge


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_udp_port(), free_udp_port(pair=True)


def _ok(run: SippRun, serve: ServeProcess) -> None:
    assert run.returncode == 0 and run.failed == 0, f"{run.explain()}\n{serve.log_tail()}"


def _verify(message: str, header: str, method: str) -> dict[str, str]:
    return digest_check.verify_md5(message, header, method, PASSWORD)


def _cseq(message: str) -> int:
    return digest_check.cseq(message)[0]


async def test_refer_challenged_with_407_is_answered_and_succeeds(
        serve: ServeProcess, ports: tuple[int, int], tmp_path: Path) -> None:
    """The trunk's INVITE is challenged and let in with credentials, onto the trunk's
    dialplan; its "1" makes the bridge REFER; the 407 is answered by the same REFER one
    CSeq up with Proxy-Authorization (nc 1), the transfer succeeds, and the BYE after it
    reuses the nonce with nc 2."""
    sip_port, media_port = ports
    prefix = f"auth-refer-{uuid.uuid4().hex[:8]}"
    required = serve.metric(REJECTED, 'reason="sip_auth_required"')
    answered = serve.metric(CHALLENGES, 'method="REFER",outcome="answered"')
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await run_sipp(SIPP_DIR / "auth_refer.xml", serve.sip_port, workdir=tmp_path,
                             local_port=sip_port, media_port=media_port,
                             call_id_prefix=prefix,
                             args=("-s", "agent", "-au", "bridge", "-ap", PASSWORD))
    _ok(run, serve)
    sent = [text for _, text in capture.sip()]
    refers = [t for t in sent if t.startswith("REFER ")]
    assert len(refers) == 2, sent
    assert "Proxy-Authorization" not in refers[0]
    creds = _verify(refers[1], "Proxy-Authorization", "REFER")
    assert (creds["username"], creds["realm"], creds["nc"]) == ("bridge", "pbx.test",
                                                                 "00000001")
    assert _cseq(refers[1]) == _cseq(refers[0]) + 1
    assert "Refer-To: <sip:desk@127.0.0.1:5099>" in refers[1]
    (bye,) = [t for t in sent if t.startswith("BYE ")]
    again = _verify(bye, "Proxy-Authorization", "BYE")
    assert again["nonce"] == creds["nonce"] and again["nc"] == "00000002"
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["dialplan"] == "desk", record            # the trunk's, not by number
    assert record["end_reason"] == "transferred" and record["transferred_to"] == "desk"
    assert serve.metric(REJECTED, 'reason="sip_auth_required"') >= required + 1
    assert serve.metric(CHALLENGES, 'method="REFER",outcome="answered"') == answered + 1


async def test_bye_challenged_with_401_is_answered(serve: ServeProcess, ports: tuple[int, int],
                                                   tmp_path: Path) -> None:
    """"#" hangs up; the trunk challenges the BYE with 401 and SIPp's verifyauth checks
    the Authorization of the BYE sent again (a wrong one fails the scenario)."""
    sip_port, media_port = ports
    prefix = f"auth-bye-{uuid.uuid4().hex[:8]}"
    answered = serve.metric(CHALLENGES, 'method="BYE",outcome="answered"')
    run = await run_sipp(SIPP_DIR / "auth_bye.xml", serve.sip_port, workdir=tmp_path,
                         local_port=sip_port, media_port=media_port, call_id_prefix=prefix,
                         args=("-s", "agent", "-au", "bridge", "-ap", PASSWORD))
    _ok(run, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_dtmf_hangup" and record["dialplan"] == "desk"
    assert serve.metric(CHALLENGES, 'method="BYE",outcome="answered"') == answered + 1


async def test_wrong_password_is_refused_and_counted(serve: ServeProcess,
                                                     ports: tuple[int, int],
                                                     tmp_path: Path) -> None:
    sip_port, media_port = ports
    prefix = f"auth-wrong-{uuid.uuid4().hex[:8]}"
    failed = serve.metric(REJECTED, 'reason="sip_auth_failed"')
    run = await run_sipp(SIPP_DIR / "auth_wrong.xml", serve.sip_port, workdir=tmp_path,
                         local_port=sip_port, media_port=media_port, call_id_prefix=prefix,
                         args=("-s", "agent", "-au", "bridge", "-ap", "not-the-password"))
    _ok(run, serve)                                    # the scenario expects the 403
    assert serve.metric(REJECTED, 'reason="sip_auth_failed"') == failed + 1
    assert not [r for r in serve.records() if r["leg_call_id"].startswith(prefix)]


async def test_a_caller_outside_the_trunk_is_not_challenged(
        serve: ServeProcess, ports: tuple[int, int], tmp_path: Path) -> None:
    """SIPp from 127.0.0.2: no challenge, the call is answered and goes to the dialplan
    the number matches (the trunk's dialplan is only for the trunk's calls)."""
    sip_port, media_port = ports
    prefix = f"auth-other-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("outside", codecs=("pcmu",)).invite(answer=r"m=audio")
                .pause(500).bye().write(tmp_path))
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                             media_port=media_port, call_id_prefix=prefix,
                             args=("-i", "127.0.0.2", "-mi", "127.0.0.2"))
    _ok(run, serve)
    replies = [text.split("\r\n", 1)[0] for _, text in capture.sip()]
    assert not [r for r in replies if " 401 " in r or " 407 " in r], replies
    record = await serve.wait_record(f"{prefix}-1@127.0.0.2")
    assert record["dialplan"] == "echo" and record["end_reason"] == "caller_hangup", record
