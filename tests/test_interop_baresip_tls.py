"""Interop over TLS: baresip calls a real ``voicebridge serve`` that speaks SIP over TLS only.

The bridge listens on TLS alone (``transports = ["tls"]``, a certificate from
``voicebridge dev-cert``), so the call can only be set up over TLS; baresip's account uses
``;transport=tls`` and trusts the development CA. The audio must go both ways (the caller
hears its own phrase echoed, judged by envelope correlation), the record must be complete,
and the bridge must have accepted the caller's TLS handshake (no handshake failure).
With client certificates required, baresip without one is refused in the handshake and
baresip with one the bridge's CA signed gets its call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import ServeProcess
from bridge.devcert import issue, make_ca, write_dev_cert, write_private
from tests.support import baresip as phone
from tests.support.interop import require_binary
from tests.support.waiting import until

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_dev_cert(tmp_path_factory.mktemp("certs"), ("127.0.0.1", "localhost"))


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path, Path]
          ) -> Iterator[ServeProcess]:
    require_binary("baresip", "softphone interop")
    _ca, cert, key = certs
    env = {"VOICEBRIDGE_SIP_TRANSPORTS": "tls", "VOICEBRIDGE_SIP_TLS_PORT": "0",
           "VOICEBRIDGE_SIP_TLS_CERT": str(cert), "VOICEBRIDGE_SIP_TLS_KEY": str(key)}
    with ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS,
                      env=env) as bridge:
        yield bridge


def tls_port(serve: ServeProcess) -> int:
    found = re.search(r"SIP over TLS:\s+sip:agent@[^:\s]+:(\d+);transport=tls",
                      "\n".join(serve.banner))
    assert found is not None, serve.banner
    return int(found.group(1))


async def test_baresip_call_over_tls_has_audio_both_ways(
        serve: ServeProcess, certs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    require_binary("baresip", "softphone interop")
    ca = certs[0]
    port = tls_port(serve)
    assert port == serve.sip_port        # TLS is the only transport: nothing else listens
    source = phone.phrase(tmp_path)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    cfg = phone.config(tmp_path, source, sounds, account="<sip:bs@127.0.0.1;transport=tls>",
                       extra=f"sip_cafile {ca}\n")
    call = await phone.call(cfg, sounds, f"sip:echo@127.0.0.1:{port}", serve.records)
    record, output = call.record, call.output
    info = f"--- baresip ---\n{output[-2500:]}\n{serve.log_tail()}"
    assert "Call established" in output, info
    sent, _heard = phone.check_echo(sounds, info)

    assert record["source"] == "sip" and record["called"] == "echo", record
    assert record["end_reason"] == "caller_hangup", record
    assert record["errors"] == [] and record["fallback"] is None, record
    assert record["ended_at"] - record["started_at"] >= (len(sent) / 8000) - 1.0
    agent = [e for e in record["transcript"] if e["role"] == "agent"]
    assert agent and "echo" in agent[0]["text"], record["transcript"]
    failed = sum(serve.metric("voicebridge_sip_tls_handshake_failed_total",
                              f'reason="{reason}",side="server"')
                 for reason in ("protocol", "certificate", "timeout", "closed"))
    assert failed == 0, info


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Path]]:
    """A serve that requires client certificates, and a client certificate for baresip
    (certificate and key in one PEM file, as its ``sip_certificate`` takes them)."""
    require_binary("baresip", "softphone interop")
    folder = tmp_path_factory.mktemp("mutual")
    ca = make_ca()
    server, client = issue(ca, ("127.0.0.1",)), issue(ca, ("bs.example.test",), client=True)
    (folder / "ca.pem").write_bytes(ca.cert_pem())
    (folder / "cert.pem").write_bytes(server.cert_pem())
    write_private(folder / "key.pem", server.key_pem())
    write_private(folder / "client.pem", client.cert_pem() + client.key_pem())
    env = {"VOICEBRIDGE_SIP_TRANSPORTS": "tls", "VOICEBRIDGE_SIP_TLS_PORT": "0",
           "VOICEBRIDGE_SIP_TLS_CERT": str(folder / "cert.pem"),
           "VOICEBRIDGE_SIP_TLS_KEY": str(folder / "key.pem"),
           "VOICEBRIDGE_SIP_TLS_CA": str(folder / "ca.pem"),
           "VOICEBRIDGE_SIP_TLS_VERIFY_CLIENT": "true"}
    with ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS,
                      env=env) as bridge:
        yield bridge, folder


async def _dial(serve: ServeProcess, cfg: Path, done: Callable[[], bool]) -> str:
    baresip = require_binary("baresip", "softphone interop")
    proc = await asyncio.create_subprocess_exec(
        baresip, "-f", str(cfg), "-e", f"/dial sip:echo@127.0.0.1:{tls_port(serve)}",
        "-t", "30", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        await until(done, 30, poll_s=0.2)
    finally:
        output = await phone.stop(proc)
    return output


async def test_baresip_needs_a_client_certificate_when_the_bridge_requires_one(
        mutual: tuple[ServeProcess, Path], tmp_path: Path) -> None:
    serve, folder = mutual
    source = phone.phrase(tmp_path)
    refused = 'reason="certificate",side="server"'
    metric = "voicebridge_sip_tls_handshake_failed_total"
    before = serve.metric(metric, refused)
    # Without a certificate: refused in the handshake; no call.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sounds").mkdir()
    cfg = phone.config(bare, source, bare / "sounds", account="<sip:bs@127.0.0.1;transport=tls>",
                       extra=f"sip_cafile {folder / 'ca.pem'}\n")
    output = await _dial(serve, cfg, lambda: serve.metric(metric, refused) > before)
    assert "Call established" not in output, output
    assert not [r for r in serve.records() if r["caller"] == "bs"]
    # With one the bridge's CA signed: the call is set up.
    held = tmp_path / "held"
    held.mkdir()
    (held / "sounds").mkdir()
    cfg = phone.config(held, source, held / "sounds",
                       account="<sip:bs@127.0.0.1;transport=tls>",
                       extra=f"sip_cafile {folder / 'ca.pem'}\n"
                             f"sip_certificate {folder / 'client.pem'}\n")
    output = await _dial(serve, cfg, lambda: any(r["caller"] == "bs" and r["ended_at"]
                                                 for r in serve.records()))
    info = f"--- baresip ---\n{output[-2500:]}\n{serve.log_tail()}"
    assert "Call established" in output, info
    assert serve.metric(metric, refused) == before + 1, info
