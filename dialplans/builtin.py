"""Built-in telephony tools: ``transfer_call``, ``hang_up``, ``send_dtmf``.

``transfer_call`` is the tool a caller will try to talk the model into abusing ("transfer
me to +1 555 ..."). Its only argument is an enum of the dialplan's target *names*: the
model is never shown a URI and cannot name a number. The schema refuses anything else
before the handler runs, and the handler checks again against the dialplan's own targets
before the call is asked to transfer, so a target outside the dialplan can never reach
the leg even if the schema were widened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import Field, create_model

from bridge.dialplans.tools import (
    ARGUMENTS_CONFIG,
    Tool,
    ToolContext,
    ToolFailed,
    object_schema,
)

DTMF_PATTERN = r"^[0-9*#A-D]{1,32}$"
TRANSFER_TIMEOUT_S = 30.0
HANG_UP_TIMEOUT_S = 30.0
DTMF_TIMEOUT_S = 15.0


def transfer_tool(targets: Mapping[str, str], descriptions: Mapping[str, str]) -> Tool:
    """``transfer_call(target)`` limited to the names in ``targets``."""
    names = tuple(targets)
    if not names:
        raise ValueError("transfer_call needs at least one entry in [targets]")
    allowed = dict(targets)
    listing = "; ".join(
        f"{name}: {descriptions[name]}" if descriptions.get(name) else name for name in names
    )
    # A Literal built at run time from the plan's names: typed Any for the checker.
    target_type: Any = Literal[names]
    model = create_model(
        "transfer_call_arguments",
        __config__=ARGUMENTS_CONFIG,
        target=(target_type, Field(description=f"Where to transfer the caller. {listing}")),
    )

    async def handler(args: dict[str, Any], ctx: ToolContext) -> Any:
        target = args["target"]
        if target not in allowed:    # defence in depth: never reached through the schema
            raise ToolFailed(f"{target!r} is not a transfer target of this line",
                             kind="refused")
        outcome = await ctx.transfer(target)
        if not outcome.ok:
            raise ToolFailed(f"the transfer to {target} failed", kind="transfer_failed",
                             status=outcome.status)
        return {"transferred": True, "target": target}

    return Tool(
        name="transfer_call",
        description=(
            "Transfer the caller to a person or queue. Only the listed targets exist; "
            "never transfer to a number the caller gives. Tell the caller before "
            "transferring."
        ),
        parameters=object_schema(model),
        arguments=model,
        handler=handler,
        timeout_s=TRANSFER_TIMEOUT_S,
        kind="builtin",
    )


def hang_up_tool() -> Tool:
    """``hang_up(reason)``: end the call once the goodbye has been heard."""
    model = create_model(
        "hang_up_arguments",
        __config__=ARGUMENTS_CONFIG,
        reason=(str, Field(default="conversation finished", max_length=200,
                           description="Why the call ends, for the call record.")),
    )

    async def handler(args: dict[str, Any], ctx: ToolContext) -> Any:
        await ctx.hang_up(args["reason"])
        return {"ok": True}

    return Tool(
        name="hang_up",
        description="End the call. Say goodbye first; the call ends after it has played.",
        parameters=object_schema(model),
        arguments=model,
        handler=handler,
        timeout_s=HANG_UP_TIMEOUT_S,
        kind="builtin",
    )


def send_dtmf_tool() -> Tool:
    """``send_dtmf(digits)``: key presses towards the far end (e.g. an upstream IVR)."""
    model = create_model(
        "send_dtmf_arguments",
        __config__=ARGUMENTS_CONFIG,
        digits=(str, Field(pattern=DTMF_PATTERN,
                           description="Digits to send: 0-9, *, #, A-D; at most 32.")),
    )

    async def handler(args: dict[str, Any], ctx: ToolContext) -> Any:
        await ctx.send_dtmf(args["digits"])
        return {"ok": True, "sent": args["digits"]}

    return Tool(
        name="send_dtmf",
        description="Send DTMF tones (key presses) on the call.",
        parameters=object_schema(model),
        arguments=model,
        handler=handler,
        timeout_s=DTMF_TIMEOUT_S,
        kind="builtin",
    )


#: Built-in tool factories by name; each takes the dialplan's targets and their descriptions.
BUILTINS: dict[str, Callable[[Mapping[str, str], Mapping[str, str]], Tool]] = {
    "transfer_call": transfer_tool,
    "hang_up": lambda _targets, _descriptions: hang_up_tool(),
    "send_dtmf": lambda _targets, _descriptions: send_dtmf_tool(),
}
