"""Voicemail over whole SIP calls: SIPp calls a real ``voicebridge serve`` (in-process
emulator) on a dialplan with ``[voicemail]``.

The caller's message is an espeak-ng phrase streamed as µ-law RTP. The bridge greets (a
beep), records, streams the message into a Realtime transcription session on the emulator
(pocketsphinx recognises the words), stores the WAV and the transcript with the call
record, posts both to a webhook (a real HTTP server on loopback here) and hangs up with a
BYE, which SIPp waits for. Three ways a message ends: caller silence, the ``#`` key, the
maximum length.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
import uuid
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bridge.bench.sip import (
    LoopbackCapture,
    Scenario,
    ServeProcess,
    SippRun,
    free_udp_port,
    run_sipp,
)
from tests.support.interop import require, require_binary
from tests.support.waiting import until

PHRASE = "I would like to order a pizza"
#: words of the phrase the recogniser must find in the stored transcript (pocketsphinx's
#: English model hears this phrase through 8 kHz µ-law as "i would like to order the")
EXPECTED = {"would", "like", "order"}
SIPP_SHARE = Path("/usr/share/sip-tester")
TOKEN = "vm-hook-secret-token"


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, Any], str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.received.append((json.loads(body), self.headers.get("authorization", "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def hook() -> Iterator[list[tuple[dict[str, Any], str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.port = server.server_address[1]  # type: ignore[attr-defined]
    try:
        yield _Hook.received
    finally:
        server.shutdown()
        server.server_close()


def _plan(name: str, called: str, folder: Path, port: int, **voicemail: object) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in voicemail.items())
    return f"""description = "voicemail test line {name}"
[match]
called = "{called}"
[agent]
instructions = "unused: every call here is voicemail"
[voicemail]
when = "always"
directory = "{folder}"
model = "vb-transcribe"
silence_s = 2.5
webhook_url = "http://127.0.0.1:{port}/voicemail"
webhook_headers = {{ Authorization = "Bearer ${{VM_HOOK_TOKEN}}" }}
{extra}"""


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory,
          hook: list[tuple[dict[str, Any], str]]) -> Iterator[ServeProcess]:
    require_binary("sipp", "SIP interop")
    plans = tmp_path_factory.mktemp("plans")
    folder = tmp_path_factory.mktemp("messages")
    port = _Hook.port  # type: ignore[attr-defined]
    (plans / "default.toml").write_text(
        '[match]\ndefault = true\n[agent]\ninstructions = "echo"\n')
    (plans / "vm.toml").write_text(_plan("vm", "vm", folder, port))
    (plans / "vmshort.toml").write_text(_plan("vmshort", "vmshort", folder, port, max_s=3))
    bridge = ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=plans,
                          env={"VM_HOOK_TOKEN": TOKEN})
    with bridge:
        yield bridge


@pytest.fixture(scope="module")
def phrase(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The message: 1.5 s of silence (the greeting plays), the phrase, 5 s of silence."""
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    folder = tmp_path_factory.mktemp("media")
    wav = folder / "phrase.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", "130", "-w", str(wav), PHRASE], check=True,
                   capture_output=True)
    ulaw = folder / "phrase.ulaw"
    subprocess.run([sox, str(wav), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw",
                    str(ulaw), "pad", "1.5", "5"], check=True, capture_output=True)
    return ulaw


def _ok(run: SippRun, serve: ServeProcess) -> None:
    assert run.returncode == 0 and run.failed == 0, f"{run.explain()}\n{serve.log_tail()}"


async def _call(serve: ServeProcess, tmp_path: Path, scenario: Scenario,
                prefix: str) -> dict[str, Any]:
    sip_port, media_port = free_udp_port(), free_udp_port(pair=True)
    run = await run_sipp(scenario.write(tmp_path), serve.sip_port, workdir=tmp_path,
                         local_port=sip_port, media_port=media_port, call_id_prefix=prefix)
    _ok(run, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1", 30)
    return record


async def test_a_spoken_message_is_stored_transcribed_and_posted(
        serve: ServeProcess, phrase: Path, tmp_path: Path,
        hook: list[tuple[dict[str, Any], str]]) -> None:
    pytest.importorskip("pocketsphinx", reason="the transcribe extra recognises the words")
    prefix = f"vm-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("vm", service="vm", codecs=("pcmu",)).invite()
                .rtp_stream(phrase, loops=1).wait_bye(30000))
    record = await _call(serve, tmp_path, scenario, prefix)
    vm = record["voicemail"]
    info = f"{record}\n{serve.log_tail()}"
    assert record["dialplan"] == "vm" and vm is not None, info
    assert vm["ended_by"] == "silence" and record["end_reason"] == "voicemail", info
    words = set(vm["transcript"].lower().split())
    assert words >= EXPECTED, info
    # the WAV holds the message: the phrase, then the silence that ended it
    with wave.open(vm["audio"]) as w:
        assert w.getframerate() == 8000
        seconds = w.getnframes() / 8000
    assert 3.0 <= seconds <= 9.0, (seconds, info)
    assert abs(vm["duration_s"] - seconds) < 0.05
    assert record["transcript"][-1]["text"] == vm["transcript"]
    # the webhook got the transcript, with the dialplan's secret header
    await until(lambda: any(b["call_id"] == record["call_id"] for b, _ in hook), 10)
    body, auth = next((b, a) for b, a in hook if b["call_id"] == record["call_id"])
    assert body["transcript"] == vm["transcript"] and body["audio"] == vm["audio"]
    assert auth == f"Bearer {TOKEN}"
    assert vm["webhook"] == 204
    assert TOKEN not in serve.log_tail(10_000)
    # the call page shows the message; the WAV is served to the operator only
    request = urllib.request.Request(f"{serve.http_url}/calls/{record['call_id']}",
                                     headers={"Accept": "text/html",
                                              "Authorization": f"Bearer {serve.TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as reply:   # noqa: ASYNC210
        page = reply.read().decode()
    assert '<dl class="summary" id="voicemail">' in page
    assert vm["transcript"] in page and "ended by silence" in page, page[:3000]
    assert serve.metric("voicebridge_voicemails_total", 'ended_by="silence"') >= 1
    assert serve.metric("voicebridge_voicemail_transcriptions_total", 'outcome="ok"') >= 1
    status, audio = serve.get(f"/calls/{record['call_id']}/voicemail.wav", token=True)
    assert status == 200 and audio[:4] == b"RIFF" and len(audio) > 8000 * 2 * 3
    status, _ = serve.get(f"/calls/{record['call_id']}/voicemail.wav")
    assert status in (401, 403)


async def test_the_end_key_ends_the_message_early(serve: ServeProcess, phrase: Path,
                                                  tmp_path: Path) -> None:
    why = LoopbackCapture.unavailable()
    require(why is None, f"SIPp play_pcap_audio: {why}")
    pound = SIPP_SHARE / "dtmf_2833_pound.pcap"
    require(pound.exists(), f"{pound} (Debian sip-tester) missing")
    prefix = f"vmkey-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("vmkey", service="vm", codecs=("pcmu",))
                .invite(answer=r"a=rtpmap:101 telephone-event/8000")
                .rtp_stream(phrase, loops=-1).pause(3000)
                .play_pcap(pound).wait_bye(30000))
    record = await _call(serve, tmp_path, scenario, prefix)
    vm = record["voicemail"]
    assert vm["ended_by"] == "digit", f"{record}\n{serve.log_tail()}"
    assert vm["duration_s"] < 6.0, vm      # well before the 120 s maximum or a silence


async def test_a_message_is_cut_at_the_maximum_length(serve: ServeProcess, phrase: Path,
                                                      tmp_path: Path) -> None:
    prefix = f"vmmax-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("vmmax", service="vmshort", codecs=("pcmu",)).invite()
                .rtp_stream(phrase, loops=-1).wait_bye(30000))
    record = await _call(serve, tmp_path, scenario, prefix)
    vm = record["voicemail"]
    assert vm["ended_by"] == "max_length", f"{record}\n{serve.log_tail()}"
    assert 2.5 <= vm["duration_s"] <= 3.05, vm
