"""``[voicemail]`` in dialplans: validation, opening hours, and the voicemail taking over
when the agent's upstream cannot be had (a whole call through the call manager, an
in-memory leg, a dead agent upstream and the emulator for the transcription)."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from bridge.call.clock import MediaClock
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager
from bridge.call.memory import MemoryLeg
from bridge.call.records import MemoryRecordStore
from bridge.dialplans.loader import load_dialplans
from bridge.errors import DialplanError
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.emulator.audio import resample
from tests.support.waiting import until

DEFAULT = '[match]\ndefault = true\n[agent]\ninstructions = "x"\n'


def _load(tmp_path: Path, voicemail: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    (tmp_path / "default.toml").write_text(DEFAULT)
    (tmp_path / "vm.toml").write_text(
        f'[match]\ncalled = "vm"\n[agent]\ninstructions = "x"\n[voicemail]\n{voicemail}')
    return load_dialplans(tmp_path, env=env or {})["vm"]


def test_opening_hours_decide_after_hours_calls(tmp_path: Path) -> None:
    plan = _load(tmp_path, 'when = "after_hours"\ntimezone = "Europe/Paris"\n'
                 '[voicemail.hours]\nmon = "09:00-12:00,13:00-17:30"\nsat = "10:00-12:00"\n')
    vm = plan.voicemail
    assert vm is not None
    paris = dt.timezone(dt.timedelta(hours=1))           # CET, December
    monday = dt.datetime(2026, 11, 30, tzinfo=paris)
    assert vm.takes_call(monday.replace(hour=8, minute=59))
    assert not vm.takes_call(monday.replace(hour=9))
    assert vm.takes_call(monday.replace(hour=12, minute=30))      # lunch
    assert not vm.takes_call(monday.replace(hour=17, minute=29))
    assert vm.takes_call(monday.replace(hour=17, minute=30))
    assert vm.takes_call(monday + dt.timedelta(days=1, hours=10))  # Tuesday: closed
    # the same instant in UTC is judged in the plan's time zone
    assert not vm.takes_call(dt.datetime(2026, 11, 30, 8, 30, tzinfo=dt.UTC))


def test_always_and_upstream_down(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    always = _load(tmp_path, 'when = "always"\n').voicemail
    assert always is not None and always.takes_call(now)
    fallback = _load(tmp_path, 'when = "upstream_down"\n').voicemail
    assert fallback is not None and not fallback.takes_call(now)
    assert _load(tmp_path, 'enabled = false\n').voicemail is None


@pytest.mark.parametrize(("text", "field"), [
    ('when = "sometimes"\n', "voicemail.when"),
    ('[voicemail.hours]\nmonday = "09:00-17:00"\n', "voicemail.hours"),
    ('[voicemail.hours]\nmon = "9-5"\n', "voicemail.hours"),
    ('timezone = "Mars/Olympus"\n', "voicemail.timezone"),
    ('max_s = 0\n', "voicemail.max_s"),
    ('end_digit = "##"\n', "voicemail.end_digit"),
    ('webhook_headers = { X = "${NOT_SET}" }\n', "voicemail.webhook_headers"),
])
def test_bad_voicemail_tables_are_load_errors(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(DialplanError) as info:
        _load(tmp_path, text)
    assert field in str(info.value), str(info.value)


def test_webhook_headers_are_read_from_the_environment(tmp_path: Path) -> None:
    plan = _load(tmp_path, 'webhook_headers = { Authorization = "Bearer ${T}" }\n',
                 env={"T": "s3cret"})
    assert plan.voicemail is not None
    assert plan.voicemail.webhook_headers == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(plan.voicemail)


def _speech_8k(tmp_path: Path) -> bytes:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path / "p.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", "130", "-w", str(wav),
                    "I would like to order a pizza"], check=True)
    with wave.open(str(wav)) as w:
        return resample(w.readframes(w.getnframes()), w.getframerate(), 8000)


async def test_voicemail_takes_the_call_when_the_agent_upstream_is_down(
        tmp_path: Path) -> None:
    pytest.importorskip("pocketsphinx")
    speech = _speech_8k(tmp_path)
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = _load(plans, f'when = "upstream_down"\ndirectory = "{tmp_path / "msgs"}"\n'
                 'silence_s = 2.0\nwebhook_url = "http://127.0.0.1:1/down"\n')
    assert plan.voicemail is not None
    clock = MediaClock()
    store = MemoryRecordStore()
    dead = RealtimeSettings.from_env({}).target(emulator_url="ws://127.0.0.1:1")
    async with Emulator(EmulatorConfig()) as emu:
        manager = CallManager(load_dialplans(plans, env={}), dead, store, clock,
                              call_options={"connect_timeout_s": 1.0})
        manager.transcription = (RealtimeSettings.from_env({}).target(emulator_url=emu.url),
                                 None)
        leg = MemoryLeg(LegInfo(call_id="leg-vm", source=Source.SIP, caller="+15550123",
                                called="vm"), clock=clock)
        task = asyncio.create_task(manager.handle(leg))
        # the greeting beep (after the comfort wait), then the message and silence
        await until(lambda: any(c.record.fallback for c in manager.calls.values()), 15,
                    clock=clock)
        await asyncio.sleep(1.5)
        leg.play(speech)
        leg.play_silence(4000)
        record = await asyncio.wait_for(task, 60)
    assert record.fallback is not None and record.end_reason == "upstream_lost", record
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "silence", vm
    assert {"order", "like"} <= set(vm["transcript"].split()), vm
    assert vm["duration_s"] >= 2.5
    assert vm["webhook"] == "ConnectError"       # a webhook that is down loses nothing
    with wave.open(vm["audio"]) as w:
        assert abs(w.getnframes() / 8000 - vm["duration_s"]) < 0.05
    assert emu.record.sessions and emu.record.sessions[0].received[0]["session"][
        "type"] == "transcription"


def test_check_dialplans_shows_the_voicemail(tmp_path: Path) -> None:
    _load(tmp_path, 'when = "after_hours"\nmax_s = 90\nmodel = "contoso-transcribe"\n')
    out = subprocess.run([sys.executable, "-m", "bridge.cli", "check-dialplans", "--dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "voicemail: after_hours, up to 90 s" in out.stdout
    assert "transcribed by contoso-transcribe" in out.stdout


async def test_a_voicemail_call_counts_as_live_and_the_operator_can_end_it(
        tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    _load(plans, f'directory = "{tmp_path / "msgs"}"\n')
    clock = MediaClock()
    dead = RealtimeSettings.from_env({}).target(emulator_url="ws://127.0.0.1:1")
    manager = CallManager(load_dialplans(plans, env={}), dead, MemoryRecordStore(), clock,
                          max_calls=1)
    leg = MemoryLeg(LegInfo(call_id="leg-op", source=Source.SIP, caller="+1555",
                            called="vm"), clock=clock)
    assert manager.open_early(leg.info, "pcmu") is None     # no agent session for it
    task = asyncio.create_task(manager.handle(leg))
    await until(lambda: manager.live == 1, 10, clock=clock)
    assert not manager.can_admit()
    [call_id] = manager.voicemails
    await asyncio.sleep(1.0)
    assert manager.hang_up(call_id, "operator")
    record = await asyncio.wait_for(task, 30)
    assert record.voicemail is not None and record.voicemail["ended_by"] == "operator"
    assert record.voicemail["transcript"] is None           # the upstream is down
    assert manager.live == 0 and leg.hangups == ["voicemail"]
