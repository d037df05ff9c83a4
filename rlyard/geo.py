"""Places and times that several layers read alike: great-circle distance, ``HH:MM`` times and
weekday names (the POI tools filter by them, the local-life checklist checks them)."""

from __future__ import annotations

import math
import re

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")   # index 0–6
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(min(1.0, a)))


def minutes(hhmm: str) -> int:
    """Minutes after midnight of ``'HH:MM'``; ValueError says the form it wants."""
    match = _HHMM.match(hhmm.strip())
    if match is None:
        raise ValueError(f"time {hhmm!r} is not HH:MM (24-hour clock), e.g. '08:00' or '19:30'")
    return int(match.group(1)) * 60 + int(match.group(2))


def weekday_index(day: str | int) -> int:
    """0 = Monday ... 6 = Sunday, from a number or an English day name (or its first three
    letters); ValueError says what is valid."""
    if isinstance(day, int) or str(day).isdigit():
        value = int(day)
        if 0 <= value < 7:
            return value
    else:
        text = str(day).strip().lower()
        for index, name in enumerate(WEEKDAYS):
            if text in (name.lower(), name[:3].lower()):
                return index
    raise ValueError(f"weekday {day!r} is not a day: use Monday..Sunday or 0 (Monday)..6 (Sunday)")
