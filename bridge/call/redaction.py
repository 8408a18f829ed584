"""Redaction: values a dialplan names (card numbers, ...) kept out of records, events,
logs and, once used, the model's context.

Theory of operation
-------------------
``Redactor`` (sans-I/O) finds and masks matches of the plan's ``[redaction]`` rules: its
regular expressions, and with ``cards`` the built-in card rule (13 to 19 digits, single
spaces or dashes between them allowed, passing the Luhn check, so an order number of the
same length is left alone). ``mask_fragment`` is for text that arrives in pieces (a
transcript delta): a piece cannot be matched whole, so with ``cards`` every run of four or
more digits is masked too.

``CallRedaction`` applies it to one call:

* the call's events: ``call.transcript`` and ``call.transcript_delta`` are masked before
  the dashboard, a browser caller's data channel or anything else sees them (``wrap``);
* the record: the transcript, the tool calls' arguments and outputs and the errors are
  masked in place (``mask_record``) before every save (by the ``Recorder``) and whenever
  the call announces an event (what it announces has just entered the record), so no
  store, page (a live call's included) or export holds the value;
* the model's context: a tool's output goes to the model masked (the tool needed the
  value, the model does not); a caller turn whose transcript matched is remembered (by item id);
  when a tool whose arguments matched has run and its output has been sent,
  ``after_tool`` deletes that function call's item and the remembered caller items
  (``conversation.item.delete``), each once; the next response no longer sees the value.

The bridge's own log lines never carry transcripts or tool arguments (tool calls are
logged by name). With ``cards``, keys the caller types for the model (a card number keyed
in) are logged, recorded and announced as ``*`` (``dtmf_shown``); the model gets them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge import metrics
from bridge.call.events import CallEvent, TranscriptAdded, TranscriptDelta
from bridge.dialplans.recording import RedactionPolicy

if TYPE_CHECKING:
    from bridge.call.call import Call
    from bridge.call.records import CallRecord

CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){3,}")
_MAX_REMEMBERED = 64


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    """Finds and masks one plan's redacted values."""

    def __init__(self, policy: RedactionPolicy) -> None:
        self.policy = policy
        self.mask_text = policy.mask
        self._patterns = [re.compile(p) for p in policy.patterns]

    def _spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        if self.policy.cards:
            for m in CARD.finditer(text):
                if luhn_ok(re.sub(r"\D", "", m.group())):
                    spans.append(m.span())
        for rx in self._patterns:
            spans.extend(m.span() for m in rx.finditer(text) if m.end() > m.start())
        return spans

    def found(self, text: str) -> bool:
        return bool(text) and bool(self._spans(text))

    def mask(self, text: str) -> str:
        if not text:
            return text
        spans = sorted(self._spans(text))
        if not spans:
            return text
        out: list[str] = []
        at = 0
        for start, end in spans:
            if end <= at:
                continue
            out.append(text[at:max(start, at)])
            out.append(self.mask_text)
            at = end
        out.append(text[at:])
        return "".join(out)

    def mask_fragment(self, text: str) -> str:
        masked = self.mask(text)
        if self.policy.cards:
            masked = _DIGIT_RUN.sub(self.mask_text, masked)
        return masked


class CallRedaction:
    """Redaction for one call (see the module docstring)."""

    def __init__(self, call: Call, policy: RedactionPolicy) -> None:
        self._call = call
        self.redactor = Redactor(policy)
        #: caller items whose transcript held a value, not yet deleted upstream
        self.caller_items: list[str] = []
        self.deleted: list[str] = []

    def wrap(self, hook: Callable[[CallEvent], None] | None) -> Callable[[CallEvent], None]:
        """The call's event hook, masking transcripts (and the live record) first."""
        r = self.redactor
        record = self._call.record

        def masked(event: CallEvent) -> None:
            if isinstance(event, TranscriptDelta):
                event = dataclasses.replace(event, delta=r.mask_fragment(event.delta))
            else:
                # What the event announces is in the live record already (a transcript
                # line, a tool call, a trimmed line at a barge-in): masked before anyone
                # can read it there, not only at the next save.
                self.mask_record(record)
                if isinstance(event, TranscriptAdded):
                    event = dataclasses.replace(event, text=r.mask(event.text))
            if hook is not None:
                hook(event)

        return masked

    def dtmf_shown(self, digit: str, kind: str) -> str:
        """How a caller's key press is logged, recorded and announced: with ``cards``, a
        key typed for the model (data entry: a card number keyed in) is ``*``; the model
        still gets the key. Menu keys (transfer, say, hang up) keep their digit."""
        return "*" if self.redactor.policy.cards and kind == "model" else digit

    def user_transcript(self, item_id: str, text: str) -> None:
        if self.redactor.found(text) and item_id not in self.caller_items:
            self.caller_items.append(item_id)
            del self.caller_items[:-_MAX_REMEMBERED]

    async def after_tool(self, item_id: str, arguments: str) -> None:
        """A tool has run and its output was sent: if its arguments held a value, take it
        (and the caller's turns that said it) out of the model's context."""
        if not self.redactor.found(arguments):
            return
        client = self._call.client
        if client is None or not self._call.upstream_usable:
            return
        delete = getattr(client, "delete_item", None)
        if delete is None:
            return
        items, self.caller_items = [*self.caller_items, item_id], []
        for item in items:
            if item in self.deleted:
                continue
            if await delete(item):
                self.deleted.append(item)
                metrics.REDACTED_ITEMS.inc()
        self._call.log.info("redaction: %d item(s) deleted from the conversation",
                            len(items))

    def mask_record(self, record: CallRecord) -> None:
        """Mask the record in place (run before every save)."""
        r = self.redactor
        record.transcript[:] = [
            e if not r.found(e.text) else dataclasses.replace(e, text=r.mask(e.text))
            for e in record.transcript]
        record.tool_calls[:] = [_masked_tool(r, t) for t in record.tool_calls]
        record.errors[:] = [r.mask(e) for e in record.errors]


def _masked_tool(r: Redactor, t: Any) -> Any:
    if not (r.found(t.arguments) or r.found(t.output) or r.found(t.error or "")):
        return t
    return dataclasses.replace(t, arguments=r.mask(t.arguments), output=r.mask(t.output),
                               error=r.mask(t.error) if t.error else t.error)




def attach_redaction(call: Call) -> CallRedaction | None:
    """The call's redaction, wired into its events and saved records; None without it."""
    if not call.dialplan.redaction.active:
        return None
    redaction = CallRedaction(call, call.dialplan.redaction)
    call._on_event = redaction.wrap(call._on_event)
    call.recorder.redact = redaction.mask_record
    return redaction


__all__ = ["CARD", "CallRedaction", "Redactor", "attach_redaction", "luhn_ok"]
