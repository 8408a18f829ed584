"""A trunk that challenges the bridge's session refreshes, against SIPp and a real
``voicebridge serve``.

The bridge's settings file names one trunk, ``pbx``: requests from 127.0.0.1, user
``bridge``, its password in an environment variable, realm ``pbx.test``; the bridge runs
with lab session timers (``session_expires_s`` 6, ``min_se_s`` 3). SIPp plays the PBX:
its INVITE is challenged and let in, it does not support ``timer``, so the bridge is the
refresher and refreshes every 3 s, by UPDATE when the PBX allows it, else by re-INVITE.
The PBX challenges the first refresh; the call must stay up until the PBX hangs up.

SIPp's ``verifyauth`` checks the UPDATE's ``Authorization``; the re-INVITE's
``Proxy-Authorization`` is checked here from a capture of what the bridge sent, with
RFC 2617 computed by hashlib (not the bridge's own digest code).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import LoopbackCapture, ServeProcess, SippRun, free_udp_port, run_sipp
from tests.support import digest_check
from tests.support.pbx_trunk import PASSWORD, pbx_serve

SIPP_DIR = Path(__file__).parent / "sipp"
CHALLENGES = "voicebridge_sip_challenges_total"
TIMER = "voicebridge_sip_session_timer_total"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with pbx_serve(tmp_path_factory, "serve-auth-refresh",
                   env={"VOICEBRIDGE_SIP_SESSION_EXPIRES_S": "6",
                        "VOICEBRIDGE_SIP_MIN_SE_S": "3"}) as bridge:
        yield bridge


async def _run(name: str, serve: ServeProcess, sip_port: int, tmp_path: Path,
               prefix: str, transport: str = "u1") -> SippRun:
    return await run_sipp(SIPP_DIR / name, serve.sip_port, workdir=tmp_path,
                          local_port=sip_port, media_port=free_udp_port(pair=True),
                          call_id_prefix=prefix,
                          args=("-s", "echo", "-au", "bridge", "-ap", PASSWORD,
                                "-t", transport))


def _ok(run: SippRun, serve: ServeProcess) -> None:
    assert run.returncode == 0 and run.failed == 0, f"{run.explain()}\n{serve.log_tail()}"


def _verify(message: str, header: str, method: str) -> dict[str, str]:
    return digest_check.verify_md5(message, header, method, PASSWORD)


_cseq = digest_check.cseq
_credentials = digest_check.credentials


async def test_refreshing_update_challenged_with_401_is_answered_and_the_call_stays_up(
        serve: ServeProcess, tmp_path: Path) -> None:
    """The PBX answers the bridge's first refreshing UPDATE 401; SIPp's verifyauth checks
    the UPDATE sent again (one CSeq up) and the next refresh, which carries credentials
    at once (nc 2). The call lasts until the PBX's BYE."""
    sip_port = free_udp_port()
    prefix = f"auth-update-{uuid.uuid4().hex[:8]}"
    answered = serve.metric(CHALLENGES, 'method="UPDATE",outcome="answered"')
    failed = serve.metric(TIMER, 'event="refresh_failed"')
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await _run("auth_refresh_update.xml", serve, sip_port, tmp_path, prefix)
    _ok(run, serve)
    updates = [t for _, t in capture.sip(dst_port=sip_port) if t.startswith("UPDATE ")]
    assert len(updates) == 3, updates
    assert "Authorization" not in updates[0]
    assert _cseq(updates[1])[0] == _cseq(updates[0])[0] + 1
    first = _verify(updates[1], "Authorization", "UPDATE")
    again = _verify(updates[2], "Authorization", "UPDATE")
    assert (first["nc"], again["nc"], again["nonce"]) == ("00000001", "00000002",
                                                          first["nonce"])
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record
    assert serve.metric(CHALLENGES, 'method="UPDATE",outcome="answered"') == answered + 1
    assert serve.metric(TIMER, 'event="refresh_failed"') == failed


async def test_refreshing_reinvite_challenged_with_407_is_acked_answered_and_accepted(
        serve: ServeProcess, tmp_path: Path) -> None:
    """The PBX allows no UPDATE: the bridge refreshes by re-INVITE. The first is answered
    407: the bridge ACKs it (same branch and CSeq number) and sends a new re-INVITE one
    CSeq up with a Proxy-Authorization checked here; the PBX accepts it, and the next
    refresh carries credentials at once. The call lasts until the PBX's BYE."""
    sip_port = free_udp_port()
    prefix = f"auth-reinvite-{uuid.uuid4().hex[:8]}"
    answered = serve.metric(CHALLENGES, 'method="INVITE",outcome="answered"')
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await _run("auth_refresh_reinvite.xml", serve, sip_port, tmp_path, prefix)
    _ok(run, serve)
    sent = [t for _, t in capture.sip(dst_port=sip_port)]
    invites = [t for t in sent if t.startswith("INVITE ")]
    acks = [t for t in sent if t.startswith("ACK ")]
    assert len(invites) == 3 and len(acks) == 3, sent
    assert "Proxy-Authorization" not in invites[0]
    challenged = _cseq(invites[0])[0]
    assert _cseq(acks[0]) == (challenged, "ACK")            # the 407's ACK (§17.1.1.3)
    branch = re.search(r"branch=([^;\s]+)", invites[0])
    assert branch is not None and branch.group(1) in acks[0]
    assert _cseq(invites[1])[0] == challenged + 1
    first = _verify(invites[1], "Proxy-Authorization", "INVITE")
    again = _verify(invites[2], "Proxy-Authorization", "INVITE")
    assert (first["nc"], again["nc"]) == ("00000001", "00000002")
    assert _cseq(acks[1]) == (challenged + 1, "ACK")        # the 200's ACK
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record
    assert serve.metric(CHALLENGES, 'method="INVITE",outcome="answered"') == answered + 1


async def test_refreshing_reinvite_challenged_over_tcp(serve: ServeProcess,
                                                       tmp_path: Path) -> None:
    """The same over TCP: the 407's ACK, the new re-INVITE and its ACK go on the PBX's
    connection (the scenario waits at most 5 s for each; its regexps demand the
    Proxy-Authorization); the call lasts until the PBX's BYE."""
    prefix = f"auth-reinvite-tcp-{uuid.uuid4().hex[:8]}"
    answered = serve.metric(CHALLENGES, 'method="INVITE",outcome="answered"')
    run = await _run("auth_refresh_reinvite.xml", serve, free_udp_port(), tmp_path, prefix,
                     "t1")
    _ok(run, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record
    assert serve.metric(CHALLENGES, 'method="INVITE",outcome="answered"') == answered + 1
