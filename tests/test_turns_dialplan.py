"""``[turns]`` in a dialplan file: what loads, the defaults a plan gets when its server
does not answer turns, and the errors (with the field) for what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.dialplans import load_dialplan_file
from bridge.dialplans.loader import PACKAGED_DIR, load_dialplans
from bridge.dialplans.plan import Dialplan
from bridge.errors import DialplanError

BASE = """
tools = ["hang_up"]

[match]
default = true

[agent.turn_detection]
{td}
{turns}
"""

NO_REPLY = "create_response = false"


def load(tmp: Path, td: str, turns: str = "", hooks: str = "") -> Dialplan:
    path = tmp / "p.toml"
    path.write_text(BASE.format(td=td, turns=turns))
    if hooks:
        (tmp / "hooks.py").write_text(hooks)
    return load_dialplan_file(path, env={})


def test_defaults_where_the_server_does_not_answer(tmp_path: Path) -> None:
    manual = load(tmp_path, 'type = "none"')
    turns = manual.turns
    assert turns is not None and turns.kind == "answer" and turns.end_silence_ms == 700
    assert not turns.early_barge_in
    server = load(tmp_path, 'type = "server_vad"')
    assert server.turns is None


def test_python_hook_and_tool_hook_resolve(tmp_path: Path) -> None:
    hooks = "async def decide(turn):\n    return True\n\ndef sync(turn):\n    return True\n"
    plan = load(tmp_path, NO_REPLY, '[turns]\nhook = "hooks:decide"', hooks)
    assert plan.turns.kind == "python" and plan.turns.python is not None
    plan = load(tmp_path, NO_REPLY, '[turns]\nhook = "hang_up"')
    assert plan.turns.kind == "tool" and plan.turns.tool == "hang_up"
    with pytest.raises(DialplanError, match="async function") as info:
        load(tmp_path, NO_REPLY, '[turns]\nhook = "hooks:sync"', hooks)
    assert info.value.field == "turns.hook"


@pytest.mark.parametrize(("td", "turns", "words"), [
    (NO_REPLY, '[turns]\nhook = "no_such_tool"', "neither answer, instructions"),
    (NO_REPLY, '[turns]\nhook = "nomodule_xyz:fn"', "cannot import nomodule_xyz"),
    (NO_REPLY, '[turns]\nhook = "instructions"', "needs instructions"),
    (NO_REPLY, '[turns]\ninstructions = "x"', "only for hook"),
    ('type = "server_vad"', '[turns]\nhook = "instructions"\ninstructions = "x"',
     "only where the bridge decides"),
    (NO_REPLY, "[turns]\naggressiveness = 4", "less than or equal to 3"),
    (NO_REPLY, "[turns]\nend_silence_ms = 50", "greater than or equal to 200"),
    (NO_REPLY, "[turns]\nearly = true", "unknown setting"),
])
def test_what_cannot_work_is_an_error(tmp_path: Path, td: str, turns: str,
                                      words: str) -> None:
    with pytest.raises(DialplanError, match=words) as info:
        load(tmp_path, td, turns)
    assert info.value.field.startswith("turns"), info.value.field


def test_early_barge_in_alone_under_server_vad(tmp_path: Path) -> None:
    plan = load(tmp_path, 'type = "server_vad"', "[turns]\nearly_barge_in = true")
    assert plan.turns.early_barge_in and plan.turns.kind == "answer"


def test_shipped_gatekeeper() -> None:
    plan = load_dialplans(PACKAGED_DIR, env={})["gatekeeper"]
    assert plan.turns is not None and plan.turns.kind == "python"
    assert plan.turns.early_barge_in
    td = plan.session_profile().turn_detection
    assert td is not None and not td.create_response
