"""Loading dialplan files: every error names file, line and field; the examples load."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from bridge.dialplans import load_dialplan_file, load_dialplans
from bridge.dialplans.loader import PACKAGED_DIR
from bridge.dialplans.locate import TomlLocator
from bridge.errors import DialplanError

DATA = Path(__file__).parent / "data" / "dialplans"
BROKEN = DATA / "broken"


def marked_line(path: Path) -> int:
    """The line a broken file marks with ``# ERROR`` (never line 1 in these files)."""
    lines = path.read_text("utf-8").splitlines()
    marked = [n for n, line in enumerate(lines, 1) if line.rstrip().endswith("# ERROR")]
    assert len(marked) == 1, path
    return marked[0]


# file -> (field, words of the message)
BROKEN_CASES = {
    "unknown_voice.toml": ("agent.voice", "unknown voice 'nova'"),
    "dtmf_unknown_target.toml": ("dtmf.actions.1.target", "unknown target 'sales'"),
    "fallback_unknown_target.toml": ("fallback.target", "unknown target 'operator'"),
    "tool_not_registered.toml": ("tools[1]", "no tool 'check_weather'"),
    "bad_regex.toml": ("match.called", "bad regular expression"),
    "misspelt_key.toml": ("limits.caller_silence", "unknown setting"),
    "wrong_type.toml": ("limits.max_call_s", "valid number"),
    "missing_env.toml": ("webhook[1].headers.Authorization",
                         "VOICEBRIDGE_TEST_UNSET_TOKEN is not set"),
    "webhook_schema.toml": ("webhook[0].parameters.properties.order_id.format",
                            "unsupported schema keyword 'format'"),
    "webhook_host_placeholder.toml": ("webhook[0].url", "only after the host"),
    "python_import.toml": ("python[0].function", "cannot import no_such_module_here"),
    "bad_target_uri.toml": ("targets.support.uri", "neither a sip:"),
    "bad_digit.toml": ("dtmf.actions.X", "not a DTMF digit"),
    "declared_not_enabled.toml": ("webhook[0].name", "declared but not enabled"),
    "transfer_without_targets.toml": ("tools[1]", "needs at least one entry in [targets]"),
    "missing_required.toml": ("webhook[1].description", "Field required"),
    "bad_tones.toml": ("fallback.tones", "not a tone spec"),
    "semantic_vad_threshold.toml": ("agent.turn_detection", "not semantic_vad"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
def test_broken_file_names_file_line_and_field(name: str) -> None:
    path = BROKEN / name
    field, words = BROKEN_CASES[name]
    with pytest.raises(DialplanError) as info:
        load_dialplan_file(path, env={})
    err = info.value
    assert err.file == str(path)
    assert err.line == marked_line(path)
    assert err.field == field
    assert words in str(err)
    # The message itself carries all three, for an operator reading a log line.
    assert str(err).startswith(f"{path}:{err.line}: {field}: ")


def test_every_broken_file_is_covered() -> None:
    assert {p.name for p in BROKEN.glob("*.toml")} == {*BROKEN_CASES, "syntax.toml"}


def test_toml_syntax_error_names_the_line() -> None:
    path = BROKEN / "syntax.toml"
    with pytest.raises(DialplanError) as info:
        load_dialplan_file(path, env={})
    assert info.value.line == 6
    assert info.value.field == "instructions"
    assert "TOML syntax" in str(info.value)


def test_missing_env_var_is_resolved_when_set() -> None:
    plan = load_dialplan_file(BROKEN / "missing_env.toml",
                              env={"VOICEBRIDGE_TEST_UNSET_TOKEN": "s3cret-value"})
    assert plan.tools.names == ["lookup", "order_status"]
    # A header value is a secret: never in a repr.
    assert "s3cret-value" not in repr(plan.tools.get("order_status"))


def test_two_defaults_point_at_the_second() -> None:
    folder = DATA / "two-defaults"
    with pytest.raises(DialplanError) as info:
        load_dialplans(folder)
    err = info.value
    assert err.file == str(folder / "b.toml")
    assert err.line == 2
    assert err.field == "match.default"
    assert "a.toml is already the default" in str(err)


def test_no_default(tmp_path: Path) -> None:
    shutil.copy(DATA / "good" / "browser.toml", tmp_path)
    with pytest.raises(DialplanError, match="no default dialplan"):
        load_dialplans(tmp_path)


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DialplanError, match=r"no dialplan files"):
        load_dialplans(tmp_path)
    with pytest.raises(DialplanError, match="no such file"):
        load_dialplans(tmp_path / "nope")


def test_packaged_examples_load() -> None:
    plans = load_dialplans(PACKAGED_DIR, env={})
    assert len(plans) == 5
    echo, desk, unhurried = plans["echo"], plans["front-desk"], plans["unhurried"]
    voicemail = plans.match(called="5000", caller="+15557654321", source="sip")
    gatekeeper = plans.match(called="4000", caller="+15557654321", source="sip")
    assert gatekeeper.name == "gatekeeper" and gatekeeper.turns is not None
    assert voicemail.name == "voicemail" and voicemail.voicemail is not None
    assert echo.voicemail is None
    td = unhurried.session_profile().turn_detection
    assert td is not None and (td.type, td.eagerness) == ("semantic_vad", "low")
    assert plans.match(called="3000", caller="+15557654321", source="sip") is unhurried
    assert plans.default is echo
    assert echo.agent.greeting and echo.dtmf.to_model
    assert echo.fallback.announcement == "unavailable-goodbye"
    assert echo.fallback.action == "hangup"

    assert set(desk.targets) == {"sales", "support", "billing", "operator"}
    assert desk.dtmf.actions["0"].kind == "transfer"
    assert desk.dtmf.actions["0"].target == "operator"
    assert (desk.fallback.action, desk.fallback.target) == ("transfer", "operator")
    assert desk.fallback.announcement == "unavailable-transfer"
    assert desk.tools.names == ["transfer_call", "hang_up", "opening_hours", "order_status"]
    assert plans.match(called="2000", caller="+15557654321", source="sip") is desk
    assert plans.match(called="4711", caller="+15557654321", source="sip") is echo


def test_session_profile_of_front_desk() -> None:
    desk = load_dialplans(PACKAGED_DIR, env={})["front-desk"]
    profile = desk.session_profile()
    assert profile.voice == "coral"
    assert profile.audio_format == "pcm16"
    assert profile.instructions.startswith("You are the receptionist")
    assert profile.turn_detection is not None
    assert profile.turn_detection.type == "server_vad"
    assert profile.turn_detection.silence_duration_ms == 450
    assert profile.transcription_model == "gpt-4o-mini-transcribe"
    assert profile.transcription_language == "en"     # from [agent] language
    assert profile.noise_reduction == "near_field"
    specs = {spec.name: spec for spec in profile.tools}
    assert list(specs) == ["transfer_call", "hang_up", "opening_hours", "order_status"]
    target = specs["transfer_call"].parameters["properties"]["target"]
    assert target["enum"] == ["sales", "support", "billing", "operator"]
    # The model sees names and descriptions, never the URIs.
    assert "pbx.example.com" not in str(specs["transfer_call"])
    assert specs["order_status"].parameters["required"] == ["order_id"]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), "utf-8")
    return path


def test_g711_profile_follows_the_leg(tmp_path: Path) -> None:
    plan = load_dialplan_file(write(tmp_path, "g.toml", """
        [match]
        default = true
        [agent]
        audio_format = "g711"
        [agent.turn_detection]
        type = "none"
    """))
    assert plan.session_profile().audio_format == "pcmu"
    assert plan.session_profile(leg_g711="pcma").audio_format == "pcma"
    assert plan.session_profile(leg_g711="").audio_format == "pcm16"
    assert plan.session_profile().turn_detection is None


def test_announcement_file_beside_plans_and_tones(tmp_path: Path) -> None:
    shutil.copy(PACKAGED_DIR.parent / "sounds" / "unavailable-goodbye.wav",
                tmp_path / "closed.wav")
    plan = load_dialplan_file(write(tmp_path, "a.toml", """
        [match]
        default = true
        [fallback]
        announcement = "closed.wav"
        tones = "440:200,0:100"
    """))
    assert plan.fallback.announcement == str((tmp_path / "closed.wav").resolve())
    assert plan.fallback.tones == "440:200,0:100"
    # A tone spec written as the announcement is a tone spec.
    plan = load_dialplan_file(write(tmp_path, "b.toml", """
        [match]
        default = true
        [fallback]
        announcement = "440+480:2000,0:4000"
    """))
    assert (plan.fallback.announcement, plan.fallback.tones) == (None, "440+480:2000,0:4000")
    with pytest.raises(DialplanError) as info:
        load_dialplan_file(write(tmp_path, "c.toml", """
            [match]
            default = true
            [fallback]
            announcement = "no-such-sound"
        """))
    assert (info.value.line, info.value.field) == (4, "fallback.announcement")


def test_python_tool_module_beside_plans(tmp_path: Path) -> None:
    (tmp_path / "mytools.py").write_text(textwrap.dedent('''
        async def greet(name: str, punctuation: str) -> str:
            """Say hello to someone."""
            return "hello " + name + punctuation
    '''), "utf-8")
    plan = load_dialplan_file(write(tmp_path, "p.toml", """
        tools = ["greet"]
        [match]
        default = true
        [[python]]
        function = "mytools:greet"
        bind = { punctuation = "!" }
    """))
    tool = plan.tools.get("greet")
    assert tool is not None
    assert tool.description == "Say hello to someone."
    assert list(tool.parameters["properties"]) == ["name"]  # bound ones are hidden
    with pytest.raises(DialplanError) as info:
        load_dialplan_file(write(tmp_path, "q.toml", """
            tools = ["greet"]
            [match]
            default = true
            [[python]]
            function = "mytools:greet"
            bind = { nobody = 1 }
        """))
    assert (info.value.line, info.value.field) == (6, "python[0].bind")
    with pytest.raises(DialplanError, match="bind punctuation: arguments: Input should be"):
        load_dialplan_file(write(tmp_path, "r.toml", """
            tools = ["greet"]
            [match]
            default = true
            [[python]]
            function = "mytools:greet"
            bind = { punctuation = 1.5 }
        """))


# -- the locator ----------------------------------------------------------------------------

LOCATOR_DOC = '''\
title = "x"
[agent]
instructions = """
[fake.table]
voice = "in a string"
"""
voice = 'alloy'

[[webhook]]
name = "a"
[webhook.parameters]
properties.order_id = { type = "string" }

[[webhook]]
name = "b"
headers = { "X-Key" = "v", Authorization = "t" }
list = [
  "one",
  "two", # a comment with "three" = 3
]
"quoted.key" = 1
[[webhook.nested]]
k = 1
[[webhook.nested]]
k = 2
'''


@pytest.mark.parametrize(("path", "value", "line"), [
    (("title",), None, 1),
    (("agent",), None, 2),
    (("agent", "instructions"), None, 3),
    (("agent", "voice"), None, 7),
    (("fake", "table"), None, 1),              # text in a string is not a table
    (("webhook", 0), None, 9),
    (("webhook", 0, "name"), None, 10),
    (("webhook", 0, "parameters"), None, 11),
    (("webhook", 0, "parameters", "properties", "order_id"), None, 12),
    (("webhook", 0, "parameters", "properties", "order_id", "type"), None, 12),
    (("webhook", 1, "name"), None, 15),
    (("webhook", 1, "headers", "Authorization"), None, 16),
    (("webhook", 1, "list", 1), "two", 19),
    (("webhook", 1, "list", 0), "one", 18),
    (("webhook", 1, "quoted.key"), None, 21),
    (("webhook", 1, "nested", 1, "k"), None, 25),
    (("webhook", 1, "missing"), None, 14),     # a missing key: the table's header
])
def test_locator(path: tuple[str | int, ...], value: str | None, line: int) -> None:
    assert TomlLocator(LOCATOR_DOC).line_of(path, value) == line


def leaf_paths(node: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out: list[tuple[str | int, ...]] = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += leaf_paths(value, (*path, key))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for index, value in enumerate(node):
            out += leaf_paths(value, (*path, index))
    return out


def all_toml_files() -> list[Path]:
    files = sorted(DATA.rglob("*.toml")) + sorted(PACKAGED_DIR.glob("*.toml"))
    return [f for f in files if f.name != "syntax.toml"]


@pytest.mark.parametrize("path", all_toml_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_locator_finds_every_key_of_real_files(path: Path) -> None:
    """Every key of every dialplan file in the tree is located on a line that writes it."""
    import tomllib  # noqa: PLC0415

    text = path.read_text("utf-8")
    locator = TomlLocator(text)
    lines = text.splitlines()
    for field_path in leaf_paths(tomllib.loads(text)):
        last = field_path[-1]
        line = lines[locator.line_of(field_path) - 1]
        if isinstance(last, int):
            assert line.lstrip().startswith("[["), (field_path, line)
        else:
            assert last in line, (field_path, line)
