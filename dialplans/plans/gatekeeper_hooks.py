"""Turn hooks of the shipped ``gatekeeper`` plan ([turns] hook = "gatekeeper_hooks:screen").

A hook gets the caller's finished turn and decides the agent's reply: ``True`` (or
``None``) answers as usual, a string answers with that text added to the agent's
instructions for this one reply, ``False`` keeps the agent silent (the turn stays in the
conversation, so the next answer still knows it).
"""

from __future__ import annotations

from bridge.dialplans.turns import TurnContext

#: what callers must not be encouraged to read out on a recorded line
SENSITIVE = ("card number", "credit card", "password", "pin number", "social security")

CAUTION = ("The caller may have read out a card number, a password or a PIN. Do not repeat "
           "any of it; tell them kindly never to share it on the phone, and go on.")
FIRST_TURN = "This is the caller's first request on this line: confirm briefly what they need."


async def screen(turn: TurnContext) -> bool | str | None:
    """Answer every turn; add a caution where the caller said something sensitive."""
    text = (turn.transcript or "").lower()
    if any(word in text for word in SENSITIVE):
        return CAUTION
    if not text.strip(" .") and turn.transcript is not None:
        return False                     # an empty transcript: a cough, a door; stay quiet
    if turn.turn == 1:
        return FIRST_TURN
    return True
