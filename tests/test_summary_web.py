"""The call page's "Summarise" over real HTTP against a real bridge and its in-process
emulator: an operator action (bearer token, or the session cookie with its CSRF token),
refused otherwise, for ended calls only; the summary then lands in the stored record."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from bridge.call.records import CallRecord, TranscriptEntry
from bridge.config import load_settings
from bridge.serve import Bridge
from tests.support.waiting import until

TOKEN = "summary-web-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTML = {"Accept": "text/html"}


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    settings = load_settings(None, {"VOICEBRIDGE_HTTP_PORT": "0",
                                    "VOICEBRIDGE_HTTP_TOKEN": TOKEN,
                                    "VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db")})
    settings = replace(settings, sip=replace(settings.sip, enabled=False))
    async with Bridge(settings, env={}) as running:
        yield running


async def ended(bridge: Bridge, call_id: str, *, open_: bool = False) -> None:
    assert bridge.manager is not None
    record = CallRecord(call_id=call_id, caller="+15550100", called="100", dialplan="echo",
                        started_at=1.0, ended_at=None if open_ else 5.0,
                        end_reason="" if open_ else "caller_hangup")
    record.transcript.append(TranscriptEntry("caller", "i1", "Where is my parcel?", 2.0))
    await bridge.manager.store.save(record)


async def test_summarise_is_an_operator_action_on_ended_calls(bridge: Bridge) -> None:
    assert bridge.manager is not None
    store, url = bridge.manager.store, bridge.http_url
    await ended(bridge, "c_ended1")
    await ended(bridge, "c_open1", open_=True)
    async with httpx.AsyncClient() as client:
        anonymous = await client.post(f"{url}/calls/c_ended1/summary")
        assert (await client.get(f"{url}/login?token={TOKEN}")).status_code == 302
        page = (await client.get(f"{url}/calls/c_ended1", headers=HTML)).text
        assert 'id="summarise"' in page and 'data-status=""' in page
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf is not None
        no_csrf = await client.post(f"{url}/calls/c_ended1/summary")
        unknown = await client.post(f"{url}/calls/c_nope/summary", headers=AUTH)
        still_open = await client.post(f"{url}/calls/c_open1/summary", headers=AUTH)
        ok = await client.post(f"{url}/calls/c_ended1/summary",
                               headers={"X-CSRF-Token": csrf.group(1)})
        assert [r.status_code for r in (anonymous, no_csrf, unknown, still_open, ok)] == [
            401, 403, 404, 409, 202]

        async def summarised() -> bool:
            record = await store.get("c_ended1")
            return record is not None and (record.summary or {}).get("status") == "done"
        await until(summarised, 20, what="the on-demand summary in the record")
        record = await store.get("c_ended1")
        assert record is not None and record.summary is not None
        assert record.summary["text"].startswith("The caller said: Where is my parcel?")
        assert record.summary["fields"] == {}          # the echo plan defines none
        done = (await client.get(f"{url}/calls/c_ended1", headers=HTML)).text
        assert 'data-status="done"' in done and "Where is my parcel?" in done
        assert "disposition" in done
    # Nothing was summarised without being asked: the echo plan's [summary] is off.
    assert bridge.emulator is not None
    assert len([r for r in bridge.emulator.chat.requests if r.status == 200]) == 1
