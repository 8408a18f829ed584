"""Dialplans: which agent answers a call, and the tools it may use.

A dialplan is a TOML file an operator edits (see ``plans/echo.toml`` and
``plans/front-desk.toml``). ``load_dialplans(folder)`` validates them all at start-up and
raises ``DialplanError`` naming the file, line and field of the first problem;
``DialplanSet.match(called=, caller=, source=)`` picks the plan for a call; the plan's
``ToolRegistry.dispatch`` runs the model's function calls; ``session_profile()`` is what
the Realtime session is configured with.
"""

from bridge.dialplans.announce import bundled_sounds, load_announcement
from bridge.dialplans.loader import default_dialplans_dir, load_dialplan_file, load_dialplans
from bridge.dialplans.plan import (
    AgentConfig,
    Dialplan,
    DialplanSet,
    DtmfAction,
    DtmfConfig,
    Fallback,
    Limits,
    MatchRule,
)
from bridge.dialplans.tools import (
    Tool,
    ToolContext,
    ToolFailed,
    ToolRegistry,
    ToolResult,
    tool_from_function,
)

__all__ = [
    "AgentConfig",
    "Dialplan",
    "DialplanSet",
    "DtmfAction",
    "DtmfConfig",
    "Fallback",
    "Limits",
    "MatchRule",
    "Tool",
    "ToolContext",
    "ToolFailed",
    "ToolRegistry",
    "ToolResult",
    "bundled_sounds",
    "default_dialplans_dir",
    "load_announcement",
    "load_dialplan_file",
    "load_dialplans",
    "tool_from_function",
]
