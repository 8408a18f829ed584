"""Out-of-band responses through the real client against the emulator: a text analysis
beside a spoken reply, kept out of the spoken response's bookkeeping, and a barge-in that
stops the spoken reply while the analysis completes."""

from __future__ import annotations

import json

import pytest

from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.outofband import OOB_KEY, request
from bridge.realtime.profile import SessionProfile, TurnDetection
from tests.support.audio import tone
from tests.support.client_events import Events
from tests.support.realtime_oracle import validate_client_event

PROFILE = SessionProfile(instructions="echo", turn_detection=TurnDetection(
    silence_duration_ms=300))
ASK = "Analyse the caller's intent and sentiment; answer as JSON."


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_the_request_is_a_text_response_outside_the_conversation(dialect: str) -> None:
    event = request(ASK, {"turn": "3"}, ["item_1", "item_2"], dialect)
    response = event["response"]
    # The openai models of the client event take the response without its item references
    # (the package's request-parameter types list them: {"type": "item_reference", "id"}).
    bare = {k: v for k, v in response.items() if k != "input"}
    validate_client_event({"type": "response.create", "event_id": "vb_1", "response": bare},
                          dialect)
    assert response["conversation"] == "none"
    assert response["metadata"] == {"turn": "3", OOB_KEY: "1"}
    assert response["output_modalities" if dialect == "ga" else "modalities"] == ["text"]
    assert response["input"] == [{"type": "item_reference", "id": "item_1"},
                                 {"type": "item_reference", "id": "item_2"}]
    with pytest.raises(ValueError):
        request(ASK, {str(n): "x" for n in range(16)}, [], dialect)


async def test_an_analysis_runs_beside_a_spoken_reply_and_survives_its_barge_in() -> None:
    async with Emulator(EmulatorConfig(pace=1.0, greeting_ms=2000)) as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        client = RealtimeClient(target, PROFILE)
        await client.connect()
        events = Events(client)
        await client.add_user_text("This is terrible, I am angry about my order.")
        await client.create_response()                       # the spoken reply
        spoken = await events.read_until(ev.ResponseCreated)
        assert await client.create_out_of_band(ASK, {"turn": "1"})
        started = await events.read_until(ev.OutOfBandStarted)
        assert started.metadata == {"turn": "1"} and started.response_id != spoken.response_id
        assert client.response_active                        # the spoken one, still
        # The caller talks over the agent: the spoken reply stops; the analysis is not
        # touched by it (it may have finished already: the emulator writes text at once).
        for at in range(0, 48 * 700, 960):
            client.append_audio(tone(700, dbfs=-14.0)[at:at + 960])

        def finished() -> bool:
            kinds = {type(e) for e in events.seen}
            return ev.OutOfBandDone in kinds and ev.SpeechStarted in kinds and any(
                isinstance(e, ev.ResponseDone) and e.response_id == spoken.response_id
                for e in events.seen)
        while not finished():
            await events.next(10)
        seen = events.seen
        (done,) = [e for e in seen if isinstance(e, ev.OutOfBandDone)]
        spoken_done = [e for e in seen if isinstance(e, ev.ResponseDone)]
        # The analysis ran inside the spoken reply's life: audio of the reply before its
        # end, the reply's end after it.
        order = [type(e) for e in seen]
        assert order.index(ev.AudioDelta) < order.index(ev.OutOfBandDone)
        assert order.index(ev.OutOfBandDone) < order.index(ev.ResponseDone)
        await client.close()
    assert done.status == "completed" and done.metadata == {"turn": "1"}
    analysis = json.loads(done.text)
    assert analysis["sentiment"] == "negative" and analysis["escalate"] is True
    assert "order" in analysis["labels"]
    assert spoken_done[0].status == "cancelled"
    # Nothing of the analysis reached the spoken path: no created/done/text events for it.
    assert not [e for e in seen if isinstance(e, ev.ResponseCreated | ev.ResponseDone
                                              | ev.TranscriptDone)
                and e.response_id == done.response_id]
    oob = emu.record.sessions[0].out_of_band
    assert len(oob) == 1 and oob[0].metadata.get("turn") == "1"
