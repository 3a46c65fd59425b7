"""Durations of freshness rules: ``"24h"``, ``"1h30m"``, seconds."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """Seconds from ``"24h"``, ``"2d"``, ``"1h30m"``, ``"90s"``, ``"500ms"``, ``"1w"`` or a number of seconds.

    :raises ValueError: for anything else, or a duration that is not positive.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration like '24h', '2d', '30m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_DURATION.pattern})+", text, re.IGNORECASE):
            seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _DURATION.findall(text))
        else:
            raise ValueError("must be a duration like '24h', '2d', '1h30m', '90s' or a number of seconds")
    else:
        raise ValueError("must be a duration like '24h', '2d', '30m' or a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a positive duration")
    return seconds
