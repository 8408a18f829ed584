"""session.update in both dialects, client-event conformance, and target selection."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.realtime import dialects
from bridge.realtime.config import RealtimeSettings, RealtimeTarget, redact_url
from bridge.realtime.history import History
from bridge.realtime.profile import SessionProfile, ToolSpec, TurnDetection, build_session_update
from tests.support.realtime_oracle import validate_client_event

TOOL = ToolSpec("transfer_call", "Transfer the caller to a human.",
                {"type": "object", "properties": {"target": {"type": "string",
                                                             "enum": ["sales"]}},
                 "required": ["target"]})

PROFILES = [
    SessionProfile(),
    SessionProfile(instructions="Be brief.", voice="marin", audio_format="pcmu",
                   turn_detection=TurnDetection(threshold=0.6, prefix_padding_ms=300,
                                                silence_duration_ms=400,
                                                idle_timeout_ms=8000),
                   transcription_model="my-transcribe-deployment",
                   transcription_language="en", noise_reduction="near_field",
                   tools=(TOOL,), max_output_tokens=800),
    SessionProfile(audio_format="pcma",
                   turn_detection=TurnDetection(type="semantic_vad", eagerness="low",
                                                interrupt_response=False)),
    SessionProfile(turn_detection=None, noise_reduction="far_field"),
]


@pytest.mark.parametrize("dialect", ["ga", "preview"])
@pytest.mark.parametrize("profile", PROFILES)
def test_session_update_validates_against_openai_models(profile: SessionProfile,
                                                        dialect: str) -> None:
    validate_client_event(build_session_update(profile, dialect), dialect)


def test_ga_session_shape() -> None:
    session = build_session_update(PROFILES[1], "ga")["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert "temperature" not in session and "modalities" not in session
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcmu"}
    assert audio_in["transcription"] == {"model": "my-transcribe-deployment", "language": "en"}
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    assert audio_in["turn_detection"] == {
        "type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300,
        "silence_duration_ms": 400, "idle_timeout_ms": 8000, "create_response": True,
        "interrupt_response": True}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin"}
    assert session["tools"][0]["name"] == "transfer_call"
    assert session["max_output_tokens"] == 800
    default = build_session_update(SessionProfile(), "ga")["session"]
    assert default["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    manual = build_session_update(PROFILES[3], "ga")["session"]
    assert manual["audio"]["input"]["turn_detection"] is None  # explicit null: manual turns


def test_preview_session_shape() -> None:
    session = build_session_update(PROFILES[1], "preview")["session"]
    assert "type" not in session and "audio" not in session
    assert session["input_audio_format"] == session["output_audio_format"] == "g711_ulaw"
    assert session["input_audio_transcription"]["model"] == "my-transcribe-deployment"
    assert session["input_audio_noise_reduction"] == {"type": "near_field"}
    assert session["max_response_output_tokens"] == 800
    assert session["voice"] == "marin"
    # The preview session has no idle_timeout_ms; it is left out there.
    assert "idle_timeout_ms" not in session["turn_detection"]
    assert build_session_update(PROFILES[2], "preview")["session"]["input_audio_format"] == \
        "g711_alaw"
    assert build_session_update(SessionProfile(), "preview")["session"][
        "input_audio_format"] == "pcm16"


def test_profile_validation() -> None:
    with pytest.raises(ConfigError, match="audio_format"):
        SessionProfile(audio_format="g711")
    with pytest.raises(ConfigError, match="turn_detection.type"):
        TurnDetection(type="vad")
    with pytest.raises(ConfigError, match="noise_reduction"):
        SessionProfile(noise_reduction="loud")
    with pytest.raises(ValueError, match="dialect"):
        build_session_update(SessionProfile(), "v2")


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_every_other_client_event_validates(dialect: str) -> None:
    history = History()
    history.user_text("I'd like the sales team")
    history.assistant_item("a1")
    history.assistant_transcript("a1", "Let me transfer you now.")
    events = [
        dialects.user_text_item("Digits pressed: 1 2", dialect),
        dialects.assistant_text_item("Earlier I said hello.", dialect),
        dialects.function_output_item("call_1", '{"ok": true}'),
        dialects.function_call_item("call_1", "transfer_call", '{"target": "sales"}'),
        dialects.truncate_event("item_a", 1234),
        dialects.response_create(None),
        dialects.response_create("Greet the caller."),
        dialects.response_cancel(),
        {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "vb_1"},
        *history.seed_events(dialect),
    ]
    for event in events:
        validate_client_event(event, dialect)
    # The fixed-prefix append the client writes without a JSON encoder is the same event.
    import json  # noqa: PLC0415

    raw = dialects.APPEND_PREFIX + b"AAAA" + dialects.APPEND_SUFFIX
    validate_client_event(json.loads(raw), dialect)


# -- targets --------------------------------------------------------------------------------

def test_azure_ga_is_the_default_with_an_endpoint() -> None:
    s = RealtimeSettings.from_env({"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com/",
                                   "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-realtime",
                                   "AZURE_OPENAI_API_KEY": "k-123"})
    t = s.target()
    assert (t.kind, t.dialect, t.use_entra) == ("azure", "ga", False)
    assert t.url == "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    assert "api-version" not in t.url
    assert "k-123" not in repr(t) and "k-123" not in str(t) and "k-123" not in repr(s)


def test_azure_preview_when_an_api_version_is_set_and_entra_without_key() -> None:
    s = RealtimeSettings.from_env({"AZURE_OPENAI_ENDPOINT": "wss://res.openai.azure.com",
                                   "AZURE_OPENAI_API_VERSION": "2025-04-01-preview"},
                                  {"deployment": "my-dep"})
    t = s.target()
    assert (t.kind, t.dialect, t.use_entra, t.api_key) == ("azure-preview", "preview", True,
                                                            None)
    assert t.url == ("wss://res.openai.azure.com/openai/realtime?"
                     "api-version=2025-04-01-preview&deployment=my-dep")


def test_openai_and_emulator_targets() -> None:
    t = RealtimeSettings.from_env({"OPENAI_API_KEY": "sk-x"}).target()
    assert (t.kind, t.url) == ("openai", "wss://api.openai.com/v1/realtime?model=gpt-realtime")
    t = RealtimeSettings.from_env({"OPENAI_API_KEY": "sk-x",
                                   "OPENAI_REALTIME_MODEL": "gpt-realtime-mini"}).target()
    assert t.url.endswith("?model=gpt-realtime-mini")
    e = RealtimeSettings.from_env({}).target(emulator_url="ws://127.0.0.1:8765")
    assert (e.kind, e.dialect) == ("emulator", "ga")
    assert e.url == "ws://127.0.0.1:8765/openai/v1/realtime?model=gpt-realtime"
    with pytest.raises(ConfigError, match="emulator"):
        RealtimeSettings.from_env({}).target()


def test_env_wins_over_file_and_file_is_validated() -> None:
    s = RealtimeSettings.from_env({"AZURE_OPENAI_DEPLOYMENT_NAME": "from-env"},
                                  {"endpoint": "https://r.example", "deployment": "from-file"})
    assert s.target().url.endswith("model=from-env")
    with pytest.raises(ConfigError, match="unknown key"):
        RealtimeSettings.from_env({}, {"api_key": "inline-secret"})
    with pytest.raises(ConfigError, match="DEPLOYMENT"):
        RealtimeSettings.from_env({"AZURE_OPENAI_ENDPOINT": "https://r.example"}).target()
    with pytest.raises(ConfigError, match="not an https"):
        RealtimeSettings.from_env({"AZURE_OPENAI_ENDPOINT": "r.example",
                                   "AZURE_OPENAI_DEPLOYMENT_NAME": "d"}).target()
    named = RealtimeSettings.from_env({"MY_KEY": "named-key", "AZURE_OPENAI_ENDPOINT":
                                       "https://r.example", "AZURE_OPENAI_DEPLOYMENT_NAME":
                                       "d"}, {"api_key_env": "MY_KEY"}).target()
    assert named.api_key == "named-key" and not named.use_entra


def test_redact_url() -> None:
    url = "wss://r/openai/realtime?api-version=2025-04-01-preview&api-key=SECRET&deployment=d"
    assert redact_url(url) == ("wss://r/openai/realtime?api-version=2025-04-01-preview"
                               "&api-key=***&deployment=d")
    t = RealtimeTarget("azure-preview", url, "preview")
    assert "SECRET" not in repr(t) and "SECRET" not in t.describe()


def test_a_credential_in_the_endpoints_userinfo_is_never_shown() -> None:
    settings = RealtimeSettings.from_env({
        "AZURE_OPENAI_ENDPOINT": "https://svc-user:PASSWORD1@res.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "k", "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-realtime"})
    t = settings.target()
    assert "PASSWORD1" in t.url                     # it is used to connect ...
    for shown in (t.describe(), repr(t), t.safe_url):
        assert "PASSWORD1" not in shown and "svc-user" not in shown    # ... never shown
    assert t.safe_url.startswith("wss://***@res.openai.azure.com/")
    assert redact_url("https://h/x?next=a@b") == "https://h/x?next=a@b"   # not userinfo
