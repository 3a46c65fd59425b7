"""Event-time streaming: the pure rules behind the StreamingWatermarkOperator.

* **Durations** as Spark writes them (``"10 minutes"``, ``"1 hour 30 minutes"``), in microseconds.
* **Windows** (:class:`WindowSpec`): tumbling, sliding and session, with Spark's own window arithmetic
  (``TimeWindowing``: windows aligned to the epoch, ``start <= t < end``).
* **The late rule** (Spark's ``WatermarkSupport``): a (row, window) pair is late when ``window.end <=
  watermark``, ``<=`` and not ``<``; for a session window the row's own session ``[t, t + gap)``.
* **The watermark ledger rule**: batch N is judged with the watermark recorded after batch N-1, and the
  watermark after batch N is ``max(W(N-1), max event time of batch N - delay)``: it never moves backwards, so
  a replayed batch is judged exactly as the first time.
* **Parse-time validation** of the whole operator config (:func:`validate_streaming`), errors naming the field.

Nothing here imports Airflow or Spark: the rules are unit-tested against brute-force models and the
operator's Spark code is property-tested against them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from airflow_etl_provider.core.errors import ConfigError

US_PER = {
    "us": 1, "microsecond": 1, "microseconds": 1,
    "ms": 1_000, "millisecond": 1_000, "milliseconds": 1_000,
    "s": 1_000_000, "sec": 1_000_000, "secs": 1_000_000, "second": 1_000_000, "seconds": 1_000_000,
    "min": 60_000_000, "mins": 60_000_000, "minute": 60_000_000, "minutes": 60_000_000,
    "h": 3_600_000_000, "hour": 3_600_000_000, "hours": 3_600_000_000,
    "d": 86_400_000_000, "day": 86_400_000_000, "days": 86_400_000_000,
    "w": 604_800_000_000, "week": 604_800_000_000, "weeks": 604_800_000_000,
}
_PART = re.compile(r"\s*(\d+)\s*([a-zA-Z]+)\s*")

AGGREGATIONS = ("count", "sum", "avg", "min", "max", "approx_count_distinct")
WINDOW_TYPES = ("tumbling", "sliding", "session")
OUTPUT_MODES = ("append", "update")
SINK_TYPES = ("postgres", "parquet", "kafka")
#: sinks that can only add rows: a window written there cannot be updated later
APPEND_ONLY_SINKS = ("parquet",)
SOURCE_TYPES = ("kafka", "files")
FILE_FORMATS = ("json", "csv", "parquet")


def parse_duration(value: Any, field: str) -> int:
    """A Spark interval string (``"5 minutes"``, ``"1 hour 30 minutes"``, ``"90 s"``) in microseconds.

    :param value: the duration.
    :param field: the config field, named in the error.
    :raises ConfigError: when it does not parse or is not positive.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, "must be a duration such as '10 minutes' or '1 hour 30 minutes'", value=value)
    text = value.strip().lower()
    if text.startswith("interval "):
        text = text[len("interval "):]
    total, pos = 0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        number, unit = int(match.group(1)), match.group(2)
        if unit not in US_PER:
            raise ConfigError(field, f"has an unknown time unit {unit!r}", value=value,
                              allowed=["microseconds", "milliseconds", "seconds", "minutes", "hours", "days",
                                       "weeks"])
        total += number * US_PER[unit]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ConfigError(field, "must be a duration such as '10 minutes' or '1 hour 30 minutes'", value=value)
    if total <= 0:
        raise ConfigError(field, "must be longer than zero", value=value)
    return total


@dataclass(frozen=True)
class WindowSpec:
    """An event-time window.

    :param type: ``tumbling``, ``sliding`` or ``session``.
    :param duration_us: the window length (tumbling, sliding).
    :param slide_us: how far consecutive sliding windows start apart (tumbling: the duration).
    :param gap_us: the session gap (session).
    """

    type: Literal["tumbling", "sliding", "session"]
    duration_us: int = 0
    slide_us: int = 0
    gap_us: int = 0

    @classmethod
    def from_config(cls, window: Any, field: str = "window") -> WindowSpec:
        """Parse ``{"type": "tumbling", "duration": "5 minutes"}`` (sliding: + ``"slide"``; session:
        ``{"type": "session", "gap": "10 minutes"}``)."""
        if not isinstance(window, Mapping):
            raise ConfigError(field, "must be a mapping such as {'type': 'tumbling', 'duration': '5 minutes'}",
                              value=window)
        kind = window.get("type")
        if kind not in WINDOW_TYPES:
            unknown = sorted(str(k) for k in set(window) - {"type", "duration", "slide", "gap"})
            if unknown:  # a misspelt 'type' (or another key): name it
                raise ConfigError(f"{field}.{unknown[0]}", "is not a setting of a window",
                                  allowed=["type", "duration", "slide", "gap"])
            raise ConfigError(f"{field}.type", "is not a supported window type", value=kind, allowed=WINDOW_TYPES)
        allowed = {"tumbling": {"type", "duration"}, "sliding": {"type", "duration", "slide"},
                   "session": {"type", "gap"}}[kind]
        unknown = sorted(set(window) - allowed)
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", f"is not a setting of a {kind} window",
                              allowed=sorted(allowed))
        if kind == "session":
            return cls("session", gap_us=parse_duration(window.get("gap"), f"{field}.gap"))
        duration = parse_duration(window.get("duration"), f"{field}.duration")
        if kind == "tumbling":
            return cls("tumbling", duration_us=duration, slide_us=duration)
        slide = parse_duration(window.get("slide"), f"{field}.slide")
        if slide > duration:
            raise ConfigError(f"{field}.slide", "must not be longer than the window's duration "
                              f"({window.get('duration')!r})", value=window.get("slide"))
        return cls("sliding", duration_us=duration, slide_us=slide)

    def windows_of(self, t_us: int) -> list[tuple[int, int]]:
        """The windows ``(start, end)`` (microseconds) an event at ``t_us`` belongs to, as Spark assigns them.

        Tumbling and sliding: Spark's ``TimeWindowing`` (start aligned to the epoch, ``start <= t < end``),
        oldest first. Session: the row's own session ``[t, t + gap)`` before any merging.
        """
        if self.type == "session":
            return [(t_us, t_us + self.gap_us)]
        # Spark (since SPARK-40821's fix for event times before 1970): the remainder made non-negative, i.e.
        # Python's floor modulo.
        last_start = t_us - t_us % self.slide_us
        n = -(-self.duration_us // self.slide_us)  # ceil: at most this many windows hold t
        out = []
        for i in range(n, -1, -1):
            start = last_start - i * self.slide_us
            end = start + self.duration_us
            if start <= t_us < end:
                out.append((start, end))
        return out


def session_clusters(sessions: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Which sessions merge, as Spark merges them: sorted by start, a session joins the one before it when it
    starts at or before that one's end (touching sessions merge). Returns clusters of indexes into ``sessions``.
    """
    order = sorted(range(len(sessions)), key=lambda i: (sessions[i][0], sessions[i][1]))
    clusters: list[list[int]] = []
    end = None
    for i in order:
        start, stop = sessions[i]
        if end is not None and start <= end:
            clusters[-1].append(i)
            end = max(end, stop)
        else:
            clusters.append([i])
            end = stop
    return clusters


def is_late(window_end_us: int, watermark_us: int) -> bool:
    """Spark's drop rule: a (row, window) pair is late when the window ends at or before the watermark."""
    return window_end_us <= watermark_us


def advance_watermark(previous_us: int, max_event_time_us: int | None, delay_us: int) -> int:
    """The watermark after a batch: ``max(previous, max event time - delay)``; a batch without rows keeps it."""
    if max_event_time_us is None:
        return previous_us
    return max(previous_us, max_event_time_us - delay_us)


@dataclass(frozen=True)
class Aggregate:
    """One output column: ``func(column)`` named ``name`` (``count`` of ``*`` is ``count``)."""

    column: str
    func: str
    name: str


def parse_aggregations(aggregations: Any, columns: Sequence[str] | None, field: str = "aggregations") -> list[Aggregate]:
    """``{"amount": ["sum", "avg"], "*": ["count"]}`` -> aggregates named ``amount_sum``, ``amount_avg``,
    ``count``. ``columns`` (the source schema's, when known) must hold every aggregated column."""
    if not isinstance(aggregations, Mapping) or not aggregations:
        raise ConfigError(field, "must map columns to aggregations, e.g. {'amount': ['sum'], '*': ['count']}",
                          value=aggregations)
    out: list[Aggregate] = []
    for column, funcs in aggregations.items():
        funcs = [funcs] if isinstance(funcs, str) else funcs
        if not isinstance(funcs, Sequence) or not funcs:
            raise ConfigError(f"{field}.{column}", "must be a list of aggregations", value=funcs,
                              allowed=AGGREGATIONS)
        for func in funcs:
            if func not in AGGREGATIONS:
                raise ConfigError(f"{field}.{column}", "has an unknown aggregation", value=func, allowed=AGGREGATIONS)
            if column == "*" and func != "count":
                raise ConfigError(f"{field}.*", "only 'count' applies to '*' (every row)", value=func)
            if column != "*" and columns is not None and column not in columns:
                raise ConfigError(f"{field}.{column}", "is not a column of the source schema", value=column,
                                  allowed=list(columns))
            out.append(Aggregate(column, func, "count" if column == "*" else f"{column}_{func}"))
    names = [a.name for a in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(field, f"names the output column {duplicated[0]!r} twice", value=dict(aggregations))
    return out


def schema_columns(ddl: Any, field: str) -> list[str]:
    """Top-level column names of a DDL schema string (``"a STRING, b DECIMAL(12,2), c STRUCT<x: INT>"``)."""
    if not isinstance(ddl, str) or not ddl.strip():
        raise ConfigError(field, "must be a DDL schema string such as 'order_id STRING, event_time TIMESTAMP'",
                          value=ddl)
    names, depth, current = [], 0, ""
    for ch in ddl + ",":
        if ch in "(<":
            depth += 1
        elif ch in ")>":
            depth -= 1
        if ch == "," and depth == 0:
            part = current.strip()
            if part:
                names.append(part.split()[0].strip("`"))
            current = ""
        else:
            current += ch
    if depth != 0 or not names:
        raise ConfigError(field, "is not a valid DDL schema string", value=ddl)
    return names


@dataclass(frozen=True)
class StreamingConfig:
    """The operator's validated configuration (what :func:`validate_streaming` returns)."""

    source_type: str
    columns: tuple[str, ...] | None
    event_time_column: str
    watermark_us: int
    window: WindowSpec
    group_by: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]
    sink_type: str
    output_mode: str
    trigger: str
    processing_time_us: int | None
    max_runtime_us: int | None
    late_data: Literal["dead_letter", "drop"]


#: The settings of each sink type (the state of a non-PostgreSQL sink lives in ``state_conn_id``).
SINK_KEYS = {"postgres": ("type", "conn_id", "table"), "parquet": ("type", "path", "state_conn_id", "state_schema"),
             "kafka": ("type", "conn_id", "topic", "config", "state_conn_id", "state_schema")}
#: The settings of each source type.
SOURCE_KEYS = {"kafka": ("type", "conn_id", "topic", "starting_offsets", "format", "schema", "max_offsets_per_trigger",
                         "options"),
               "files": ("type", "path", "format", "schema", "options")}


def _check_keys(value: Mapping[str, Any], field: str, allowed: Iterable[str]) -> None:
    unknown = sorted(str(k) for k in set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", "is not a known setting", allowed=sorted(allowed))


def validate_streaming(
    *,
    source: Any,
    event_time_column: Any,
    watermark: Any,
    window: Any,
    group_by: Any,
    aggregations: Any,
    sink: Any,
    output_mode: Any,
    checkpoint_location: Any,
    trigger: Any,
    late_data: Any,
) -> StreamingConfig:
    """Validate the StreamingWatermarkOperator's arguments at DAG parse time; raise :class:`ConfigError`
    naming the first bad field and the fix."""
    if not isinstance(source, Mapping):
        raise ConfigError("source", "must be a mapping such as {'type': 'kafka', 'topic': ..., 'schema': ...}",
                          value=source)
    if source.get("type") not in SOURCE_TYPES:
        _check_keys(source, "source", {k for keys in SOURCE_KEYS.values() for k in keys})  # a misspelt 'type'
        raise ConfigError("source.type", "is not a supported streaming source", value=source.get("type"),
                          allowed=SOURCE_TYPES)
    if source["type"] == "kafka":
        _check_keys(source, "source", SOURCE_KEYS["kafka"])
        if not source.get("topic"):
            raise ConfigError("source.topic", "is required for a kafka source")
        if source.get("format", "json") != "json":
            raise ConfigError("source.format", "is not supported for a kafka source", value=source.get("format"),
                              allowed=["json"])
        mopt = source.get("max_offsets_per_trigger")
        if mopt is not None and (not isinstance(mopt, int) or isinstance(mopt, bool) or mopt < 1):
            raise ConfigError("source.max_offsets_per_trigger", "must be a positive integer or None", value=mopt)
    else:
        _check_keys(source, "source", SOURCE_KEYS["files"])
        if not source.get("path"):
            raise ConfigError("source.path", "is required for a files source")
        if source.get("format") not in FILE_FORMATS:
            raise ConfigError("source.format", "is not a supported file format", value=source.get("format"),
                              allowed=FILE_FORMATS)
    columns = schema_columns(source.get("schema"), "source.schema")
    if not isinstance(event_time_column, str) or event_time_column not in columns:
        raise ConfigError("event_time_column", "must be a column of source.schema", value=event_time_column,
                          allowed=columns)
    if not isinstance(watermark, str):
        raise ConfigError("watermark", "must be the allowed lateness as a duration, e.g. '10 minutes' (a watermark "
                          "of 0 would drop rows at the same event time as the newest: Spark's rule is <=)",
                          value=watermark)
    watermark_us = parse_duration(watermark, "watermark")
    spec = WindowSpec.from_config(window)
    if group_by is not None and not isinstance(group_by, str) and (
            not isinstance(group_by, list | tuple) or not all(isinstance(c, str) for c in group_by)):
        raise ConfigError("group_by", "must be a list of column names of source.schema", value=group_by)
    group = [group_by] if isinstance(group_by, str) else list(group_by or [])
    for col in group:
        if col not in columns:
            raise ConfigError("group_by", "names a column that is not in source.schema", value=col, allowed=columns)
    aggregates = parse_aggregations(aggregations, columns)
    if not isinstance(sink, Mapping):
        raise ConfigError("sink", "must be a mapping such as {'type': 'postgres', 'conn_id': 'postgres_default', "
                          "'table': 'public.orders_5min'}", value=sink)
    if sink.get("type") not in SINK_TYPES:
        _check_keys(sink, "sink", {k for keys in SINK_KEYS.values() for k in keys})  # a misspelt 'type': name it
        raise ConfigError("sink.type", "is not a supported sink", value=sink.get("type"), allowed=SINK_TYPES)
    _check_keys(sink, "sink", SINK_KEYS[sink["type"]])
    if sink["type"] == "postgres" and not sink.get("table"):
        raise ConfigError("sink.table", "is required for a postgres sink (e.g. 'public.orders_5min')")
    if sink["type"] == "parquet" and not sink.get("path"):
        raise ConfigError("sink.path", "is required for a parquet sink")
    if sink["type"] == "kafka" and not sink.get("topic"):
        raise ConfigError("sink.topic", "is required for a kafka sink")
    if output_mode not in OUTPUT_MODES:
        raise ConfigError("output_mode", "is not a supported output mode", value=output_mode, allowed=OUTPUT_MODES)
    if output_mode == "update" and sink["type"] in APPEND_ONLY_SINKS:
        raise ConfigError("output_mode", f"'update' rewrites windows as they change; a {sink['type']} sink can "
                          "only add rows: use 'append' (each window written once, when final)", value=output_mode)
    if not isinstance(checkpoint_location, str) or not checkpoint_location.strip():
        raise ConfigError("checkpoint_location", "is required: a local path or s3a:// URI that this stream alone "
                          "uses (it holds the offsets already processed)", value=checkpoint_location)
    processing_time_us = max_runtime_us = None
    if trigger == "available_now":
        trigger_kind = "available_now"
    elif isinstance(trigger, Mapping) and "processing_time" in trigger:
        _check_keys(trigger, "trigger", ["processing_time", "max_runtime"])
        trigger_kind = "processing_time"
        processing_time_us = parse_duration(trigger["processing_time"], "trigger.processing_time")
        if trigger.get("max_runtime") is None:
            raise ConfigError("trigger.max_runtime", "is required with processing_time: a task must end (e.g. "
                              "'15 minutes'); the query stops gracefully after the batch in progress")
        max_runtime_us = parse_duration(trigger["max_runtime"], "trigger.max_runtime")
    else:
        raise ConfigError("trigger", "must be 'available_now' or {'processing_time': '30 seconds', "
                          "'max_runtime': '15 minutes'}", value=trigger)
    if late_data == "drop":
        late: Literal["dead_letter", "drop"] = "drop"
    elif isinstance(late_data, Mapping) and set(late_data) == {"dead_letter"} and late_data["dead_letter"]:
        # here, not at the top: the executors import this module (windows, aggregates) and have no yaml there
        from airflow_etl_provider.core.config import parse_dead_letter

        if parse_dead_letter(late_data["dead_letter"], path="late_data.dead_letter") is None:
            raise ConfigError("late_data.dead_letter", "is disabled: give a DLQ config to keep late rows, or "
                              "late_data='drop' to only count them", value=late_data["dead_letter"])
        late = "dead_letter"
    else:
        raise ConfigError("late_data", "must be {'dead_letter': <a DLQ config>} or 'drop' (late rows are then "
                          "counted, not kept)", value=late_data)
    return StreamingConfig(
        source_type=source["type"], columns=tuple(columns), event_time_column=event_time_column,
        watermark_us=watermark_us, window=spec, group_by=tuple(group), aggregates=tuple(aggregates),
        sink_type=sink["type"], output_mode=output_mode, trigger=trigger_kind,
        processing_time_us=processing_time_us, max_runtime_us=max_runtime_us, late_data=late,
    )
