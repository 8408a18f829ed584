"""Redaction: the rules (the built-in Luhn-checked card rule, a plan's patterns, pieces of
streamed text), the record masked before every save, the model's context cleared of a
tool's value (caller turns and the function call item), and the client's
``conversation.item.delete`` against the emulator and the openai models."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bridge.call.events import TranscriptAdded, TranscriptDelta
from bridge.call.redaction import Redactor, luhn_ok
from bridge.dialplans.loader import load_dialplan_file, load_dialplans
from bridge.dialplans.recording import RedactionPolicy
from bridge.dialplans.tools import tool_from_function
from bridge.errors import DialplanError
from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator
from bridge.realtime.history import History
from bridge.realtime.items import delete_event
from bridge.realtime.profile import SessionProfile
from tests.support.call_rig import Rig, settle
from tests.support.realtime_oracle import validate_client_event
from tests.support.waiting import until

CARD = "4111 1111 1111 1111"


def test_luhn_and_the_card_rule() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")
    r = Redactor(RedactionPolicy(cards=True))
    assert r.mask(f"my card is {CARD}, thanks") == "my card is [redacted], thanks"
    assert r.mask("card 4111-1111-1111-1111.") == "card [redacted]."
    assert r.mask("4111111111111111") == "[redacted]"
    # The same length without a valid check digit (an order number) is left alone, and
    # so are short numbers.
    assert r.mask("order 4111111111111112") == "order 4111111111111112"
    assert r.mask("call 555 0100") == "call 555 0100"
    assert not r.found("nothing here") and r.found(CARD)


def test_a_plans_patterns_and_pieces_of_streamed_text() -> None:
    r = Redactor(RedactionPolicy(cards=False, patterns=(r"\bIBAN [A-Z0-9 ]{10,30}\b",
                                                        r"pin \d{4}"), mask="***"))
    assert r.mask("pin 1234 and IBAN DE89 3704 0044 0532 0130 00") == "*** and ***"
    assert r.mask(CARD) == CARD                       # no card rule in this plan
    cards = Redactor(RedactionPolicy(cards=True))
    # A card spoken in pieces: no piece matches the whole rule, every digit run goes.
    assert cards.mask_fragment("4111 1111") == "[redacted]"
    assert cards.mask_fragment("it is 41") == "it is 41"
    assert cards.mask_fragment("Your order") == "Your order"


def test_redaction_table_in_a_dialplan(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(textwrap.dedent("""
        [match]
        default = true
        [redaction]
        patterns = ["re-[0-9]{6}"]
    """))
    plan = load_dialplan_file(tmp_path / "p.toml")
    assert plan.redaction.active and plan.redaction.cards
    assert plan.redaction.patterns == ("re-[0-9]{6}",)
    (tmp_path / "q.toml").write_text("[match]\ndefault = true\n")
    assert not load_dialplan_file(tmp_path / "q.toml").redaction.active
    (tmp_path / "r.toml").write_text(textwrap.dedent("""
        [match]
        default = true
        [redaction]
        patterns = ["([0-9]"]
    """))
    with pytest.raises(DialplanError, match="does not compile") as info:
        load_dialplan_file(tmp_path / "r.toml")
    assert info.value.field == "redaction.patterns"
    (tmp_path / "s.toml").write_text('[redaction]\npatterns = ["x*"]\n')
    with pytest.raises(DialplanError, match="empty string"):
        load_dialplan_file(tmp_path / "s.toml")


PLAN = """
tools = ["pay"]
[match]
default = true
[agent]
instructions = "pay"
[agent.transcription]
model = "whisper-1"
[redaction]
"""


async def pay(card: str) -> str:
    """Take a payment."""
    return f"paid with {card}"


async def test_after_the_tool_the_caller_turn_and_the_call_item_are_deleted(
        tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.toml").write_text(PLAN)
    plan = load_dialplans(tmp_path / "plans", tools={"pay": tool_from_function(pay)}).default
    seen: list[object] = []
    rig = Rig(plan)
    rig.call._on_event = rig.call.redaction.wrap(seen.append)   # type: ignore[union-attr]
    await rig.start()
    await rig.emit(ev.UserTranscriptDelta("u1", "my card is 4111 1111"),
                   ev.UserTranscript("u1", f"my card is {CARD}"),
                   ev.UserTranscript("u2", "and my name is Ann"))
    assert not rig.session.sent("delete")              # nothing used the value yet
    # The live record (what a live call's page shows) is masked at once, not at a save.
    assert [e.text for e in rig.call.record.transcript] == [
        "my card is [redacted]", "and my name is Ann"]
    args = json.dumps({"card": CARD})
    await rig.emit(ev.ResponseCreated("r1"), ev.FunctionCall("r1", "fc1", "call_1", "pay", args))
    await rig.done("r1")
    await rig.until(lambda: bool(rig.session.sent("create_response")))
    kinds = rig.session.kinds()
    # Output first, then the deletes, then the next response (which no longer sees it).
    # The model gets the tool's answer without the value.
    assert rig.session.sent("tool_output") == [("tool_output", "call_1", "paid with [redacted]")]
    assert sorted(e[1] for e in rig.session.sent("delete")) == ["fc1", "u1"]
    assert kinds.index("tool_output") < kinds.index("delete") < kinds.index("create_response")
    # The record, as saved, and the events never hold it.
    rig.leg.far_end_hangup()
    record = await rig.finish()
    saved = await rig.store.get(record.call_id)
    assert saved is not None
    text = saved.to_json()
    assert "4111" not in text and "[redacted]" in text
    assert "Ann" in text                               # the rest is kept
    assert any(isinstance(e, TranscriptAdded) for e in seen)
    assert any(isinstance(e, TranscriptDelta) for e in seen)
    assert "4111" not in repr(seen)


async def test_a_tool_without_the_value_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.toml").write_text(PLAN)
    plan = load_dialplans(tmp_path / "plans", tools={"pay": tool_from_function(pay)}).default
    rig = Rig(plan)
    await rig.start()
    await rig.emit(ev.UserTranscript("u1", f"my card is {CARD}"),
                   ev.ResponseCreated("r1"),
                   ev.FunctionCall("r1", "fc1", "call_1", "pay", '{"card": "on file"}'))
    await rig.done("r1")
    await rig.until(lambda: bool(rig.session.sent("create_response")))
    await settle()
    assert not rig.session.sent("delete")
    rig.leg.far_end_hangup()
    await rig.finish()


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_the_delete_event_is_a_valid_client_event(dialect: str) -> None:
    validate_client_event(dict(delete_event("item_1"), event_id="vb_1"), dialect)


def test_a_deleted_item_is_not_reseeded() -> None:
    history = History()
    history.user_turn("u1")
    history.user_transcript("u1", f"card {CARD}")
    history.user_turn("u2")
    history.user_transcript("u2", "hello")
    history.forget("u1")
    history.forget("unknown")
    assert history.texts() == [("user", "hello")]


async def test_the_client_deletes_an_item_at_the_emulator() -> None:
    async with Emulator() as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        client = RealtimeClient(target, SessionProfile(instructions="x", turn_detection=None))
        await client.connect()
        try:
            await client.add_user_text(f"card {CARD}")
            await until(lambda: any(e["type"] == "conversation.item.create"
                                    for e in emu.record.last.received), 10)
            session = emu.record.last
            await until(lambda: bool(session.user_items), 10)
            item = session.user_items[0].item_id
            assert await client.delete_item(item)
            await until(lambda: bool(session.deleted), 10)
            assert session.deleted == [(item, "message")]
            assert not session.errors
            (sent,) = [e for e in session.received if e["type"] == "conversation.item.delete"]
            validate_client_event(sent, target.dialect)
        finally:
            await client.close()


async def test_keys_typed_for_the_model_are_not_kept(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.toml").write_text(
        PLAN + '[dtmf]\nto_model = true\n[dtmf.actions]\n"0" = { action = "hangup" }\n')
    plan = load_dialplans(tmp_path / "plans", tools={"pay": tool_from_function(pay)}).default
    seen: list[object] = []
    rig = Rig(plan)
    rig.call._on_event = rig.call.redaction.wrap(seen.append)   # type: ignore[union-attr]
    await rig.start()
    for digit in "4111":
        rig.leg.press(digit)
        await rig.tick()
    await rig.until(lambda: len(rig.session.sent("user_text")) == 4)
    # The model gets the keys; the record, the events and the log get stars.
    assert [t[1] for t in rig.session.sent("user_text")] == [
        f"caller pressed {d}" for d in "4111"]
    assert [d.digit for d in rig.call.record.dtmf] == ["*"] * 4
    assert "4111" not in repr(seen) and "'*'" in repr(seen)
    rig.leg.press("0")                                   # a menu key keeps its digit
    record = await rig.finish()
    assert record.dtmf[-1].digit == "0" and record.dtmf[-1].action == "hangup"
