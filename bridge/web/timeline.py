"""A call's timeline as an SVG picture, rendered on the server from its ``CallRecord``.

Lanes, top to bottom: caller speech, agent speech, events (barge-ins, tool calls, DTMF) and
per-turn latency. The x axis is seconds since the call started, ``PX_PER_S`` apart (scaled
down for long calls so the picture stays under ``MAX_WIDTH``).

Every drawn element carries its data (``data-at``, ``data-start``, ``data-end`` in seconds
since the start of the call) and a class, so the picture can be checked by parsing it, and
a browser shows a ``<title>`` tooltip on hover.

Speech spans: a record may carry ``speech`` spans (role, start, end in epoch seconds, item
id). Without them they are derived from the transcript: a caller entry is stamped at the
start of its speech and ends at the next turn's end of speech (a turn is stamped at its
first reply frame, ``total_ms`` after the end of speech); an agent entry starts at its first
frame and lasts the audio heard when it was cut off. Where only the text length can tell
(an agent item that was not cut off, a caller utterance with no reply) the span is an
estimate and drawn with the class ``estimated``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

LEFT = 110
RIGHT = 20
PX_PER_S = 40.0
MAX_WIDTH = 1600
MIN_SPAN_S = 10.0

LANES = {            # name: (y, height, label)
    "axis": (8, 16, "time (s)"),
    "caller": (32, 24, "caller speech"),
    "agent": (64, 24, "agent speech"),
    "events": (96, 24, "events"),
    "latency": (128, 24, "turn latency"),
}
HEIGHT = 164

#: Seconds of agent speech per character when only the text is known (about 14 chars/s).
_AGENT_S_PER_CHAR = 0.07
_CALLER_S_PER_CHAR = 0.065


@dataclass(frozen=True)
class Span:
    role: str            # "caller" | "agent"
    start: float         # seconds since the call started
    end: float
    item_id: str = ""
    text: str = ""
    truncated: bool = False
    estimated: bool = False


@dataclass(frozen=True)
class Mark:
    kind: str            # "barge_in" | "truncation" | "tool" | "dtmf" | "latency" | "analysis"
    at: float            # seconds since the call started
    end: float | None = None
    label: str = ""
    ok: bool = True
    item_id: str = ""
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Timeline:
    duration: float
    spans: tuple[Span, ...]
    marks: tuple[Mark, ...]
    live: bool = False


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def timeline_from_record(record: Any, now: float | None = None) -> Timeline:
    """Build the timeline of a ``CallRecord`` (or its ``to_dict()`` form)."""
    t0 = float(_get(record, "started_at", 0.0) or 0.0)
    ended = _get(record, "ended_at")
    live = ended is None
    end = float(ended) if ended is not None else (time.time() if now is None else now)

    def rel(at: float) -> float:
        return max(0.0, float(at) - t0)

    spans = _spans(record, rel, t0, end)
    agent_start = {s.item_id: s.start for s in spans if s.role == "agent"}
    marks = [*_barge_marks(record, rel, t0, agent_start), *_event_marks(record, rel, t0),
             *_latency_marks(record, rel, t0)]
    duration = max(end - t0, *(s.end for s in spans), *(m.end or m.at for m in marks), 0.0)
    return Timeline(duration, tuple(spans), tuple(marks), live)


def _spans(record: Any, rel: Callable[[float], float], t0: float, end: float) -> list[Span]:
    """Who spoke when: the record's own speech spans, else estimated from the transcript."""
    barge_by_item = {str(_get(b, "item_id", "")): b for b in _get(record, "barge_ins", [])}
    spans: list[Span] = []
    explicit = _get(record, "speech", None) or []
    for s in explicit:
        spans.append(Span(str(_get(s, "role", "")), rel(_get(s, "start", t0)),
                          rel(_get(s, "end", end)), str(_get(s, "item_id", "")),
                          truncated=str(_get(s, "item_id", "")) in barge_by_item))
    transcript = list(_get(record, "transcript", []))
    if not explicit:
        spans += _estimated_spans(transcript, barge_by_item, _get(record, "turns", []), rel)
    else:   # attach the text of each item to its span
        texts = {str(_get(e, "item_id", "")): str(_get(e, "text", "")) for e in transcript}
        spans = [Span(s.role, s.start, s.end, s.item_id, texts.get(s.item_id, ""),
                      s.truncated) for s in spans]
    return spans


def _barge_marks(record: Any, rel: Callable[[float], float], t0: float,
                 agent_start: dict[str, float]) -> list[Mark]:
    """Each barge-in, and where the interrupted reply was truncated."""
    marks: list[Mark] = []
    for b in _get(record, "barge_ins", []):
        at = rel(_get(b, "at", t0))
        item = str(_get(b, "item_id", ""))
        heard = int(_get(b, "heard_ms", 0) or 0)
        cut = _get(b, "truncated_ms")
        marks.append(Mark("barge_in", at, label=f"barge-in: heard {heard} ms", item_id=item,
                          extra=(("heard-ms", str(heard)),
                                 ("dropped-ms", str(_get(b, "dropped_ms", 0))))))
        if item in agent_start:
            point = agent_start[item] + (cut if cut is not None else heard) / 1000
            marks.append(Mark("truncation", point, item_id=item,
                              label=f"truncated at {cut if cut is not None else heard} ms",
                              extra=(("audio-end-ms", str(cut if cut is not None else heard)),)))
    return marks


def _event_marks(record: Any, rel: Callable[[float], float], t0: float) -> list[Mark]:
    """Tool calls (drawn over their duration), then DTMF digits."""
    marks: list[Mark] = []
    for tool in _get(record, "tool_calls", []):
        at = rel(_get(tool, "at", t0))
        ok = bool(_get(tool, "ok", True))
        duration = float(_get(tool, "duration_s", 0.0) or 0.0)
        name = str(_get(tool, "name", ""))
        marks.append(Mark("tool", at, at + duration, label=f"{name} ({'ok' if ok else 'error'},"
                          f" {duration * 1000:.0f} ms)", ok=ok, extra=(("name", name),)))
    for d in _get(record, "dtmf", []):
        digit = str(_get(d, "digit", ""))
        marks.append(Mark("dtmf", rel(_get(d, "at", t0)), label=digit,
                          extra=(("direction", str(_get(d, "direction", ""))),
                                 ("action", str(_get(d, "action", ""))))))
    for a in _get(record, "analysis", []):
        if not isinstance(a, dict):
            continue
        result = a.get("result") or {}
        text = ", ".join(f"{k}={v}" for k, v in result.items()) if isinstance(result, dict) \
            else ""
        marks.append(Mark("analysis", rel(float(a.get("at") or t0)),
                          label=f"analysis of turn {a.get('turn')}: "
                                f"{text or a.get('status', '')}",
                          ok=a.get("status") == "ok",
                          extra=(("turn", str(a.get("turn", ""))),
                                 ("status", str(a.get("status", ""))))))
    return marks


def _latency_marks(record: Any, rel: Callable[[float], float], t0: float) -> list[Mark]:
    """Each turn's latency, split into upstream and bridge time."""
    marks: list[Mark] = []
    for turn in _get(record, "turns", []):
        first_frame = rel(_get(turn, "at", t0))
        upstream = float(_get(turn, "upstream_ms", 0.0) or 0.0)
        pipeline = float(_get(turn, "pipeline_ms", 0.0) or 0.0)
        total = upstream + pipeline
        # drawn from the caller's end of speech to the first reply frame sent
        marks.append(Mark("latency", first_frame - total / 1000, first_frame,
                          label=f"{total:.0f} ms (upstream {upstream:.0f}, "
                                f"bridge {pipeline:.0f})",
                          extra=(("total-ms", f"{total:.1f}"), ("upstream-ms", f"{upstream:.1f}"),
                                 ("pipeline-ms", f"{pipeline:.1f}"))))
    return marks


def _speech_stops(turns: Iterable[Any], rel: Any) -> list[float]:
    """When the caller stopped speaking, per turn: the turn's ``at`` is the first reply
    frame, ``total_ms`` before it the end of the caller's speech."""
    stops = []
    for t in turns:
        total = float(_get(t, "upstream_ms", 0.0) or 0.0) + float(_get(t, "pipeline_ms", 0.0)
                                                                  or 0.0)
        stops.append(rel(_get(t, "at", 0.0)) - total / 1000)
    return sorted(stops)


def _estimated_spans(transcript: Iterable[Any], barge_by_item: dict[str, Any],
                     turns: Iterable[Any], rel: Any) -> list[Span]:
    stops = _speech_stops(turns, rel)
    spans: list[Span] = []
    for entry in transcript:
        role = str(_get(entry, "role", ""))
        text = str(_get(entry, "text", ""))
        item = str(_get(entry, "item_id", ""))
        at = rel(_get(entry, "at", 0.0))
        if role == "agent":
            barge = barge_by_item.get(item)
            if barge is not None:
                length = int(_get(barge, "heard_ms", 0) or 0) / 1000
            else:
                length = max(0.3, len(text) * _AGENT_S_PER_CHAR)
            spans.append(Span("agent", at, at + length, item, text,
                              truncated=barge is not None, estimated=barge is None))
        else:
            # A caller entry is stamped when its speech started; it ended at the first
            # end of speech after that (a turn), else estimate from the text.
            after = [t for t in stops if t > at]
            end = after[0] if after else at + min(8.0, max(0.4, len(text) * _CALLER_S_PER_CHAR))
            spans.append(Span("caller", at, end, item, text, estimated=not after))
    return spans


def scale_for(duration: float) -> float:
    """Pixels per second for a call of ``duration`` seconds."""
    span = max(duration, MIN_SPAN_S)
    return min(PX_PER_S, (MAX_WIDTH - LEFT - RIGHT) / span)


def render_svg(timeline: Timeline) -> str:
    """The timeline as a standalone SVG document (UTF-8 text)."""
    scale = scale_for(timeline.duration)
    width = LEFT + RIGHT + math.ceil(max(timeline.duration, MIN_SPAN_S) * scale)

    def x(t: float) -> str:
        return f"{LEFT + t * scale:.2f}"

    def w(a: float, b: float) -> str:
        return f"{max(1.0, (b - a) * scale):.2f}"

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
        f'height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" data-left="{LEFT}" '
        f'data-px-per-s="{scale:.4f}" data-duration="{timeline.duration:.3f}" '
        f'data-live="{str(timeline.live).lower()}">',
        "<style>text{font:11px sans-serif;fill:#333}.lane{fill:#f4f5f7}"
        ".speech.caller{fill:#4a90d9}.speech.agent{fill:#2fa36b}.estimated{opacity:.55}"
        ".truncated{stroke:#c0392b;stroke-width:1.5}.barge-in{stroke:#c0392b;stroke-width:2}"
        ".truncation{fill:#c0392b}.tool{fill:#8e44ad}.tool.error{fill:#e67e22}"
        ".dtmf{fill:#222;font-weight:bold}.latency.upstream{fill:#95a5a6}"
        ".latency.pipeline{fill:#f1c40f}.tick{stroke:#bbb}.analysis{fill:#16a085}"
        ".analysis.error{fill:#7f8c8d}</style>",
    ]
    for name, (y, h, label) in LANES.items():
        out.append(f'<text x="4" y="{y + h - 8}">{escape(label)}</text>')
        if name != "axis":
            out.append(f'<rect class="lane" id="lane-{name}" x="{LEFT}" y="{y}" '
                       f'width="{width - LEFT - RIGHT}" height="{h}"/>')
    out.append(_axis(timeline.duration, scale))
    for role in ("caller", "agent"):
        y, h, _ = LANES[role]
        out.append(f'<g id="{role}-speech">')
        for s in (s for s in timeline.spans if s.role == role):
            classes = ["speech", role] + (["truncated"] if s.truncated else []) + \
                      (["estimated"] if s.estimated else [])
            tip = s.text or f"{role} speech"
            out.append(
                f'<rect class="{" ".join(classes)}" x="{x(s.start)}" y="{y + 3}" '
                f'width="{w(s.start, s.end)}" height="{h - 6}" data-start="{s.start:.3f}" '
                f'data-end="{s.end:.3f}" data-item={quoteattr(s.item_id)}>'
                f"<title>{escape(tip)}</title></rect>")
        out.append("</g>")
    out.append(_marks(timeline.marks, x, w))
    out.append("</svg>")
    return "\n".join(out)


def _axis(duration: float, scale: float) -> str:
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800)
                if s * scale >= 40)
    y0 = LANES["caller"][0]
    y1 = LANES["latency"][0] + LANES["latency"][1]
    parts = ['<g id="axis">']
    t = 0
    while t <= max(duration, MIN_SPAN_S) + 1e-9:
        px = LEFT + t * scale
        parts.append(f'<line class="tick" x1="{px:.2f}" x2="{px:.2f}" y1="{y0}" y2="{y1}"/>'
                     f'<text x="{px + 2:.2f}" y="20">{t}</text>')
        t += step
    parts.append("</g>")
    return "".join(parts)


def _data(mark: Mark) -> str:
    attrs = "".join(f" data-{k}={quoteattr(v)}" for k, v in mark.extra)
    return f' data-at="{mark.at:.3f}"' + (f' data-item={quoteattr(mark.item_id)}'
                                          if mark.item_id else "") + attrs


def _marks(marks: Iterable[Mark], x: Any, w: Any) -> str:
    ey, eh, _ = LANES["events"]
    cy = LANES["caller"][0]
    ay, ah, _ = LANES["agent"]
    ly, lh, _ = LANES["latency"]
    groups: dict[str, list[str]] = {"barge-ins": [], "tools": [], "dtmf": [], "latency": [],
                                    "analysis": []}
    for m in marks:
        title = f"<title>{escape(m.label)}</title>"
        if m.kind == "barge_in":
            groups["barge-ins"].append(
                f'<line class="barge-in"{_data(m)} x1="{x(m.at)}" x2="{x(m.at)}" y1="{cy}" '
                f'y2="{ey + eh}">{title}</line>')
        elif m.kind == "truncation":
            groups["barge-ins"].append(
                f'<circle class="truncation"{_data(m)} cx="{x(m.at)}" cy="{ay + ah / 2}" '
                f'r="4">{title}</circle>')
        elif m.kind == "tool":
            end = m.end if m.end is not None else m.at
            state = "ok" if m.ok else "error"
            groups["tools"].append(
                f'<rect class="tool {state}"{_data(m)} data-end="{end:.3f}" x="{x(m.at)}" '
                f'y="{ey + 4}" width="{w(m.at, end)}" height="{eh - 8}">{title}</rect>')
        elif m.kind == "dtmf":
            groups["dtmf"].append(
                f'<text class="dtmf"{_data(m)} x="{x(m.at)}" y="{ey + eh - 6}">'
                f"{escape(m.label)}{title}</text>")
        elif m.kind == "analysis":
            state = "ok" if m.ok else "error"
            groups["analysis"].append(
                f'<circle class="analysis {state}"{_data(m)} cx="{x(m.at)}" cy="{ey + 8}" '
                f'r="4">{title}</circle>')
        elif m.kind == "latency":
            up = float(dict(m.extra).get("upstream-ms", "0")) / 1000
            end = m.end if m.end is not None else m.at
            groups["latency"].append(
                f'<g class="turn"{_data(m)}>{title}'
                f'<rect class="latency upstream" x="{x(m.at)}" y="{ly + 4}" '
                f'width="{w(m.at, m.at + up)}" height="{lh - 8}"/>'
                f'<rect class="latency pipeline" x="{x(m.at + up)}" y="{ly + 4}" '
                f'width="{w(m.at + up, end)}" height="{lh - 8}"/></g>')
    return "".join(f'<g id="{name}">{"".join(items)}</g>' for name, items in groups.items())
