"""Interop with SIPp against a real ``voicebridge serve`` process (in-process emulator).

One ``voicebridge serve`` subprocess runs for the whole module (its own ports, records
in a temporary SQLite file, the interop dialplans, a 300 ms ring before answering). SIPp
places the calls. What the bridge really sends is captured on the loopback interface
(an ``AF_PACKET`` socket, kernel timestamps, filtered by SIPp's ports) — the same raw
socket privilege SIPp's own ``play_pcap_audio`` needs.

The echo dialplan has no greeting, so before the caller speaks the bridge may only send
silence: energy coming back after the caller's speech is the agent's echo, and its
envelope must line up with the caller's.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.bench.sip import (
    PT_PCMA,
    PT_PCMU,
    LoopbackCapture,
    RtpTrace,
    Scenario,
    ServeProcess,
    SippRun,
    free_udp_port,
    run_sipp,
)
from tests.support.interop import require, require_binary

HERE = Path(__file__).parent
SIPP_DIR = HERE / "sipp"
DIALPLANS = HERE / "data" / "interop" / "dialplans"
SIPP_SHARE = Path("/usr/share/sip-tester")
PHRASE = "Hello, this is the voice bridge interop test. One, two, three."
SPEECH_DBFS = -45.0      # a 100 ms stretch louder than this is speech
SILENCE_DBFS = -55.0     # the bridge's silence (G.711 idle) is far below this
ECHO_DBFS = -35.0        # the echo of the caller's speech reaches at least this


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_binary("sipp", "SIP interop")
    why = LoopbackCapture.unavailable()
    require(why is None, f"loopback capture and SIPp play_pcap_audio: {why}")
    bridge = ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS,
                          env={"VOICEBRIDGE_SIP_RING_MS": "300"})
    with bridge:
        yield bridge


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Caller audio made here: a spoken phrase as raw µ-law (espeak-ng + sox) with 0.3 s
    of silence before and 2.5 s after (a phone keeps sending RTP while it listens), and
    a second of A-law silence to keep the A-law caller's RTP going after the pcap."""
    espeak = require_binary("espeak-ng", "caller speech")
    sox = require_binary("sox", "caller speech")
    folder = tmp_path_factory.mktemp("media")
    wav = folder / "phrase.wav"
    subprocess.run([espeak, "-w", str(wav), PHRASE], check=True, capture_output=True)
    ulaw = folder / "phrase.ulaw"
    subprocess.run([sox, str(wav), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw",
                    str(ulaw), "pad", "0.3", "2.5"], check=True, capture_output=True)
    silence = folder / "silence.alaw"
    silence.write_bytes(b"\xd5" * 8000)
    silence_ulaw = folder / "silence.ulaw"
    silence_ulaw.write_bytes(b"\xff" * 8000)
    return {"phrase_ulaw": ulaw, "silence_alaw": silence, "silence_ulaw": silence_ulaw}


@pytest.fixture
def ports() -> tuple[int, int]:
    """SIPp's SIP port and media port (media: an even port with +2 free)."""
    return free_udp_port(), free_udp_port(pair=True)


def _pcap(name: str) -> Path:
    path = SIPP_SHARE / name
    require(path.exists(), f"{path} (Debian sip-tester) missing")
    return path


def _ok(run: SippRun, serve: ServeProcess) -> None:
    assert run.returncode == 0 and run.failed == 0, f"{run.explain()}\n{serve.log_tail()}"


# ---- audio checks ------------------------------------------------------------------------

BIN_S = 0.1              # envelope resolution


def _envelope(trace: RtpTrace, origin: float, bins: int) -> np.ndarray:
    """RMS of the decoded audio per 100 ms of arrival time from ``origin``."""
    energy, count = np.zeros(bins), np.zeros(bins)
    for at, pcm in trace.audio():
        slot = int((at - origin) / BIN_S)
        if 0 <= slot < bins:
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
            energy[slot] += float(np.sum(samples ** 2))
            count[slot] += len(samples)
    return np.sqrt(energy / np.maximum(count, 1))


def _best_alignment(caller: np.ndarray, echo: np.ndarray) -> tuple[float, float]:
    """Highest normalised correlation of the echo envelope with the caller's, delayed by
    0.2–15 s, over at least 1.5 s of overlap: (correlation, delay in seconds)."""
    best = (-1.0, 0.0)
    for lag in range(2, 150):
        a, b = caller[:len(caller) - lag], echo[lag:]
        n = min(len(a), len(b))
        if n < 15:
            break
        a, b = a[:n], b[:n]
        if a.std() == 0 or b.std() == 0:
            continue
        corr = float(np.corrcoef(a, b)[0, 1])
        if corr > best[0]:
            best = (corr, round(lag * BIN_S, 1))
    return best


def check_echo_call(capture: LoopbackCapture, media_port: int, payload_type: int,
                    serve: ServeProcess) -> None:
    """The RTP the bridge sent back to SIPp's media port: one stream, the negotiated
    payload type, 20 ms packets on a 160-sample clock, silence until the caller has
    spoken and the caller's speech echoed after it ended."""
    back = capture.rtp(dst_port=media_port)
    sent = capture.rtp(src_port=media_port)
    info = (f"bridge->caller {len(back)} packets from {back.sources}, caller->bridge "
            f"{len(sent)} packets\n{serve.log_tail()}")
    assert len(sent) > 100, info
    assert len(back.sources) == 1, info
    assert back.payload_types == {payload_type}, info
    # Symmetric RTP: the bridge answered where the caller's media came from.
    assert {d.dst for d in capture.between(src_port=media_port)} \
        == {d.src for d in capture.between(dst_port=media_port)}, info
    # 20 ms packetization on the wire.
    steps = back.timestamp_steps()
    assert steps and steps.count(160) >= 0.99 * len(steps), f"timestamp steps {set(steps)}"
    gaps = back.gaps_ms()
    assert 19.0 <= float(np.median(gaps)) <= 21.0, f"median gap {np.median(gaps):.2f} ms"
    span = back.packets[-1][0] - back.packets[0][0]
    assert len(back) >= 0.9 * span / 0.020, f"{len(back)} packets in {span:.2f} s"

    levels = sent.levels(100)
    speech = [t for t, level in levels if level > SPEECH_DBFS]
    assert speech, f"caller levels {levels}"
    first, last = speech[0], speech[-1] + 0.1
    before = back.window(back.packets[0][0], first + 0.2).levels(100)
    assert before and max(level for _, level in before) < SILENCE_DBFS, \
        f"the bridge sent sound before the caller spoke: {before}"
    after = back.window(last + 0.2, last + 2.5).levels(100)
    assert after and max(level for _, level in after) > ECHO_DBFS, \
        f"no echo after the caller's speech ended at +{last - back.packets[0][0]:.1f} s: " \
        f"{after}\n{serve.log_tail()}"
    origin = min(sent.packets[0][0], back.packets[0][0])
    bins = int((max(sent.packets[-1][0], back.packets[-1][0]) - origin) / BIN_S) + 1
    corr, delay = _best_alignment(_envelope(sent, origin, bins), _envelope(back, origin, bins))
    assert corr > 0.7, f"echo envelope does not match the caller's (r={corr:.2f} at {delay} s)"


# ---- calls with audio ---------------------------------------------------------------------

async def test_alaw_pcap_call_is_echoed(serve: ServeProcess, media: dict[str, Path],
                                        ports: tuple[int, int], tmp_path: Path) -> None:
    """SIPp offers PCMA only and plays the packaged g711a.pcap (7 s of speech in 30 ms
    packets); the bridge answers PCMA and sends the echo in 20 ms PCMA packets."""
    sip_port, media_port = ports
    prefix = f"interop-alaw-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("alaw", codecs=("pcma",))
                .invite(answer=r"m=audio [0-9]+ RTP/AVP 8 101")
                .play_pcap(_pcap("g711a.pcap")).pause(7100)
                .rtp_stream(media["silence_alaw"], loops=-1, payload_type=PT_PCMA)
                .pause(3000).bye().write(tmp_path))
    async with LoopbackCapture(src_ports=(media_port,), dst_ports=(media_port,)) as capture:
        run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                             media_port=media_port, call_id_prefix=prefix)
    _ok(run, serve)
    check_echo_call(capture, media_port, PT_PCMA, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record     # BYE from SIPp
    assert record["dialplan"] == "echo" and record["source"] == "sip"
    assert record["errors"] == [] and record["responses"] >= 1


async def test_ulaw_stream_call_is_echoed(serve: ServeProcess, media: dict[str, Path],
                                          ports: tuple[int, int], tmp_path: Path) -> None:
    """SIPp offers PCMU first and streams a spoken phrase (raw µ-law, 20 ms packets)."""
    sip_port, media_port = ports
    prefix = f"interop-ulaw-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("ulaw", codecs=("pcmu", "pcma"))
                .invite(answer=r"m=audio [0-9]+ RTP/AVP 0 101")
                .rtp_stream(media["phrase_ulaw"], loops=1, payload_type=PT_PCMU)
                .pause(int(media["phrase_ulaw"].stat().st_size / 8) + 200).bye()
                .write(tmp_path))
    async with LoopbackCapture(src_ports=(media_port,), dst_ports=(media_port,)) as capture:
        run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                             media_port=media_port, call_id_prefix=prefix)
    _ok(run, serve)
    check_echo_call(capture, media_port, PT_PCMU, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup", record
    assert any(e["role"] == "agent" for e in record["transcript"]), record["transcript"]


# ---- signalling ---------------------------------------------------------------------------

async def test_cancel_while_ringing(serve: ServeProcess, ports: tuple[int, int],
                                    tmp_path: Path) -> None:
    """The bridge rings (180) before answering; a CANCEL meanwhile gets 200 and the
    INVITE 487, no 200 for the INVITE ever goes out and no call starts."""
    sip_port, media_port = ports
    scenario = tmp_path / "cancel.xml"
    shutil.copy(SIPP_DIR / "cancel.xml", scenario)
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                             media_port=media_port, args=("-s", "echo"))
    _ok(run, serve)
    replies = [text.splitlines()[0] + " / " + next(
        (h for h in text.splitlines() if h.lower().startswith("cseq")), "")
        for _, text in capture.sip()]
    assert not [r for r in replies if r.startswith("SIP/2.0 200") and "INVITE" in r], replies
    assert any(r.startswith("SIP/2.0 487") for r in replies), replies
    call_id = next(line.split(":", 1)[1].strip() for _, text in capture.sip()
                   for line in text.splitlines() if line.lower().startswith("call-id"))
    assert not [r for r in serve.records() if r["leg_call_id"] == call_id]


async def test_options_ping(serve: ServeProcess, ports: tuple[int, int],
                            tmp_path: Path) -> None:
    """A trunk's OPTIONS keep-alive: 200 with Allow (checked by the scenario) and Accept;
    never an empty Supported (some parsers refuse an empty field): it lists timer, 100rel."""
    sip_port, media_port = ports
    async with LoopbackCapture(dst_ports=(sip_port,)) as capture:
        run = await run_sipp(SIPP_DIR / "options.xml", serve.sip_port, workdir=tmp_path,
                             local_port=sip_port, media_port=media_port)
    _ok(run, serve)
    [(_, reply)] = capture.sip()
    fields = {name.strip().lower(): value.strip() for name, _, value in
              (line.partition(":") for line in reply.splitlines()[1:] if ":" in line)}
    assert reply.startswith("SIP/2.0 200") and {"allow", "accept"} <= fields.keys(), reply
    assert fields.get("supported") == "timer, 100rel", reply
    assert fields["allow"].endswith("UPDATE, PRACK"), reply


async def test_dtmf_pcaps_reach_the_dialplan(serve: ServeProcess, ports: tuple[int, int],
                                             tmp_path: Path) -> None:
    """The packaged RFC 2833 pcaps: "1" goes to the model, "#" is the keys dialplan's
    hang-up action, so the bridge sends the BYE."""
    sip_port, media_port = ports
    prefix = f"interop-dtmf-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("dtmf", service="keys", codecs=("pcmu",))
                .invite(answer=r"a=rtpmap:101 telephone-event/8000")
                .pause(800)                          # the Realtime session is up by then
                .play_pcap(_pcap("dtmf_2833_1.pcap")).pause(600)
                .play_pcap(_pcap("dtmf_2833_pound.pcap")).wait_bye(10000).write(tmp_path))
    run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                         media_port=media_port, call_id_prefix=prefix)
    _ok(run, serve)
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    digits = [(d["digit"], d["action"]) for d in record["dtmf"] if d["direction"] == "in"]
    assert digits == [("1", "model"), ("#", "hangup")], (record["dtmf"], serve.log_tail())
    assert record["dialplan"] == "keys" and record["end_reason"] == "caller_dtmf_hangup"
    # The same record through the admin API.
    status, body = serve.get(f"/calls/{record['call_id']}?format=json", token=True)
    assert status == 200 and b'"digit":"#"' in body.replace(b" ", b"")


async def test_hold_and_resume_by_reinvite(serve: ServeProcess, media: dict[str, Path],
                                           ports: tuple[int, int], tmp_path: Path) -> None:
    """re-INVITE with a=sendonly: the bridge answers recvonly and sends no RTP until the
    re-INVITE with a=sendrecv; then it resumes, marker bit on the first packet."""
    sip_port, media_port = ports
    prefix = f"interop-hold-{uuid.uuid4().hex[:8]}"
    scenario = (Scenario("hold", codecs=("pcmu",))
                .invite(answer=r"a=sendrecv|m=audio [0-9]+ RTP/AVP 0 101")
                .rtp_stream(media["silence_ulaw"], loops=-1, payload_type=PT_PCMU)
                .pause(1000).reinvite("sendonly", answer="a=recvonly")
                .pause(1500).reinvite("sendrecv", answer="a=sendrecv")
                .pause(1000).bye().write(tmp_path))
    async with LoopbackCapture(dst_ports=(media_port, sip_port)) as capture:
        run = await run_sipp(scenario, serve.sip_port, workdir=tmp_path, local_port=sip_port,
                             media_port=media_port, call_id_prefix=prefix)
    _ok(run, serve)

    def ok_for(cseq: str) -> float:
        return next(at for at, text in capture.sip(dst_port=sip_port)
                    if text.startswith("SIP/2.0 200") and f"CSeq: {cseq}" in text)

    held, resumed = ok_for("2 INVITE"), ok_for("3 INVITE")
    back = capture.rtp(dst_port=media_port)
    info = f"{serve.log_tail()}"
    assert len(back.window(held - 0.8, held)) >= 30, info
    assert len(back.window(held + 0.03, resumed)) == 0, \
        f"RTP sent while on hold: {len(back.window(held + 0.03, resumed))} packets\n{info}"
    after = back.window(resumed, resumed + 0.9)
    assert len(after) >= 35, info
    assert after.packets[0][2].marker, "no marker bit on the first packet after the hold"
    record = await serve.wait_record(f"{prefix}-1@127.0.0.1")
    assert record["end_reason"] == "caller_hangup" and record["errors"] == []
