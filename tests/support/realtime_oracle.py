"""The conformance oracles: Realtime events checked against the ``openai`` package's
pydantic models, strictly.

The package's models accept unknown fields, so validation alone would let a misspelt or
wrong-dialect field through: both oracles also reject every field a model does not
declare. ``validate_client_event`` checks what a client sends, ``assert_conforms`` what a
server (the emulator) sends.
"""

from __future__ import annotations

from typing import Any

from openai.types.beta.realtime import RealtimeClientEvent as PreviewClientEvent
from openai.types.beta.realtime import realtime_server_event as beta_events
from openai.types.realtime import RealtimeClientEvent as GAClientEvent
from openai.types.realtime import realtime_server_event as ga_events
from openai.types.realtime.realtime_session_create_response import (
    RealtimeSessionCreateResponse,
)
from pydantic import BaseModel, TypeAdapter

GA_ADAPTER: TypeAdapter[Any] = TypeAdapter(ga_events.RealtimeServerEvent)
BETA_ADAPTER: TypeAdapter[Any] = TypeAdapter(beta_events.RealtimeServerEvent)
SESSION_ADAPTER: TypeAdapter[Any] = TypeAdapter(RealtimeSessionCreateResponse)
CLIENT_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "ga": TypeAdapter(GAClientEvent), "preview": TypeAdapter(PreviewClientEvent)}


def _extras(model: BaseModel, path: str) -> list[str]:
    """Every field present in the data that the model does not declare."""
    found = [f"{path}.{k}" for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        found += _walk(value, f"{path}.{name}")
    return found


def _walk(value: Any, path: str) -> list[str]:
    if isinstance(value, BaseModel):
        return _extras(value, path)
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _walk(v, f"{path}[{i}]")]
    return []


def validate_client_event(event: dict[str, Any], dialect: str) -> None:
    """Raise unless ``event`` is a valid client event of ``dialect`` with no unknown field."""
    adapter = CLIENT_ADAPTERS["ga" if dialect == "ga" else "preview"]
    model = adapter.validate_python(event)
    assert model.type == event["type"], (model.type, event["type"])
    extras = _extras(model, event["type"])
    assert not extras, f"fields not in the openai model: {extras}"


def assert_conforms(event: dict[str, Any], dialect: str = "ga") -> None:
    """Validate a server event against the openai package's models, strictly.

    The package's models accept unknown fields, so validation alone would let a misspelt
    field through: every field must also be one the model declares. The GA session object
    is checked against ``RealtimeSessionCreateResponse`` (which declares ``id``,
    ``object`` and ``expires_at``, sent by the real service in ``session.created``).
    """
    adapter = GA_ADAPTER if dialect == "ga" else BETA_ADAPTER
    model = adapter.validate_python(event)
    assert model.type == event["type"]
    extras = _extras(model, event["type"])
    if dialect == "ga" and event["type"] in ("session.created", "session.updated"):
        extras = [e for e in extras if not e.startswith(f"{event['type']}.session.")]
        session = SESSION_ADAPTER.validate_python(event["session"])
        extras += _extras(session, "session")
    elif event["type"] in ("session.created", "session.updated"):
        # The beta Session model declares neither; the emulator sends both in the preview
        # dialect too because clients read the expiry from session.created
        # (docs/realtime-protocol.md §4).
        allowed = {f"{event['type']}.session.object", f"{event['type']}.session.expires_at"}
        extras = [e for e in extras if e not in allowed]
    assert not extras, f"fields the models do not declare: {extras}"
