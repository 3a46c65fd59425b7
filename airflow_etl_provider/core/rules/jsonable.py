"""Values made JSON-able for reports, XComs and history rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID


def to_jsonable(value: Any) -> Any:
    """``value`` converted for ``json.dumps``: datetimes/dates/times ISO 8601, ``Decimal`` and ``UUID`` as
    strings, ``timedelta`` in seconds, bytes as hex, non-finite floats as strings, rows (``asDict``),
    mappings and sequences recursively; anything else unknown as ``str``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    as_dict = getattr(value, "asDict", None)
    if callable(as_dict):
        return to_jsonable(as_dict(recursive=True))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return str(value)
