"""The pure streaming rules: durations, Spark's window arithmetic, the late rule, the watermark ledger, and
parse-time validation of the StreamingWatermarkOperator's configuration."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.streaming import (
    Aggregate,
    WindowSpec,
    advance_watermark,
    is_late,
    parse_aggregations,
    parse_duration,
    schema_columns,
    validate_streaming,
)

MIN = 60_000_000


@pytest.mark.parametrize(("text", "us"), [
    ("10 minutes", 10 * MIN), ("1 minute", MIN), ("1 hour 30 minutes", 90 * MIN), ("90 s", 90_000_000),
    ("INTERVAL 2 HOURS", 120 * MIN), ("500 milliseconds", 500_000), ("1 day", 1440 * MIN), ("1 week", 10080 * MIN),
])
def test_durations_parse_as_spark_writes_them(text: str, us: int) -> None:
    assert parse_duration(text, "watermark") == us


@pytest.mark.parametrize(("value", "problem"), [
    ("0 minutes", "longer than zero"), ("ten minutes", "must be a duration"), ("5 fortnights", "unknown time unit"),
    ("5", "must be a duration"), ("", "must be a duration"), (300, "must be a duration"),
    ("5 minutes and more", "must be a duration"),
])
def test_bad_durations_name_the_field(value: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"window.duration: .*{problem}"):
        parse_duration(value, "window.duration")


def _brute_force_windows(t: int, duration: int, slide: int) -> list[tuple[int, int]]:
    """Every window start that is a multiple of the slide with start <= t < start + duration."""
    first = (t - duration) // slide * slide
    return [(s, s + duration) for s in range(first, t + 1, slide) if s <= t < s + duration]


@given(t=st.integers(-10**12, 10**12), slide=st.integers(1, 10**7), factor=st.integers(1, 6),
       extra=st.integers(0, 10**7))
def test_sliding_windows_are_every_aligned_window_holding_the_event(t: int, slide: int, factor: int,
                                                                    extra: int) -> None:
    duration = slide * factor + (extra % slide)  # also durations that are no multiple of the slide
    spec = WindowSpec("sliding", duration_us=duration, slide_us=slide)
    assert spec.windows_of(t) == _brute_force_windows(t, duration, slide)


@given(t=st.integers(-10**12, 10**12), duration=st.integers(1, 10**9))
def test_a_tumbling_window_is_the_one_aligned_window_holding_the_event(t: int, duration: int) -> None:
    ((start, end),) = WindowSpec("tumbling", duration_us=duration, slide_us=duration).windows_of(t)
    assert start % duration == 0 and start <= t < end == start + duration


def test_windows_match_spark_examples() -> None:
    five = WindowSpec.from_config({"type": "tumbling", "duration": "5 minutes"})
    assert five.windows_of(7 * MIN) == [(5 * MIN, 10 * MIN)]
    assert five.windows_of(10 * MIN) == [(10 * MIN, 15 * MIN)]  # the end is exclusive
    ten_by_five = WindowSpec.from_config({"type": "sliding", "duration": "10 minutes", "slide": "5 minutes"})
    assert ten_by_five.windows_of(12 * MIN) == [(5 * MIN, 15 * MIN), (10 * MIN, 20 * MIN)]
    session = WindowSpec.from_config({"type": "session", "gap": "10 minutes"})
    assert session.windows_of(3 * MIN) == [(3 * MIN, 13 * MIN)]


def test_the_late_rule_is_spark_s_less_or_equal() -> None:
    assert is_late(window_end_us=10, watermark_us=10)  # ends exactly at the watermark: dropped by Spark
    assert is_late(window_end_us=9, watermark_us=10)
    assert not is_late(window_end_us=11, watermark_us=10)


@given(batches=st.lists(st.one_of(st.none(), st.integers(-10**9, 10**9)), max_size=30), delay=st.integers(1, 10**8))
def test_the_watermark_never_moves_backwards_and_follows_the_newest_event(batches: list[int | None],
                                                                          delay: int) -> None:
    w, newest = 0, None
    for max_event in batches:
        before = w
        w = advance_watermark(w, max_event, delay)
        assert w >= before
        if max_event is not None:
            newest = max_event if newest is None else max(newest, max_event)
        expected = 0 if newest is None else max(0, newest - delay)
        assert w == expected


def test_aggregations_are_named_and_checked_against_the_schema() -> None:
    aggs = parse_aggregations({"amount": ["sum", "avg"], "*": ["count"], "order_id": "approx_count_distinct"},
                              ["order_id", "amount"])
    assert aggs == [Aggregate("amount", "sum", "amount_sum"), Aggregate("amount", "avg", "amount_avg"),
                    Aggregate("*", "count", "count"), Aggregate("order_id", "approx_count_distinct",
                                                                "order_id_approx_count_distinct")]
    with pytest.raises(ConfigError, match=r"aggregations.amount: has an unknown aggregation \(got 'median'\)"):
        parse_aggregations({"amount": ["median"]}, ["amount"])
    with pytest.raises(ConfigError, match=r"aggregations.\*: only 'count'"):
        parse_aggregations({"*": ["sum"]}, ["amount"])
    with pytest.raises(ConfigError, match="aggregations.price: is not a column of the source schema"):
        parse_aggregations({"price": ["sum"]}, ["amount"])


def test_schema_columns_reads_nested_types() -> None:
    assert schema_columns("a STRING, b DECIMAL(12,2), c STRUCT<x: INT, y: ARRAY<STRING>>, `d e` INT",
                          "source.schema") == ["a", "b", "c", "d"]


GOOD: dict[str, Any] = {
    "source": {"type": "kafka", "conn_id": "kafka_default", "topic": "orders", "starting_offsets": "earliest",
               "format": "json", "max_offsets_per_trigger": None,
               "schema": "order_id STRING, customer STRING, amount DECIMAL(12,2), event_time TIMESTAMP"},
    "event_time_column": "event_time",
    "watermark": "10 minutes",
    "window": {"type": "tumbling", "duration": "5 minutes"},
    "group_by": ["customer"],
    "aggregations": {"amount": ["sum", "avg", "min", "max"], "*": ["count"], "order_id": ["approx_count_distinct"]},
    "sink": {"type": "postgres", "conn_id": "postgres_default", "table": "public.orders_5min"},
    "output_mode": "append",
    "checkpoint_location": "/checkpoints/orders_per_5min",
    "trigger": "available_now",
    "late_data": {"dead_letter": {"type": "kafka", "topic": "orders.late"}},
}


def test_the_issue_s_example_config_is_valid() -> None:
    cfg = validate_streaming(**GOOD)
    assert (cfg.watermark_us, cfg.window.duration_us, cfg.trigger, cfg.late_data) == (10 * MIN, 5 * MIN,
                                                                                       "available_now", "dead_letter")
    assert [a.name for a in cfg.aggregates] == ["amount_sum", "amount_avg", "amount_min", "amount_max", "count",
                                                "order_id_approx_count_distinct"]
    timed = validate_streaming(**{**GOOD, "trigger": {"processing_time": "30 seconds", "max_runtime": "15 minutes"}})
    assert (timed.processing_time_us, timed.max_runtime_us) == (30_000_000, 15 * MIN)


@pytest.mark.parametrize(("change", "message"), [
    ({"watermark": "0 seconds"}, "watermark: must be longer than zero"),
    ({"watermark": 0}, "watermark: must be the allowed lateness"),
    ({"window": {"type": "tumbling", "duration": "-5 minutes"}}, "window.duration: must be a duration"),
    ({"window": {"type": "sliding", "duration": "5 minutes", "slide": "10 minutes"}},
     "window.slide: must not be longer than the window's duration"),
    ({"window": {"type": "hopping", "duration": "5 minutes"}}, "window.type: is not a supported window type"),
    ({"window": {"type": "session", "duration": "5 minutes"}}, "window.duration: is not a setting of a session"),
    ({"event_time_column": "ts"}, "event_time_column: must be a column of source.schema"),
    ({"group_by": ["country"]}, "group_by: names a column that is not in source.schema"),
    ({"aggregations": {"amount": ["median"]}}, "aggregations.amount: has an unknown aggregation"),
    ({"checkpoint_location": None}, "checkpoint_location: is required"),
    ({"sink": {"type": "parquet", "path": "/out"}, "output_mode": "update"},
     "output_mode: 'update' rewrites windows as they change; a parquet sink can only add rows"),
    ({"output_mode": "complete"}, "output_mode: is not a supported output mode"),
    ({"trigger": {"processing_time": "30 seconds"}}, "trigger.max_runtime: is required"),
    ({"trigger": "once"}, "trigger: must be 'available_now'"),
    ({"late_data": None}, "late_data: must be"),
    ({"source": {**GOOD["source"], "topic": None}}, "source.topic: is required"),
    ({"source": {**GOOD["source"], "startingOffsets": "earliest"}}, "source.startingOffsets: is not a known"),
    ({"sink": {"type": "postgres"}}, "sink.table: is required"),
    # found by tests/unit/test_config_fuzz.py
    ({"group_by": True}, "group_by: must be a list of column names"),
    ({"sink": "parquet"}, "sink: must be a mapping"),
    ({"sink": {"tpye": "postgres", "table": "t"}}, "sink.tpye: is not a known setting"),
    ({"sink": {"type": "postgres", "table": "t", "state_schema": "x"}}, "sink.state_schema: is not a known setting"),
    ({"window": {"tpye": "tumbling", "duration": "5 minutes"}}, "window.tpye: is not a setting of a window"),
    ({"source": {**GOOD["source"], "type": None, "tpye": "kafka"}}, "source.tpye: is not a known setting"),
    ({"late_data": {"dead_letter": {"type": "file", "pth": "/tmp/late"}}}, "late_data.dead_letter.pth"),
    ({"late_data": {"dead_letter": {"type": "file", "path": "/l", "enabled": False}}},
     "late_data.dead_letter: is disabled"),
])
def test_bad_config_fails_naming_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_streaming(**{**GOOD, **change})
    assert message in str(caught.value)


def test_the_operator_validates_at_parse_time() -> None:
    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    args = {k: v for k, v in GOOD.items()}
    op = StreamingWatermarkOperator(task_id="s", **args)
    assert op.sink["table"] == "public.orders_5min"
    assert StreamingWatermarkOperator(task_id="s", **{**args, "window": {"type": "session", "gap": "10 minutes"}})
    files = {"type": "files", "path": "/in", "format": "json", "schema": GOOD["source"]["schema"]}
    assert StreamingWatermarkOperator(task_id="s", **{**args, "source": files, "sink": {"type": "parquet", "path": "/o"}})
    with pytest.raises(ConfigError, match="output_mode: 'update' rewrites windows as they change; a parquet sink"):
        StreamingWatermarkOperator(task_id="s", **{**args, "sink": {"type": "parquet", "path": "/o"},
                                                   "output_mode": "update"})
    with pytest.raises(ConfigError, match="sink.table: 'orders;drop' is not a valid SQL identifier"):
        StreamingWatermarkOperator(task_id="s", **{**args, "sink": {"type": "postgres", "table": "public.orders;drop"}})
    with pytest.raises(ConfigError, match="late_data: is required"):
        StreamingWatermarkOperator(task_id="s", **{**args, "late_data": None})
    with pytest.raises(ConfigError, match="window.slide: must not be longer"):
        StreamingWatermarkOperator(task_id="s", **{**args, "window": {"type": "sliding", "duration": "5 minutes",
                                                                       "slide": "6 minutes"}})
    with pytest.raises(ConfigError, match="window: must be a mapping"):  # not a ValueError from dict(...)
        StreamingWatermarkOperator(task_id="s", **{**args, "window": [{"type": "tumbling", "duration": "5 minutes"}]})
    with pytest.raises(ConfigError, match="sink: must be a mapping"):
        StreamingWatermarkOperator(task_id="s", **{**args, "sink": [{"type": "parquet", "path": "/out"}]})
    assert StreamingWatermarkOperator(task_id="s", **{**args, "group_by": None}).group_by is None  # no group
    templated = StreamingWatermarkOperator(task_id="s", **{**args, "checkpoint_location": "/c/{{ ds }}"})
    assert templated.checkpoint_location == "/c/{{ ds }}"  # validated at run time, once rendered


def test_window_state_values_round_trip_through_json() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from airflow_etl_provider.executor.streaming import _decode, _encode

    for value in (None, 3, True, Decimal("12.50"), 1.25, datetime(2026, 1, 1, 12, tzinfo=UTC), b"\x00\x01sketch", "x"):
        assert _decode(_encode(value)) == value
        assert type(_decode(_encode(value))) is type(value)


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 30)), max_size=12))
def test_session_clusters_merge_what_overlaps_or_touches(raw: list[tuple[int, int]]) -> None:
    from airflow_etl_provider.core.streaming import session_clusters

    sessions = [(s, s + length) for s, length in raw]
    clusters = session_clusters(sessions)
    assert sorted(i for c in clusters for i in c) == list(range(len(sessions)))
    spans = sorted((min(sessions[i][0] for i in c), max(sessions[i][1] for i in c)) for c in clusters)
    for (_s1, e1), (s2, _e2) in zip(spans, spans[1:], strict=False):
        assert s2 > e1  # clusters neither overlap nor touch
    for c in clusters:  # within a cluster, the sessions chain without a gap
        chain = sorted(sessions[i] for i in c)
        reach = chain[0][1]
        for s, e in chain[1:]:
            assert s <= reach
            reach = max(reach, e)
