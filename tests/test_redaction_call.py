"""A whole SIP call (SIPp through ``voicebridge serve``, the Realtime emulator in this
process) on a dialplan with ``[redaction]``: the caller says a card number (the
emulator's script makes it the turn's transcription) and the model calls a tool with it;
the number never appears in the call's record, its events or the bridge's log, and once
the tool has run the caller's turn and the function call item holding it are deleted at
the emulator.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from pathlib import Path

import pytest

from bridge.bench.sip import PT_PCMU, Scenario, ServeProcess, run_sipp
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.interop import require_binary
from tests.support.realtime_oracle import validate_client_event

CARD = "4111 1111 1111 1111"          # a Luhn-valid test card number
PLAN = """
tools = ["check_card"]

[match]
default = true

[agent]
instructions = "Payment line."
audio_format = "g711"

[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 400

[agent.transcription]
model = "whisper-1"

[[python]]
function = "cardtools:check_card"

[redaction]
patterns = ["re-[0-9]{6}"]

[fallback]
action = "hangup"
"""
TOOLS = '''
async def check_card(card: str) -> str:
    """Check a payment card number."""
    digits = card.replace(" ", "")
    return "card ending " + digits[-4:] + " accepted; card " + card
'''
SCRIPT = f"""
speech = "tone"

[[rule]]
on_turn = 1
heard = "My card number is {CARD}."
say = "Let me check card {CARD} for you."
call = "check_card"
args = {{ card = "{CARD}" }}

[[rule]]
on_tool_output = "check_card"
say = "Thank you, the card {CARD} is fine."
"""


def caller_audio() -> bytes:
    rng = random.Random(3)
    speech = bytes(rng.randrange(0x00, 0x60) for _ in range(8000 * 2))
    return b"\xff" * 8000 + speech + b"\xff" * 8000 * 9


class EventTap(threading.Thread):
    """Follows ``/calls/events`` (server-sent events) and keeps every line."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        self.lines: list[str] = []
        self.ended = threading.Event()
        self.opened = threading.Event()

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.request, timeout=60) as reply:
                self.opened.set()
                for raw in reply:
                    line = raw.decode("utf-8", "replace")
                    self.lines.append(line)
                    if "call.ended" in line:
                        self.ended.set()
                        return
        except OSError:
            self.opened.set()


def leaks(text: str) -> list[str]:
    return [form for form in (CARD, CARD.replace(" ", ""), "1111 1111", "11111111")
            if form in text]


@pytest.mark.interop
async def test_a_card_number_is_kept_out_of_record_events_log_and_context(
        tmp_path: Path) -> None:
    sipp = require_binary("sipp", "redaction")
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "pay.toml").write_text(PLAN)
    (plans / "cardtools.py").write_text(TOOLS)
    script = tmp_path / "script.toml"
    script.write_text(SCRIPT)
    media = tmp_path / "caller.ulaw"
    media.write_bytes(caller_audio())
    async with Emulator(EmulatorConfig(script=script)) as emu:
        with ServeProcess(tmp_path / "serve", dialplans=plans,
                          env={"VOICEBRIDGE_REALTIME_EMULATOR_URL": emu.url,
                               "VOICEBRIDGE_SIP_TRANSPORTS": "udp"}) as bridge:
            tap = EventTap(bridge.http_url + "/calls/events", bridge.TOKEN)
            tap.start()
            assert tap.opened.wait(10)
            scenario = (Scenario("redaction", service="pay", codecs=("pcmu",))
                        .invite(answer=r"m=audio [0-9]+ RTP/AVP 0 101")
                        .rtp_stream(media, loops=1, payload_type=PT_PCMU)
                        .pause(11000).bye().write(tmp_path))
            run = await run_sipp(scenario, bridge.sip_port, workdir=tmp_path, sipp=sipp,
                                 limit_s=45, call_id_prefix="pay")
            assert run.successful == 1, run.explain()
            record = await bridge.wait_record("pay-1@127.0.0.1")
            tap.join(10)
            metric = bridge.metric("voicebridge_redacted_items_total")
            log = bridge.log_path.read_text(encoding="utf-8", errors="replace")
        session = emu.record.last
        assert session is not None
    # The tool ran with the real number (its output says so) ...
    assert [t["name"] for t in record["tool_calls"]] == ["check_card"]
    tool = record["tool_calls"][0]
    assert tool["ok"], tool
    assert "ending 1111 accepted" in tool["output"]
    # The model got the output without the number.
    assert session.tool_outputs and "[redacted]" in session.tool_outputs[0][1]
    assert not leaks(session.tool_outputs[0][1])
    # ... and the record, the events and the log never hold it.
    text = json.dumps(record)
    assert "[redacted]" in tool["arguments"] and "[redacted]" in text
    assert not leaks(text), leaks(text)
    assert any("call.transcript" in line for line in tap.lines), tap.lines
    assert any("[redacted]" in line for line in tap.lines), tap.lines
    assert not leaks("".join(tap.lines))
    assert not leaks(log), [line for line in log.splitlines() if leaks(line)]
    # The function call item that held it was deleted at the emulator, after its output.
    deletes = [e for e in session.received if e["type"] == "conversation.item.delete"]
    assert deletes, session.received_types
    for event in deletes:
        validate_client_event(event, "ga")
    caller_turn = session.user_items[0].item_id
    kinds = dict(session.deleted)
    assert kinds.get(caller_turn) == "message", session.deleted        # what the caller said
    assert "function_call" in kinds.values(), session.deleted          # the tool's arguments
    assert [e["text"] for e in record["transcript"] if e["role"] == "caller"][0] == (
        "My card number is [redacted].")
    order = session.received_types
    assert (order.index("conversation.item.delete")
            > order.index("conversation.item.create")), order     # after the output
    assert metric >= 2
