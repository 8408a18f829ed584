"""Tools of the front-desk dialplan (``[[python]] function = "frontdesk_tools:..."``).

An operator's module: it lives beside the dialplan files and is imported from there.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from zoneinfo import ZoneInfo

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_RULE = re.compile(
    r"^(?P<first>[A-Z][a-z]{2})(?:-(?P<last>[A-Z][a-z]{2}))?\s+"
    r"(?P<open>\d{2}:\d{2})-(?P<close>\d{2}:\d{2})$"
)


def parse_hours(spec: str) -> dict[int, list[tuple[time, time]]]:
    """``"Mon-Fri 08:30-18:00; Sat 09:00-13:00"`` -> weekday -> [(open, close)]."""
    week: dict[int, list[tuple[time, time]]] = {day: [] for day in range(7)}
    for rule in filter(None, (part.strip() for part in spec.split(";"))):
        m = _RULE.match(rule)
        if m is None or m["first"] not in DAYS or (m["last"] or m["first"]) not in DAYS:
            raise ValueError(f"opening hours rule {rule!r}: write like 'Mon-Fri 08:30-18:00'")
        first, last = DAYS.index(m["first"]), DAYS.index(m["last"] or m["first"])
        span = time.fromisoformat(m["open"]), time.fromisoformat(m["close"])
        for day in range(first, last + 1):
            week[day].append(span)
    return week


def is_open(now: datetime, hours: str) -> bool:
    """Whether ``now`` (an aware local time) falls inside ``hours``."""
    moment = now.time().replace(tzinfo=None)
    return any(start <= moment < end for start, end in parse_hours(hours)[now.weekday()])


async def opening_hours(timezone: str, hours: str) -> dict[str, object]:
    """Whether the office is open right now, with the local time and the opening hours.

    Args:
        timezone: IANA time zone of the office (bound in the dialplan).
        hours: Opening hours, e.g. "Mon-Fri 08:30-18:00; Sat 09:00-13:00" (bound).
    """
    now = datetime.now(ZoneInfo(timezone))
    return {
        "open_now": is_open(now, hours),
        "local_time": now.strftime("%A %H:%M"),
        "timezone": timezone,
        "opening_hours": hours,
    }
