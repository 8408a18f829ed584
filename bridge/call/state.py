"""The lifecycle of one call, as an explicit state machine.

Theory of operation
-------------------
A call is always in exactly one ``CallState``. It moves only by a ``Trigger`` that the
table ``TRANSITIONS`` allows from that state; everything else about the call (whether
caller audio may go upstream, whether a fallback is running, whether the call is over) is
read off the state, never off a combination of flags::

    SETTING_UP ──start──▶ CONNECTING ──connected──▶ GREETING ──greeted──▶ CONVERSING
                              │          (no greeting: straight to CONVERSING)   │  ▲
                              │                                    reconnecting  │  │ reconnected
                              │                                                  ▼  │
                              │                                            RECONNECTING
                              │   transfer ─▶ TRANSFERRING ─▶ transfer_failed ─▶ back where it was
                              └─ upstream_failed (from any live state) ─▶ FALLING_BACK
    any live state ──an end reason──▶ ENDING ──finished──▶ ENDED

Ending reasons are triggers too, and not every reason is legal everywhere: a call can be
``transferred`` only while a transfer is under way, the agent can hang up only once it
talks, the caller's silence counts only once the agent can answer. The first legal end
reason wins; later ones are ignored (the call is already ``ENDING``). A trigger the table
does not allow is a logged error and changes nothing: it names a bug, never a caller's
doing, so the call goes on rather than being cut off.

A transfer can start from any talking state, or while connecting (a transfer key pressed
before the agent is there). While it is pending the conversation's own moves (connected,
greeted, reconnecting, reconnected) are legal and remembered in ``resume``, the state
underneath the transfer; a failed transfer goes back to it, so a call that connected or
started reconnecting meanwhile carries on from there.

Like h11's ``_state.py``, this module is pure: no I/O, no clock. ``CallStateMachine.fire``
returns whether the move happened; the ``Call`` acts on it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable


class CallState(enum.Enum):
    SETTING_UP = "setting_up"        # built, not yet running
    CONNECTING = "connecting"        # opening the Realtime session (comfort beep plays)
    GREETING = "greeting"            # connected; the agent's greeting is being produced
    CONVERSING = "conversing"        # caller and agent talk
    RECONNECTING = "reconnecting"    # the upstream dropped; the client is reconnecting
    TRANSFERRING = "transferring"    # a blind transfer (REFER) is pending
    FALLING_BACK = "falling_back"    # upstream lost: announcement, then transfer or hang-up
    ENDING = "ending"                # an end reason won; cleaning up, writing the record
    ENDED = "ended"                  # record written, leg and session released


class Trigger(enum.Enum):
    START = "start"
    CONNECTED = "connected"
    GREET = "greet"                  # connected with a greeting to say
    GREETED = "greeted"              # the greeting's response is done, or the caller spoke
    RECONNECTING = "reconnecting"
    RECONNECTED = "reconnected"
    TRANSFER = "transfer"
    TRANSFER_FAILED = "transfer_failed"
    UPSTREAM_FAILED = "upstream_failed"
    FINISHED = "finished"


class EndReason(enum.Enum):
    """Why a call ended (the record's ``end_reason``)."""

    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
    CALLER_DTMF_HANGUP = "caller_dtmf_hangup"
    MAX_DURATION = "max_duration"
    CALLER_SILENCE = "caller_silence"
    UPSTREAM_LOST = "upstream_lost"
    OPERATOR = "operator"            # hung up from the dashboard or the API
    SHUTDOWN = "shutdown"            # the process is stopping
    ERROR = "error"                  # our own bug: the call could not go on
    SESSION_EXPIRED = "session_expired"  # the far end stopped refreshing the SIP session


S, T, E = CallState, Trigger, EndReason
_LIVE = (S.SETTING_UP, S.CONNECTING, S.GREETING, S.CONVERSING, S.RECONNECTING,
         S.TRANSFERRING, S.FALLING_BACK)
#: End reasons legal in every live state: the far end, the operator, limits, our own end.
_ALWAYS = (E.CALLER_HANGUP, E.CALLER_DTMF_HANGUP, E.MAX_DURATION, E.OPERATOR, E.SHUTDOWN,
           E.ERROR, E.SESSION_EXPIRED)
#: States in which the agent can answer (caller audio goes upstream).
TALKING = frozenset({S.GREETING, S.CONVERSING, S.RECONNECTING, S.TRANSFERRING})

Key = Trigger | EndReason

#: The whole lifecycle: ``TRANSITIONS[state][trigger]`` is the next state.
TRANSITIONS: dict[CallState, dict[Key, CallState]] = {
    S.SETTING_UP: {T.START: S.CONNECTING},
    S.CONNECTING: {T.CONNECTED: S.CONVERSING, T.GREET: S.GREETING,
                   T.UPSTREAM_FAILED: S.FALLING_BACK, T.TRANSFER: S.TRANSFERRING},
    S.GREETING: {T.GREETED: S.CONVERSING, T.RECONNECTING: S.RECONNECTING,
                 T.TRANSFER: S.TRANSFERRING, T.UPSTREAM_FAILED: S.FALLING_BACK,
                 E.AGENT_HANGUP: S.ENDING, E.CALLER_SILENCE: S.ENDING},
    S.CONVERSING: {T.GREETED: S.CONVERSING, T.RECONNECTING: S.RECONNECTING,
                   T.TRANSFER: S.TRANSFERRING, T.UPSTREAM_FAILED: S.FALLING_BACK,
                   E.AGENT_HANGUP: S.ENDING, E.CALLER_SILENCE: S.ENDING},
    S.RECONNECTING: {T.RECONNECTED: S.CONVERSING, T.RECONNECTING: S.RECONNECTING,
                     T.TRANSFER: S.TRANSFERRING, T.UPSTREAM_FAILED: S.FALLING_BACK,
                     E.AGENT_HANGUP: S.ENDING, E.CALLER_SILENCE: S.ENDING},
    # A transfer pauses the conversation's own moves: they are remembered (the machine's
    # ``resume``) and TRANSFER_FAILED goes back to where the conversation got to.
    S.TRANSFERRING: {T.TRANSFER_FAILED: S.CONVERSING, T.CONNECTED: S.TRANSFERRING,
                     T.GREET: S.TRANSFERRING, T.GREETED: S.TRANSFERRING,
                     T.RECONNECTING: S.TRANSFERRING, T.RECONNECTED: S.TRANSFERRING,
                     T.UPSTREAM_FAILED: S.FALLING_BACK, E.TRANSFERRED: S.ENDING,
                     E.AGENT_HANGUP: S.ENDING, E.CALLER_SILENCE: S.ENDING},
    # The fallback's own transfer stays in FALLING_BACK: the conversation is over.
    S.FALLING_BACK: {T.UPSTREAM_FAILED: S.FALLING_BACK, E.TRANSFERRED: S.ENDING,
                     E.UPSTREAM_LOST: S.ENDING, E.AGENT_HANGUP: S.ENDING},
    S.ENDING: {T.FINISHED: S.ENDED},
    S.ENDED: {},
}
for _state in _LIVE:
    for _reason in _ALWAYS:
        TRANSITIONS[_state].setdefault(_reason, S.ENDING)


class CallStateMachine:
    """The state of one call; ``fire`` moves it by the table, or logs and refuses."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[logging.Logger],
                 on_change: Callable[[CallState, CallState, Key], None] | None = None,
                 table: dict[CallState, dict[Key, CallState]] | None = None) -> None:
        self.state = CallState.SETTING_UP
        self.end_reason: EndReason | None = None
        #: while TRANSFERRING: the state the conversation is in underneath the transfer
        self.resume = CallState.CONVERSING
        self._log = log
        self._on_change = on_change
        self._table = TRANSITIONS if table is None else table

    def allows(self, trigger: Key) -> bool:
        return trigger in self._table[self.state]

    def fire(self, trigger: Key) -> bool:
        """Move by ``trigger``; False (and an error logged) when the table forbids it.

        An end reason after the call already ended is not an error: the first one won.
        """
        old = self.state
        new = self._table[old].get(trigger)
        if new is None:
            if isinstance(trigger, EndReason) and old in (S.ENDING, S.ENDED):
                return False
            self._log.error("illegal call transition: %s on %s", old.value, trigger.value)
            return False
        if new is S.TRANSFERRING and old is not S.TRANSFERRING:
            self.resume = old
        elif old is S.TRANSFERRING and not isinstance(trigger, EndReason):
            if trigger is T.TRANSFER_FAILED:
                new = self.resume
            elif new is S.TRANSFERRING:
                self.resume = self._table[self.resume].get(trigger, self.resume)
        self.state = new
        if isinstance(trigger, EndReason):
            self.end_reason = trigger
        if new is not old and self._on_change is not None:
            self._on_change(old, new, trigger)
        return True

    def in_(self, *states: CallState) -> bool:
        return self.state in states

    @property
    def talking(self) -> bool:
        """The agent can answer: caller audio goes upstream, DTMF may go to the model."""
        return self.state in TALKING

    @property
    def over(self) -> bool:
        return self.state in (S.ENDING, S.ENDED)


__all__ = ["TALKING", "TRANSITIONS", "CallState", "CallStateMachine", "EndReason", "Key",
           "Trigger"]
