"""The conformance oracles themselves (tests/support/realtime_oracle.py): they must be able
to fail, or the conformance tests that use them prove nothing."""

from __future__ import annotations

import pydantic

from tests.support.realtime_oracle import validate_client_event


def test_oracle_rejects_wrong_dialect_and_unknown_fields() -> None:
    # The oracle itself must be able to fail, or the conformance tests prove nothing.
    validate_client_event({"type": "input_audio_buffer.append", "audio": "AAA="}, "ga")
    bad = [
        ({"type": "session.update", "session": {"modalities": ["audio"]}}, "ga"),
        ({"type": "session.update", "session": {"type": "realtime", "voices": "x"}}, "ga"),
        ({"type": "conversation.item.truncate", "item_id": "i"}, "ga"),
        ({"type": "session.update", "session": {"audio": {}}}, "preview"),
        ({"type": "output_audio_buffer.clears"}, "ga"),
    ]
    for event, dialect in bad:
        try:
            validate_client_event(event, dialect)
        except (pydantic.ValidationError, AssertionError):
            continue
        raise AssertionError(f"oracle accepted {event}")
