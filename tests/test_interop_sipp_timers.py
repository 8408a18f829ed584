"""Session timers (RFC 4028), PRACK (RFC 3262) and Require against SIPp and a real
``voicebridge serve`` process.

The bridge runs with lab values, ``session_expires_s`` 6 and ``min_se_s`` 3, so that a
session interval is seconds long: a caller that names itself the refresher with
``Session-Expires: 6;refresher=uac`` gets the bridge's BYE 6 - min(32, 6/3) = 4 s after
its last refresh. It rings 300 ms before answering, so a 180 goes out before the 200 (the
provisional that a caller requiring 100rel gets reliably).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import LoopbackCapture, ServeProcess, SippRun, free_udp_port, run_sipp
from tests.support.interop import require, require_binary

SIPP_DIR = Path(__file__).parent / "sipp"
DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
#: The bridge's BYE comes this long after the last refresh (Session-Expires 6 s).
BYE_AFTER_S = 6 - min(32, 6 / 3)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_binary("sipp", "SIP interop")
    why = LoopbackCapture.unavailable()
    require(why is None, f"loopback capture: {why}")
    bridge = ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS,
                          env={"VOICEBRIDGE_SIP_RING_MS": "300",
                               "VOICEBRIDGE_SIP_SESSION_EXPIRES_S": "6",
                               "VOICEBRIDGE_SIP_MIN_SE_S": "3"})
    with bridge:
        yield bridge


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_udp_port(), free_udp_port(pair=True)


async def _run(name: str, serve: ServeProcess, ports: tuple[int, int], tmp_path: Path,
               prefix: str | None = None, transport: str = "udp") -> SippRun:
    sip_port, media_port = ports
    scenario = tmp_path / name
    shutil.copy(SIPP_DIR / name, scenario)
    return await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                          media_port=media_port, call_id_prefix=prefix,
                          args=("-s", "echo", "-t", "t1" if transport == "tcp" else "u1"))


def _ok(run: SippRun, serve: ServeProcess) -> None:
    assert run.returncode == 0 and run.failed == 0, f"{run.explain()}\n{serve.log_tail()}"


def _refreshed(serve: ServeProcess) -> float:
    return serve.metric("voicebridge_sip_session_timer_total", 'event="refreshed"')


@pytest.mark.parametrize("how", ["update", "reinvite"])
async def test_refreshes_keep_the_call_up(serve: ServeProcess, ports: tuple[int, int],
                                          tmp_path: Path, how: str) -> None:
    """The caller refreshes every 2 s (by UPDATE, or by re-INVITE) for 16 s: every 2xx
    carries ``Session-Expires: 6;refresher=uac`` (the INVITE's also ``Require: timer``),
    and the bridge never hangs up although, without the refreshes, it would have sent
    its BYE 4 s after the answer. The caller's BYE ends the call."""
    prefix = f"timer-{how}-{uuid.uuid4().hex[:8]}"
    before = _refreshed(serve)
    run = await _run(f"timer_{how}.xml", serve, ports, tmp_path, prefix)
    _ok(run, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup" and record["end_detail"] == "bye", record
    assert _refreshed(serve) - before == 8


async def test_a_caller_that_stops_refreshing_gets_our_bye_in_time(
        serve: ServeProcess, ports: tuple[int, int], tmp_path: Path) -> None:
    """One UPDATE refresh, then none: the bridge sends its BYE 4 s after the 200 to that
    refresh (RFC 4028 §10: Session-Expires minus min(32 s, a third of it)), not before
    and not much later; the call's record says why it ended."""
    prefix = f"timer-stop-{uuid.uuid4().hex[:8]}"
    before = serve.metric("voicebridge_sip_session_timer_total", 'event="expired"')
    async with LoopbackCapture(src_ports=(ports[0],), dst_ports=(ports[0],)) as capture:
        run = await _run("timer_stop.xml", serve, ports, tmp_path, prefix)
    _ok(run, serve)
    sent = capture.sip(dst_port=ports[0])
    refreshed = next(at for at, text in sent
                     if text.startswith("SIP/2.0 200") and "CSeq: 2 UPDATE" in text)
    bye = next(at for at, text in sent if text.startswith("BYE "))
    assert BYE_AFTER_S - 0.2 <= bye - refreshed <= BYE_AFTER_S + 1.0, \
        f"BYE {bye - refreshed:.2f} s after the refresh\n{serve.log_tail()}"
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert (record["end_reason"], record["end_detail"]) == \
        ("session_expired", "session-expired"), record
    assert serve.metric("voicebridge_sip_session_timer_total",
                        'event="expired"') - before == 1


@pytest.mark.parametrize("how", ["update", "reinvite"])
async def test_the_bridge_refreshes_a_caller_without_timers(
        serve: ServeProcess, ports: tuple[int, int], tmp_path: Path, how: str) -> None:
    """A caller that does not support ``timer``: the bridge is the refresher
    (``Session-Expires: 6;refresher=uas`` in its 200) and refreshes every 3 s, half the
    interval, by UPDATE when the caller's Allow has it, else by re-INVITE (ACKed); SIPp
    answers three refreshes and hangs up."""
    sip_port = ports[0]
    prefix = f"timer-uas-{how}-{uuid.uuid4().hex[:8]}"
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await _run(f"timer_uas_{how}.xml", serve, ports, tmp_path, prefix)
    _ok(run, serve)
    method = "UPDATE" if how == "update" else "INVITE"
    sent = capture.sip(dst_port=sip_port)
    answered = next(at for at, text in sent
                    if text.startswith("SIP/2.0 200") and "CSeq: 1 INVITE" in text)
    refreshes = [at for at, text in sent if text.startswith(f"{method} ")]
    gaps = [b - a for a, b in zip([answered, *refreshes], refreshes, strict=False)]
    assert len(refreshes) == 3 and all(2.9 <= gap <= 3.8 for gap in gaps), \
        f"{method} {gaps}\n{serve.log_tail()}"
    if how == "reinvite":
        assert sum(text.startswith("ACK ") for _, text in sent) == 3
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record


async def test_the_bridge_refreshes_by_reinvite_over_tcp(
        serve: ServeProcess, ports: tuple[int, int], tmp_path: Path) -> None:
    """The same over TCP: our re-INVITEs and their ACKs go on the caller's connection
    (SIPp waits at most 10 s for each of the three)."""
    prefix = f"timer-uas-tcp-{uuid.uuid4().hex[:8]}"
    before = serve.metric("voicebridge_sip_session_timer_total", 'event="refresh_sent"')
    run = await _run("timer_uas_reinvite.xml", serve, ports, tmp_path, prefix, "tcp")
    _ok(run, serve)
    assert serve.metric("voicebridge_sip_session_timer_total",
                        'event="refresh_sent"') - before == 3
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record


async def test_required_100rel_gets_a_reliable_180_and_the_200_waits_for_the_prack(
        serve: ServeProcess, ports: tuple[int, int], tmp_path: Path) -> None:
    """``Require: 100rel``: the 180 carries ``Require: 100rel`` and an RSeq, the PRACK
    naming it gets 200, and the INVITE's 200 comes only after that PRACK."""
    sip_port = ports[0]
    async with LoopbackCapture(src_ports=(sip_port,), dst_ports=(sip_port,)) as capture:
        run = await _run("prack.xml", serve, ports, tmp_path)
    _ok(run, serve)
    wire = [(at, text.splitlines()[0]) for at, text in capture.sip()]
    prack = next(at for at, line in wire if line.startswith("PRACK "))
    ok = next(at for at, text in capture.sip(dst_port=sip_port)
              if text.startswith("SIP/2.0 200") and "CSeq: 1 INVITE" in text)
    assert ok > prack, wire


async def test_a_required_extension_we_lack_is_420(serve: ServeProcess,
                                                   ports: tuple[int, int],
                                                   tmp_path: Path) -> None:
    """``Require: foo``: 420 Bad Extension with ``Unsupported: foo`` (checked by the
    scenario), counted as a refused call, and no call starts."""
    before = serve.metric("voicebridge_calls_rejected_total", 'reason="sip_bad_extension"')
    run = await _run("require_unsupported.xml", serve, ports, tmp_path)
    _ok(run, serve)
    assert serve.metric("voicebridge_calls_rejected_total",
                        'reason="sip_bad_extension"') - before == 1
