"""``GET /calls/<id>/recording`` in-process (Quart test client) around a real bridge: a
call over an in-memory leg against the built-in emulator, on a plan that records."""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import replace
from pathlib import Path

from bridge.call.leg import LegInfo, Source
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord
from bridge.config import load_settings
from bridge.serve import Bridge
from tests.support.audio import speech
from tests.support.waiting import until

TOKEN = "web-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = """
[match]
called = ["rec"]
[agent]
instructions = "rec"
[recording]
retention_days = 1
"""
PLAIN = """
[match]
default = true
[agent]
instructions = "plain"
"""


async def test_the_recording_is_downloaded_behind_the_token_once_the_call_ended(
        tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "rec.toml").write_text(PLAN)
    (plans / "plain.toml").write_text(PLAIN)
    settings = load_settings(None, {
        "VOICEBRIDGE_HTTP_PORT": "0", "VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db"),
        "VOICEBRIDGE_HTTP_TOKEN": TOKEN, "VOICEBRIDGE_DIALPLANS_PATH": str(plans),
        "VOICEBRIDGE_RECORDS_RECORDINGS_PATH": str(tmp_path / "rec")})
    settings = replace(settings, sip=replace(settings.sip, enabled=False))
    async with Bridge(settings, env={}) as bridge:
        client = bridge.app.test_client()
        ids = {}
        for called in ("rec", "plain"):
            leg = MemoryLeg(LegInfo(call_id=f"mem-{called}", source=Source.MEMORY,
                                    caller="+15550100", called=called),
                            clock=bridge.manager.clock)
            task = asyncio.ensure_future(bridge.manager.handle(leg))
            await until(lambda leg=leg: any(c.leg is leg for c in bridge.manager.calls.values()))
            (ids[called],) = [c for c, call in bridge.manager.calls.items() if call.leg is leg]
            leg.play(speech(600))
            if called == "rec":
                url = f"/calls/{ids['rec']}/recording"
                live = await client.get(url, headers=AUTH)
                assert live.status_code == 409                      # still being written
                page = await (await client.get(f"/calls/{ids['rec']}", headers=AUTH)
                              ).get_data(as_text=True)
                assert "recording…" in page
                await asyncio.sleep(1.0)
            leg.far_end_hangup()
            await asyncio.wait_for(task, 15)
        url = f"/calls/{ids['rec']}/recording"
        assert (await client.get(url)).status_code == 401
        reply = await client.get(url, headers=AUTH)
        assert reply.status_code == 200
        assert reply.headers["Content-Type"] == "audio/wav"
        assert "attachment" in reply.headers["Content-Disposition"]
        with wave.open(io.BytesIO(await reply.get_data()), "rb") as w:
            assert (w.getnchannels(), w.getframerate()) == (2, 8000)
            assert w.getnframes() >= 8000 // 2
        page = await (await client.get(f"/calls/{ids['rec']}", headers=AUTH)
                      ).get_data(as_text=True)
        assert f'href="{url}"' in page
        # A call that was not recorded, and a record pointing outside the folder.
        plain = f"/calls/{ids['plain']}/recording"
        assert (await client.get(plain, headers=AUTH)).status_code == 404
        secret = tmp_path / "secret.wav"
        secret.write_bytes(b"RIFF")
        await bridge.manager.store.save(CallRecord(call_id="c_forged", ended_at=1.0,
                                                   recording=str(secret)))
        forged = await client.get("/calls/c_forged/recording", headers=AUTH)
        assert forged.status_code == 404
        assert (await client.get("/calls/c_none/recording", headers=AUTH)).status_code == 404
