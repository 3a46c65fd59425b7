"""Property test: random event streams split into random micro-batches; what the operator's batch function does on
real Spark and PostgreSQL equals a pure-Python model of the rule (a (row, window) pair is late when the window
ends at or before the watermark recorded after the previous batch; the watermark is the newest event time so far
minus the lateness, never moving backwards).

The batch function is called directly, batch after batch, as Spark's ``foreachBatch`` would call it: no Kafka
here, so many shapes of stream fit in a minute.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_etl_provider.core.envelope import RunContext
from airflow_etl_provider.core.streaming import WindowSpec, advance_watermark, is_late, parse_aggregations
from airflow_etl_provider.executor.sinks import FileSink
from airflow_etl_provider.executor.stream_sinks import PostgresWindowSink
from airflow_etl_provider.executor.streaming import StreamBatchProcessor

pytestmark = [pytest.mark.integration, pytest.mark.spark]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MIN = 60_000_000
SCHEMA = ("order_id STRING, customer STRING, amount DECIMAL(12,2), event_time TIMESTAMP, _etl_topic STRING, "
          "_etl_partition INT, _etl_offset BIGINT")

WINDOWS = [
    {"type": "tumbling", "duration": "5 minutes"},
    {"type": "tumbling", "duration": "1 minute"},
    {"type": "sliding", "duration": "10 minutes", "slide": "5 minutes"},
    {"type": "sliding", "duration": "3 minutes", "slide": "1 minute"},
    {"type": "session", "gap": "4 minutes"},
    {"type": "session", "gap": "10 minutes"},
]
#: an event: (customer, minutes after T0, amount in cents)
EVENTS = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 90), st.integers(0, 100_000)),
                  min_size=1, max_size=40)


def _model(batches: list[list[dict[str, Any]]], spec: WindowSpec, lateness_us: int) -> tuple[dict, set[tuple[int, int]]]:
    """Row by row: the windows each on-time row counts in, and the (offset, window start) pairs that were late.
    Sessions: a row is late when its own session [t, t + gap) ends at or before the watermark; an on-time row
    joins the open session it overlaps or touches (bridging two merges them); a session the watermark has
    passed is final and closed."""
    wm, late = 0, set()
    windows: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)  # tumbling / sliding
    open_sessions: dict[str, list[list[Any]]] = defaultdict(list)  # customer -> [[start, end, rows]]
    final_sessions: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for batch in batches:
        newest = None
        for ev in batch:
            t = (ev["event_time"] - EPOCH) // timedelta(microseconds=1)
            newest = t if newest is None else max(newest, t)
            if spec.type == "session":
                if is_late(t + spec.gap_us, wm):
                    late.add((ev["_etl_offset"], t))
                    continue
                sessions = open_sessions[ev["customer"]]
                start, end, rows = t, t + spec.gap_us, [ev]
                for other in [o for o in sessions if o[0] <= end and start <= o[1]]:  # overlaps or touches
                    sessions.remove(other)
                    start, end, rows = min(start, other[0]), max(end, other[1]), rows + other[2]
                sessions.append([start, end, rows])
                continue
            for start, end in spec.windows_of(t):
                if is_late(end, wm):
                    late.add((ev["_etl_offset"], start))
                else:
                    windows[(ev["customer"], start, end)].append(ev)
        wm = advance_watermark(wm, newest, lateness_us)
        for customer, sessions in open_sessions.items():
            for done in [o for o in sessions if o[1] <= wm]:
                sessions.remove(done)
                final_sessions[(customer, done[0], done[1])] = done[2]
    if spec.type == "session":
        return final_sessions, late
    return {k: v for k, v in windows.items() if k[2] <= wm}, late


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: "-".join(str(v).replace(" ", "") for v in w.values()))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS, cuts=st.lists(st.integers(0, 40), max_size=3), lateness=st.sampled_from([1, 5, 10]))
def test_the_batch_function_equals_the_model(spark, tmp_path: Path, window: dict[str, Any],
                                             events: list[tuple[str, int, int]], cuts: list[int],
                                             lateness: int) -> None:
    _check_against_the_model(spark, tmp_path, window, events, cuts, lateness, with_map=False)


@pytest.mark.parametrize("window", WINDOWS[:4:2], ids=lambda w: "-".join(str(v).replace(" ", "") for v in w.values()))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENTS, cuts=st.lists(st.integers(0, 40), max_size=3), lateness=st.sampled_from([1, 5, 10]))
def test_a_source_with_a_map_column_equals_the_model_too(spark, tmp_path: Path, window: dict[str, Any],
                                                         events: list[tuple[str, int, int]], cuts: list[int],
                                                         lateness: int) -> None:
    """Spark cannot group by a map, so such a batch is cached and scanned instead of read once: same result."""
    _check_against_the_model(spark, tmp_path, window, events, cuts, lateness, with_map=True)


def _check_against_the_model(spark: Any, tmp_path: Path, window: dict[str, Any], events: list[tuple[str, int, int]],
                             cuts: list[int], lateness: int, *, with_map: bool) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

    spec = WindowSpec.from_config(window)
    rows = [{"order_id": f"o{i}", "customer": c, "amount": Decimal(cents) / 100,
             "event_time": T0 + timedelta(minutes=m), "_etl_topic": "t", "_etl_partition": 0, "_etl_offset": i}
            for i, (c, m, cents) in enumerate(events)]
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    batches = [rows[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    unique = uuid.uuid4().hex[:8]
    table = f"public.model_{unique}"
    dlq = tmp_path / f"dlq-{unique}"
    processor = StreamBatchProcessor(
        pipeline_id=f"model.{unique}", epoch="e1",
        conn_args=SparkPostgresHook(postgres_conn_id="postgres_default").psycopg_conn_args(),
        sink=PostgresWindowSink(table=f'"public"."model_{unique}"'), state_table=f'"public"."model_{unique}__etl_state"',
        ledger_table='"public"."etl_stream_ledger"', event_time_column="event_time", watermark_us=lateness * MIN,
        window=spec, group_by=("customer",),
        aggregates=tuple(parse_aggregations({"amount": ["sum", "min", "max"], "*": ["count"]}, None)),
        output_mode="append", dead_letter=FileSink(prefix=str(dlq)), spool_dir=str(tmp_path / "spool"),
        run_context=RunContext(None, None, None, None, f"model.{unique}"),
        column_types={"customer": "text", "amount": "numeric(12,2)"},
    )
    for batch_id, batch in enumerate(batches):
        frame = spark.createDataFrame(batch, SCHEMA)
        if with_map:
            from pyspark.sql import functions as F

            frame = frame.withColumn("tags", F.create_map(F.lit("customer"), F.col("customer")))
        processor.process(frame, batch_id)
    final, late = _model(batches, spec, lateness * MIN)

    pg = PostgresHook(postgres_conn_id="postgres_default")
    got = {(r[0], (r[1] - EPOCH) // timedelta(microseconds=1), (r[2] - EPOCH) // timedelta(microseconds=1)):
           (r[3], r[4], r[5], r[6]) for r in pg.get_records(
               f'select customer, window_start, window_end, amount_sum, amount_min, amount_max, "count" from {table}')}
    expected = {k: (sum(e["amount"] for e in v), min(e["amount"] for e in v), max(e["amount"] for e in v), len(v))
                for k, v in final.items()}
    assert got == expected
    letters = [json.loads(x) for f in dlq.rglob("*.jsonl.gz") for x in gzip.decompress(f.read_bytes()).splitlines()]
    dead = {(e["original_location"]["offset"],
             (datetime.fromisoformat(e["context"]["window"].split("/")[0]).replace(tzinfo=UTC) - EPOCH)
             // timedelta(microseconds=1)) for e in letters}
    assert dead == late and len(letters) == len(late)
    pg.run(f"drop table {table}; drop table {table}__etl_state; delete from etl_stream_ledger where pipeline = "
           f"'model.{unique}'")
