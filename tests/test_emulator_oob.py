"""Out-of-band responses in the Realtime emulator (``response.create`` with
``conversation: "none"``), over a real loopback WebSocket in both dialects: a text analysis
with metadata and item references beside a spoken in-band response, concurrent
out-of-band responses, cancelling one by id, refused inputs, and the analysis rules.

Every client event sent is checked against the openai package's models and every server
event received against its server-event models, strictly (``tests/support/realtime_oracle``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.realtime.response_item_reference import ResponseItemReference

from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.emulator.analysis import analyse, answer
from bridge.realtime.emulator.request import MAX_OUT_OF_BAND
from tests.support.emulator_client import GA_PATH, PREVIEW_PATH, RawClient
from tests.support.realtime_oracle import assert_conforms, validate_client_event
from tests.support.waiting import until

ANGRY = "I am furious, my order never arrived and this is the worst service ever"
CLASSIFY = ("Classify the caller's last turn. Answer with JSON only: "
            '{"intent": "...", "sentiment": "negative|neutral|positive", '
            '"escalate": true, "labels": []}')
DIALECTS = pytest.mark.parametrize("path", [GA_PATH, PREVIEW_PATH], ids=["ga", "preview"])


def check_client(event: dict[str, Any], dialect: str) -> None:
    """Validate a client event; GA item references against their own model (the GA event
    model's ``input`` declares full items only, its param type takes references too)."""
    response = event.get("response") or {}
    refs = [i for i in response.get("input") or [] if i.get("type") == "item_reference"]
    if dialect == "ga" and refs:
        for ref in refs:
            model = ResponseItemReference.model_validate(ref)
            assert not model.model_extra
        rest = [i for i in response["input"] if i not in refs]
        event = {**event, "response": {**response, "input": rest}}
    validate_client_event(event, dialect)


class Session:
    """A raw client whose sends are checked against the openai client-event models."""

    def __init__(self, client: RawClient) -> None:
        self.c = client
        self.dialect = client.dialect
        self.sent: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> str:
        check_client(event, self.dialect)
        self.sent.append(event)
        return await self.c.send(event)

    def text_only(self) -> dict[str, Any]:
        return {"output_modalities": ["text"]} if self.dialect == "ga" else {
            "modalities": ["text"]}

    @property
    def item_added(self) -> str:
        return "conversation.item.added" if self.dialect == "ga" else "conversation.item.created"

    async def user_text(self, text: str) -> str:
        await self.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text",
                                                           "text": text}]}})
        return str((await self.c.read_until(self.item_added))["item"]["id"])

    async def oob(self, **response: Any) -> str:
        return await self.send({"type": "response.create",
                                "response": {"conversation": "none", **response}})

    def conforms(self) -> None:
        for event in self.c.events:
            assert_conforms(event, self.dialect)


async def open_session(emu: Emulator, path: str) -> Session:
    client = await RawClient.open(emu.url, path)
    await client.read_until("session.created")
    return Session(client)


def of_response(s: Session, kind: str, rid: str) -> list[dict[str, Any]]:
    return [e for e in s.c.events if e["type"] == kind
            and (e.get("response_id") or e.get("response", {}).get("id")) == rid]


def text_kind(s: Session) -> str:
    return "response.output_text.done" if s.dialect == "ga" else "response.text.done"


@DIALECTS
async def test_analysis_out_of_band_beside_a_spoken_response(path: str) -> None:
    # pace 0.1: the in-band reply (a 0.6 s tone) plays for ~6 s of wall time,
    # so the out-of-band analysis runs and finishes while it is still in progress.
    async with Emulator(EmulatorConfig(pace=0.1)) as emu:
        s = await open_session(emu, path)
        try:
            turn = await s.user_text(ANGRY)
            await s.send({"type": "response.create"})
            spoken = (await s.c.read_until("response.created"))["response"]["id"]
            await s.oob(instructions=CLASSIFY, metadata={"purpose": "classify", "turn": "1"},
                        input=[{"type": "item_reference", "id": turn}], **s.text_only())
            created = await s.c.read_until("response.created")
            analysis = created["response"]["id"]
            assert created["response"]["metadata"] == {"purpose": "classify", "turn": "1"}
            done = await s.c.read_until("response.done")
            assert done["response"]["id"] == analysis  # done while the spoken one plays on
            assert not of_response(s, "response.done", spoken)
            assert done["response"]["status"] == "completed"
            assert done["response"]["metadata"] == {"purpose": "classify", "turn": "1"}
            text = of_response(s, text_kind(s), analysis)[0]["text"]
            labels = json.loads(text)
            assert labels == {"intent": "order", "sentiment": "negative", "escalate": True,
                              "labels": ["order", "angry", "escalation"]}
            out_item = done["response"]["output"][0]["id"]
            assert of_response(s, "response.output_item.done", analysis)
            # the analysis never entered the conversation ...
            assert all(e["item"]["id"] != out_item for e in s.c.of(s.item_added))
            await s.send({"type": "conversation.item.retrieve", "item_id": out_item})
            error = await s.c.error()
            assert error["code"] == "invalid_value"
            # ... and the spoken response completes and is in it
            spoken_done = await s.c.read_until("response.done", within=60)
            assert spoken_done["response"]["id"] == spoken
            assert spoken_done["response"]["status"] == "completed"
            spoken_item = spoken_done["response"]["output"][0]["id"]
            await s.send({"type": "conversation.item.retrieve", "item_id": spoken_item})
            assert (await s.c.read_until("conversation.item.retrieved"))["item"]["id"] \
                == spoken_item
        finally:
            await s.c.close()
    s.conforms()
    record = emu.record.last
    assert record is not None
    [oob] = record.out_of_band
    assert (oob.response_id, oob.metadata, oob.input_ids) == (
        analysis, {"purpose": "classify", "turn": "1"}, [turn])
    assert oob.input_texts == [ANGRY] and oob.instructions == CLASSIFY
    assert json.loads(oob.output_text) == labels
    assert [r.conversation for r in record.responses] == ["auto", "none"]


@DIALECTS
async def test_two_out_of_band_responses_at_once_and_one_cancelled_by_id(path: str) -> None:
    async with Emulator(EmulatorConfig(pace=0.25)) as emu:
        s = await open_session(emu, path)
        try:
            for n in (1, 2):  # spoken (audio) out-of-band responses, paced
                await s.oob(metadata={"n": str(n)}, input=[{
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": f"side question {n}"}]}])
            first = (await s.c.read_until("response.created"))["response"]["id"]
            second = (await s.c.read_until("response.created"))["response"]["id"]
            # an in-band response may start beside them; a second in-band one may not
            await s.send({"type": "response.create"})
            inband = (await s.c.read_until("response.created"))["response"]["id"]
            await s.send({"type": "response.create"})
            assert (await s.c.error())["code"] == "conversation_already_has_active_response"
            await s.send({"type": "response.cancel", "response_id": "resp_unknown"})
            assert (await s.c.error())["code"] == "response_cancel_not_active"
            await s.send({"type": "response.cancel", "response_id": second})
            cancelled = await s.c.read_until("response.done")
            assert cancelled["response"]["id"] == second
            assert cancelled["response"]["status"] == "cancelled"
            assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"
            dones = [(await s.c.read_until("response.done", within=60))["response"]
                     for _ in range(2)]
            assert {(d["id"], d["status"]) for d in dones} == {
                (first, "completed"), (inband, "completed")}
        finally:
            await s.c.close()
    s.conforms()
    delta = ("response.output_audio.delta" if s.dialect == "ga"
             else "response.audio.delta")
    order = [e["response_id"] for e in s.c.of(delta)]
    # interleaved: the first response still sent audio after the second's first delta
    assert first in order[order.index(second):]
    record = emu.record.last
    assert record is not None
    assert [(r.metadata, r.status) for r in record.out_of_band] == [
        ({"n": "1"}, "completed"), ({"n": "2"}, "cancelled")]
    assert record.out_of_band[0].input_texts == ["side question 1"]
    # out-of-band items are not in the conversation: only the in-band reply was added
    added = {e["item"]["id"] for e in s.c.of(s.item_added)}
    for r in record.out_of_band:
        assert r.item_ids and not added & set(r.item_ids)


@DIALECTS
async def test_an_unknown_item_reference_is_refused(path: str) -> None:
    async with Emulator(EmulatorConfig(pace=0)) as emu:
        s = await open_session(emu, path)
        try:
            await s.user_text("hello")
            sent = await s.oob(input=[{"type": "item_reference", "id": "item_nope"}],
                               **s.text_only())
            error = await s.c.error()
            assert (error["code"], error["param"], error["event_id"]) == (
                "invalid_value", "response.input[0].id", sent)
            assert "item_nope" in error["message"]
            await s.oob(metadata={f"k{i}": "v" for i in range(17)})
            assert (await s.c.error())["code"] == "object_above_max_properties"
            await s.send({"type": "response.create", "response": {"conversation": "none",
                                                                  **s.text_only()}})
            await s.c.read_until("response.done")  # the session still answers
            # an in-band response with its own input: answered from that input, and its
            # reply joins the conversation
            await s.send({"type": "response.create", "response": {**s.text_only(), "input": [
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "what time is it"}]}]}})
            inband = (await s.c.read_until("response.done"))["response"]
            reply = inband["output"][0]
            assert reply["content"][0]["text"] == "(response to: what time is it)"
            assert reply["id"] in {e["item"]["id"] for e in s.c.of(s.item_added)}
        finally:
            await s.c.close()
    s.conforms()
    record = emu.record.last
    assert record is not None
    assert len(s.c.of("response.created")) == 2  # the refused ones created nothing
    assert [r.conversation for r in record.responses] == ["none", "auto"]
    assert record.responses[1].input_texts == ["what time is it"]


async def test_the_json_schema_in_the_instructions_decides_the_keys() -> None:
    schema = {"type": "object", "properties": {"sentiment": {"type": "string"},
                                               "escalate": {"type": "boolean"},
                                               "topic": {"type": "string"}}}
    async with Emulator(EmulatorConfig(pace=0)) as emu:
        s = await open_session(emu, GA_PATH)
        try:
            turn = await s.user_text("Thanks, the refund arrived, great job")
            await s.oob(instructions="Analyse the sentiment. Schema: " + json.dumps(schema),
                        input=[{"type": "item_reference", "id": turn}], **s.text_only())
            done = await s.c.read_until("response.done")
        finally:
            await s.c.close()
    s.conforms()
    text = done["response"]["output"][0]["content"][0]["text"]
    assert json.loads(text) == {"sentiment": "positive", "escalate": False, "topic": None}


def test_analysis_rules() -> None:
    assert analyse(["This is terrible, I want a refund for my bill"]) == {
        "intent": "refund", "sentiment": "negative", "escalate": True,
        "labels": ["refund", "billing", "angry", "escalation"]}
    assert analyse(["Where is my package?"]) == {
        "intent": "order", "sentiment": "neutral", "escalate": False, "labels": ["order"]}
    assert analyse(["Can I speak to a manager"])["escalate"] is True
    assert analyse(["hello"])["intent"] == "general"
    assert answer("Say hi", ["hello there"]) == "(response to: hello there)"


async def test_out_of_band_responses_in_flight_are_bounded() -> None:
    # pace 0.05: each spoken out-of-band reply (~1.8 s of tone) stays in flight for ~36 s
    async with Emulator(EmulatorConfig(pace=0.05)) as emu:
        s = await open_session(emu, GA_PATH)
        try:
            for _ in range(MAX_OUT_OF_BAND):
                await s.oob(input=[])
            for _ in range(MAX_OUT_OF_BAND):
                await s.c.read_until("response.created")
            sent = await s.oob(input=[])
            error = await s.c.error()
            assert (error["code"], error["event_id"]) == ("too_many_active_responses", sent)
            await s.send({"type": "response.create"})  # the conversation's own still may
            inband = (await s.c.read_until("response.created"))["response"]
            assert inband["conversation_id"] is not None
        finally:
            await s.c.close()
    s.conforms()
    record = emu.record.last
    assert record is not None
    assert len(record.out_of_band) == MAX_OUT_OF_BAND
    await until(lambda: all(r.status == "cancelled" for r in record.responses))
