"""CloudWatch ``PutMetricData`` request shaping (pure): points -> ``MetricDatum`` s -> requests within the API's
limits.

Limits (AWS CloudWatch ``PutMetricData``): at most 1,000 ``MetricDatum`` per request, at most 1 MB of request
payload, at most 30 dimensions per datum, at most 150 distinct values in a datum's ``Values``. Each datum is
sized as the largest of the protocols botocore may use (the AWS query protocol: every field a URL-encoded
``MetricData.member.N.<path>=<value>&`` parameter), so a batch is never too big whatever the wire format.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from airflow_etl_provider.core.metrics import COUNTER, TIMING, MetricPoint

MAX_DATA_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
MAX_DIMENSIONS = 30
MAX_VALUES_PER_DATUM = 150
_REQUEST_OVERHEAD = 200  # Action, Version, Namespace


def metric_data(points: Sequence[MetricPoint]) -> list[dict[str, Any]]:
    """One datum per metric and label set: counters summed, gauges last value, timings as ``Values`` lists of
    at most :data:`MAX_VALUES_PER_DATUM` each (more observations: more data). Empty labels are left out
    (CloudWatch refuses empty dimension values).

    :raises ValueError: a point with more than :data:`MAX_DIMENSIONS` non-empty labels.
    """
    grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[MetricPoint]] = {}
    for point in points:
        dims = tuple((k, v) for k, v in point.label_items if v != "")
        if len(dims) > MAX_DIMENSIONS:
            raise ValueError(
                f"metric {point.name} has {len(dims)} labels; CloudWatch allows {MAX_DIMENSIONS}"
            )
        grouped.setdefault((point.name, dims), []).append(point)
    data: list[dict[str, Any]] = []
    for (name, dims), group in grouped.items():
        dimensions = [{"Name": k, "Value": v[:1024]} for k, v in dims]
        kind = group[0].kind
        unit = "Count" if kind == COUNTER else ("Seconds" if name.endswith("_seconds") else "None")
        if kind == TIMING:
            values = [p.value for p in group]
            for start in range(0, len(values), MAX_VALUES_PER_DATUM):
                data.append(
                    {
                        "MetricName": name,
                        "Dimensions": dimensions,
                        "Unit": unit,
                        "Values": values[start : start + MAX_VALUES_PER_DATUM],
                    }
                )
        else:
            value = sum(p.value for p in group) if kind == COUNTER else group[-1].value
            data.append({"MetricName": name, "Dimensions": dimensions, "Unit": unit, "Value": value})
    return data


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(f"{prefix}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value, start=1):
            yield from _flatten(f"{prefix}.member.{i}", item)
    else:
        yield prefix, repr(value) if isinstance(value, float) else str(value)


def datum_size(datum: Mapping[str, Any], index: int = MAX_DATA_PER_REQUEST) -> int:
    """The bytes ``datum`` takes in a query-protocol request at position ``index`` (an upper bound for any
    protocol botocore uses)."""
    return sum(
        len(quote(k, safe=".")) + len(quote(v, safe="")) + 2
        for k, v in _flatten(f"MetricData.member.{index}", datum)
    )


def batches(
    data: Sequence[Mapping[str, Any]],
    *,
    max_data: int = MAX_DATA_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> list[list[Mapping[str, Any]]]:
    """Split ``data`` into requests of at most ``max_data`` data and ``max_bytes`` bytes each, in order.

    :raises ValueError: a single datum larger than ``max_bytes``.
    """
    out: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] = []
    size = _REQUEST_OVERHEAD
    for datum in data:
        n = datum_size(datum)
        if n + _REQUEST_OVERHEAD > max_bytes:
            raise ValueError(f"metric {datum.get('MetricName')}: one datum takes {n} bytes, over {max_bytes}")
        if current and (len(current) >= max_data or size + n > max_bytes):
            out.append(current)
            current, size = [], _REQUEST_OVERHEAD
        current.append(datum)
        size += n
    if current:
        out.append(current)
    return out
