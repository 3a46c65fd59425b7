"""StreamingWatermarkOperator against real Kafka, PostgreSQL and Spark: the sink equals an aggregation computed
independently from the on-time rows, the DLQ holds exactly the late rows (by Kafka partition and offset),
consecutive runs pick up only new data, a replayed batch changes nothing, one run per stream at a time, and a
changed window on an existing checkpoint is refused."""

from __future__ import annotations

import gzip
import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.streaming import WindowSpec, advance_watermark, is_late

pytestmark = [pytest.mark.integration, pytest.mark.spark]

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MIN_US = 60_000_000
WATERMARK_US = 10 * MIN_US
SCHEMA = "order_id STRING, customer STRING, amount DECIMAL(12,2), event_time TIMESTAMP"


def _us(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    """Send events round-robin over the topic's 3 partitions; return (partition, offset, event) of each."""
    from confluent_kafka import Producer

    placed: list[tuple[int, int, dict[str, Any]]] = []
    producer = Producer({"bootstrap.servers": bootstrap})

    for i, event in enumerate(events):
        def done(err: Any, msg: Any, event: dict[str, Any] = event) -> None:
            assert err is None, err
            placed.append((msg.partition(), msg.offset(), event))

        producer.produce(topic, value=json.dumps(event).encode(), partition=i % 3, on_delivery=done)
    assert producer.flush(30) == 0
    assert len(placed) == len(events)
    return placed


def _event(i: int, customer: str, minutes: float, amount: str) -> dict[str, Any]:
    ts = T0 + timedelta(minutes=minutes)
    return {"order_id": f"o{i}", "customer": customer, "amount": amount,
            "event_time": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")}


def _reference(batches: list[list[tuple[int, int, dict[str, Any]]]], window: WindowSpec,
               only_final: bool = True) -> tuple[dict, set, int]:
    """The pure model: per batch, judge each (row, window) with the previous batch's watermark; aggregate the
    on-time pairs; the windows the final watermark has passed are the ones append mode has written."""
    wm, state, late = 0, defaultdict(list), set()
    for batch in batches:
        newest = None
        for partition, offset, ev in batch:
            t = _us(datetime.fromisoformat(ev["event_time"]).replace(tzinfo=UTC))
            newest = t if newest is None else max(newest, t)
            for start, end in window.windows_of(t):
                if is_late(end, wm):
                    late.add((partition, offset, start))
                else:
                    state[(ev["customer"], start, end)].append(ev)
        wm = advance_watermark(wm, newest, WATERMARK_US)
    final = {k: v for k, v in state.items() if k[2] <= wm or not only_final}
    return final, late, wm


def _operator(topic: str, tmp_path: Path, table: str, window: dict[str, Any], **kw: Any) -> Any:
    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    return StreamingWatermarkOperator(
        task_id="orders_per_5min",
        source={"type": "kafka", "conn_id": "kafka_default", "topic": topic, "starting_offsets": "earliest",
                "format": "json", "schema": SCHEMA},
        event_time_column="event_time", watermark="10 minutes", window=window, group_by=["customer"],
        aggregations={"amount": ["sum", "avg", "min", "max"], "*": ["count"], "order_id": ["approx_count_distinct"]},
        sink={"type": "postgres", "conn_id": "postgres_default", "table": table},
        checkpoint_location=str(tmp_path / "checkpoint"),
        late_data={"dead_letter": {"type": "file", "path": str(tmp_path / "dlq")}},
        pipeline_id=f"test.{table}", **kw,
    )


def _sink(table: str) -> dict[tuple[str, int, int], tuple[Any, ...]]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    rows = PostgresHook(postgres_conn_id="postgres_default").get_records(
        f"select customer, window_start, window_end, amount_sum, amount_avg, amount_min, amount_max, \"count\", "
        f"order_id_approx_count_distinct from {table}")
    return {(r[0], _us(r[1]), _us(r[2])): tuple(r[3:]) for r in rows}


def _late_letters(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for f in (tmp_path / "dlq").rglob("*.jsonl.gz") for x in gzip.decompress(f.read_bytes()).splitlines()]


@pytest.mark.parametrize("window", [{"type": "tumbling", "duration": "5 minutes"},
                                    {"type": "sliding", "duration": "10 minutes", "slide": "5 minutes"}])
def test_two_runs_equal_the_reference_and_capture_every_late_row(spark, kafka_bootstrap, unique, tmp_path,
                                                                 window: dict[str, Any]) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    topic, table = f"stream-{unique}", f"public.stream_{unique}"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    # run 1: 0..24 minutes, out of order within the 10-minute lateness
    first = [_event(i, "ab"[i % 2], m, f"{i}.50") for i, m in enumerate([3, 1, 7, 12, 9, 16, 14, 22, 19, 24])]
    # run 2: after run 1 the watermark is 24 - 10 = 14 minutes: events in windows ending at or before it are late
    second = [_event(100 + i, "ab"[i % 2], m, f"{i}.25") for i, m in enumerate([2, 8, 13, 16, 27, 31, 26, 40])]
    placed1 = _produce(kafka_bootstrap, topic, first)
    op = _operator(topic, tmp_path, table, window)
    r1 = op.execute(context={})
    placed2 = _produce(kafka_bootstrap, topic, second)
    r2 = _operator(topic, tmp_path, table, window).execute(context={})
    spec = WindowSpec.from_config(window)
    final, late, wm = _reference([placed1, placed2], spec)

    assert (r1["input_rows"], r2["input_rows"]) == (10, 8)  # the second run read only the new data
    assert r1["late_rows"] == 0 and r2["late_rows"] == len(late) > 0
    assert r2["watermark"]["after"] == datetime.fromtimestamp(wm / 1e6, tz=UTC).isoformat()
    assert r1["window_pairs"] + r2["window_pairs"] == r1["aggregated_rows"] + r2["aggregated_rows"] + len(late)
    sink = _sink(table)
    assert set(sink) == set(final)
    for key, events in final.items():
        amounts = [Decimal(e["amount"]) for e in events]
        s_sum, s_avg, s_min, s_max, s_count, s_distinct = sink[key]
        assert (s_sum, s_min, s_max, s_count) == (sum(amounts), min(amounts), max(amounts), len(events)), key
        assert abs(Decimal(s_avg) - sum(amounts) / len(amounts)) < Decimal("1e-6"), key
        assert s_distinct == len({e["order_id"] for e in events}), key  # HLL is exact at this size
    letters = _late_letters(tmp_path)
    by_position = {(e["original_location"]["partition"], e["original_location"]["offset"],
                    _us(datetime.fromisoformat(e["context"]["window"].split("/")[0]).replace(tzinfo=UTC)))
                   for e in letters}
    assert by_position == late and len(letters) == len(late)  # exactly the late pairs, each once
    assert {e["stage"] for e in letters} == {"late_data"}
    pg = PostgresHook(postgres_conn_id="postgres_default")
    # a replayed batch (Spark committed nothing after the PostgreSQL commit) changes nothing
    commits = sorted((tmp_path / "checkpoint" / "commits").glob("[0-9]*"), key=lambda f: int(f.name))
    commits[-1].unlink()  # as if the task died between the PostgreSQL commit and Spark's commit log
    commits[-1].with_name(f".{commits[-1].name}.crc").unlink(missing_ok=True)
    r3 = _operator(topic, tmp_path, table, window).execute(context={})
    assert commits[-1].exists()  # Spark ran that batch again and committed it this time ...
    assert (r3["batches"], r3["input_rows"]) == (0, 0)  # ... and the ledger made the replay a no-op
    assert _sink(table) == sink and len(_late_letters(tmp_path)) == len(letters)
    pg.run(f"drop table {table}; drop table {table}__etl_state")


def test_one_run_per_stream_and_a_changed_window_is_refused(spark, kafka_bootstrap, unique, tmp_path) -> None:
    import psycopg

    from airflow_etl_provider.hooks.postgres import SparkPostgresHook
    from airflow_etl_provider.hooks.streaming import LOCK_CLASS

    topic, table = f"stream-lock-{unique}", f"public.stream_lock_{unique}"
    _produce(kafka_bootstrap, topic, [_event(1, "a", 1, "1.00")])
    tumbling = {"type": "tumbling", "duration": "5 minutes"}
    args = SparkPostgresHook(postgres_conn_id="postgres_default").psycopg_conn_args(
        application_name="another airflow-etl stream task")
    with psycopg.connect(**args, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, f"airflow-etl stream test.{table}"))
        with pytest.raises(RuntimeError, match=r"is already running: another airflow-etl stream task"):
            _operator(topic, tmp_path, table, tumbling).execute(context={})
    assert _operator(topic, tmp_path, table, tumbling).execute(context={})["input_rows"] == 1
    with pytest.raises(ConfigError, match="Start a new checkpoint_location"):
        _operator(topic, tmp_path, table, {"type": "tumbling", "duration": "10 minutes"}).execute(context={})


def _expected_row(events: list[dict[str, Any]]) -> tuple[Any, ...]:
    amounts = [Decimal(e["amount"]) for e in events]
    return (sum(amounts), min(amounts), max(amounts), len(events))


def test_files_source_into_a_parquet_sink(spark, unique, tmp_path) -> None:
    """json files in, Parquet out (one directory per batch); late rows dead-lettered with their file."""
    source_dir, out = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    window = {"type": "tumbling", "duration": "5 minutes"}
    first = [_event(i, "ab"[i % 2], m, f"{i}.50") for i, m in enumerate([3, 1, 7, 12, 9, 16, 14, 22, 19, 24])]
    second = [_event(100 + i, "ab"[i % 2], m, f"{i}.25") for i, m in enumerate([2, 8, 13, 16, 27, 31, 26, 40])]

    def run(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
        (source_dir / name).write_text("".join(json.dumps(e) + "\n" for e in events))
        from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

        return StreamingWatermarkOperator(
            task_id="files_to_parquet",
            source={"type": "files", "path": str(source_dir), "format": "json", "schema": SCHEMA},
            event_time_column="event_time", watermark="10 minutes", window=window, group_by=["customer"],
            aggregations={"amount": ["sum", "min", "max"], "*": ["count"]},
            sink={"type": "parquet", "path": str(out)}, checkpoint_location=str(tmp_path / "checkpoint"),
            late_data={"dead_letter": {"type": "file", "path": str(tmp_path / "dlq")}}, pipeline_id=f"files.{unique}",
        ).execute(context={})

    r1, r2 = run(first, "part-1.json"), run(second, "part-2.json")
    final, late, _wm = _reference([[(0, i, e) for i, e in enumerate(first)], [(0, i, e) for i, e in enumerate(second)]],
                                  WindowSpec.from_config(window))
    assert (r1["input_rows"], r2["input_rows"]) == (10, 8)
    assert r2["late_rows"] == len(late) == 2
    got = {(r["customer"], _us(r["window_start"].replace(tzinfo=UTC)), _us(r["window_end"].replace(tzinfo=UTC))):
           (r["amount_sum"], r["amount_min"], r["amount_max"], r["count"]) for r in spark.read.parquet(str(out)).collect()}
    assert got == {k: _expected_row(v) for k, v in final.items()}
    letters = _late_letters(tmp_path)
    assert sorted(e["record"]["order_id"] for e in letters) == ["o100", "o101"]  # the events at 2 and 8 minutes
    assert {e["original_location"]["file"].rsplit("/", 1)[-1] for e in letters} == {"part-2.json"}


def test_kafka_sink_in_update_mode(spark, kafka_bootstrap, unique, tmp_path) -> None:
    """update: every window a batch changes is written again; the latest message per key is the window's value."""
    from confluent_kafka import Consumer, TopicPartition

    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    topic, out_topic = f"stream-in-{unique}", f"stream-out-{unique}"
    window = {"type": "tumbling", "duration": "5 minutes"}
    first = [_event(i, "ab"[i % 2], m, f"{i}.50") for i, m in enumerate([3, 1, 7, 12, 9, 16])]
    second = [_event(100 + i, "ab"[i % 2], m, f"{i}.25") for i, m in enumerate([2, 13, 16, 17])]

    def run() -> dict[str, Any]:
        return StreamingWatermarkOperator(
            task_id="to_kafka",
            source={"type": "kafka", "conn_id": "kafka_default", "topic": topic, "schema": SCHEMA},
            event_time_column="event_time", watermark="10 minutes", window=window, group_by=["customer"],
            aggregations={"amount": ["sum", "min", "max"], "*": ["count"]}, output_mode="update",
            sink={"type": "kafka", "conn_id": "kafka_default", "topic": out_topic},
            checkpoint_location=str(tmp_path / "checkpoint"), late_data="drop", pipeline_id=f"kafka.{unique}",
        ).execute(context={})

    placed1 = _produce(kafka_bootstrap, topic, first)
    r1 = run()
    placed2 = _produce(kafka_bootstrap, topic, second)
    r2 = run()
    every, late, _wm = _reference([placed1, placed2], WindowSpec.from_config(window), only_final=False)
    assert r2["late_rows"] == len(late) == 1  # the event at 2 minutes: its window ended before the watermark (6)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"verify-{unique}",
                         "auto.offset.reset": "earliest"})
    partitions = consumer.list_topics(out_topic, timeout=10).topics[out_topic].partitions
    consumer.assign([TopicPartition(out_topic, p, 0) for p in partitions])
    latest: dict[tuple[str, int, int], dict[str, Any]] = {}
    written = 0
    while written < r1["output_rows"] + r2["output_rows"]:
        msg = consumer.poll(10)
        assert msg is not None and msg.error() is None, msg and msg.error()
        value = json.loads(msg.value())
        key = (value["customer"], _us(datetime.fromisoformat(value["window_start"])),
               _us(datetime.fromisoformat(value["window_end"])))
        latest[key] = value
        written += 1
    consumer.close()
    assert {k: (Decimal(v["amount_sum"]), Decimal(v["amount_min"]), Decimal(v["amount_max"]), v["count"])
            for k, v in latest.items()} == {k: _expected_row(v) for k, v in every.items()}


def test_processing_time_runs_until_max_runtime_and_on_kill_stops_the_query(spark, kafka_bootstrap, unique,
                                                                             tmp_path) -> None:
    """A processing-time stream keeps reading what arrives until max_runtime, then stops between batches; on_kill
    stops a running query and frees the stream's lock. Spark drops nothing behind the watermark."""
    import threading

    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    topic = f"stream-pt-{unique}"
    window = {"type": "tumbling", "duration": "5 minutes"}

    def op(max_runtime: str) -> StreamingWatermarkOperator:
        return StreamingWatermarkOperator(
            task_id="pt", source={"type": "kafka", "conn_id": "kafka_default", "topic": topic, "schema": SCHEMA},
            event_time_column="event_time", watermark="10 minutes", window=window, group_by=["customer"],
            aggregations={"*": ["count"]}, sink={"type": "postgres", "table": f"public.stream_pt_{unique}"},
            checkpoint_location=str(tmp_path / "checkpoint"), trigger={"processing_time": "1 second",
                                                                       "max_runtime": max_runtime},
            late_data={"dead_letter": {"type": "file", "path": str(tmp_path / "dlq")}}, pipeline_id=f"pt.{unique}")

    _produce(kafka_bootstrap, topic, [_event(i, "a", i, "1.00") for i in range(5)])
    running = op("20 seconds")
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(running.execute(context={})))
    thread.start()
    first_done = threading.Event()

    def produce_more() -> None:  # once the first batch committed: picked up by a later batch of the same run
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        pg, deadline = PostgresHook(postgres_conn_id="postgres_default"), time.monotonic() + 120
        while not pg.get_first("select count(*) from public.etl_stream_ledger where pipeline = %s",
                               parameters=(f"pt.{unique}",))[0]:
            if time.monotonic() > deadline:
                return
            time.sleep(0.5)
        _produce(kafka_bootstrap, topic, [_event(10 + i, "b", 30 + i, "2.00") for i in range(3)])
        first_done.set()

    threading.Thread(target=produce_more).start()
    thread.join(180)
    assert not thread.is_alive()
    assert first_done.is_set()
    assert outcome["input_rows"] == 8 and outcome["batches"] >= 2
    assert outcome["spark_rows_dropped_by_watermark"] == 0
    assert spark.streams.active == []

    killed = op("10 minutes")
    errors: list[BaseException] = []

    def run_killed() -> None:
        try:
            killed.execute(context={})
        except BaseException as err:  # kept for the assertion below: a kill must not fail the run
            errors.append(err)

    thread = threading.Thread(target=run_killed)
    thread.start()
    deadline = time.monotonic() + 180
    while not spark.streams.active:
        assert not errors, errors
        assert time.monotonic() < deadline, "the query never started"
        time.sleep(0.5)
    killed.on_kill()
    thread.join(60)
    assert not thread.is_alive() and spark.streams.active == []
    assert not errors, errors
    assert op("5 seconds").execute(context={})["batches"] >= 0  # the lock was released: a new run starts


def test_a_failing_batch_fails_the_task_with_the_reason_and_commits_nothing(spark, kafka_bootstrap, unique,
                                                                           tmp_path) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from pyspark.errors import StreamingQueryException

    topic, table = f"stream-fail-{unique}", f"public.stream_fail_{unique}"
    pg = PostgresHook(postgres_conn_id="postgres_default")
    pg.run(f'create table {table} (customer text, window_start timestamptz, window_end timestamptz, '
           f'"count" bigint check ("count" > 100), primary key (customer, window_start, window_end))')
    _produce(kafka_bootstrap, topic, [_event(i, "a", m, "1.00") for i, m in enumerate([1, 2, 30])])
    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    op = StreamingWatermarkOperator(
        task_id="fails", source={"type": "kafka", "conn_id": "kafka_default", "topic": topic, "schema": SCHEMA},
        event_time_column="event_time", watermark="10 minutes", window={"type": "tumbling", "duration": "5 minutes"},
        group_by=["customer"], aggregations={"*": ["count"]}, sink={"type": "postgres", "table": table},
        checkpoint_location=str(tmp_path / "checkpoint"), late_data="drop", pipeline_id=f"fail.{unique}")
    with pytest.raises(StreamingQueryException, match="violates check constraint"):
        op.execute(context={})
    assert spark.streams.active == []
    assert pg.get_first("select count(*) from etl_stream_ledger where pipeline = %s", parameters=(f"fail.{unique}",))[0] == 0
    assert pg.get_first(f"select count(*) from {table}")[0] == 0
    pg.run(f"drop table {table}")


@pytest.mark.parametrize("window", [{"type": "tumbling", "duration": "5 minutes"},
                                    {"type": "sliding", "duration": "10 minutes", "slide": "5 minutes"},
                                    {"type": "session", "gap": "5 minutes"}])
def test_messages_without_an_event_time_are_dead_lettered_not_dropped(spark, kafka_bootstrap, unique, tmp_path,
                                                                      window: dict[str, Any]) -> None:
    """A message that is not JSON, lacks the event time or has one that does not parse gives a row with a NULL
    event time. Spark's ``window()`` drops such rows without a trace; the operator dead-letters each (stage
    ``parse``) and counts it."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic, table = f"stream-{unique}", f"public.stream_{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    good = [_event(i, "ab"[i % 2], m, f"{i}.10") for i, m in enumerate([1, 4, 6, 11, 30])]
    bad = [b"not json at all", json.dumps({"order_id": "x1", "customer": "a", "amount": "1.00"}).encode(),
           json.dumps({"order_id": "x2", "customer": "b", "amount": "2.00", "event_time": "yesterday"}).encode()]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    positions: set[tuple[int, int]] = set()
    for i, value in enumerate([*(json.dumps(e).encode() for e in good), *bad]):
        def done(err: Any, msg: Any, is_bad: bool = i >= len(good)) -> None:
            assert err is None, err
            if is_bad:
                positions.add((msg.partition(), msg.offset()))

        producer.produce(topic, value=value, partition=i % 3, on_delivery=done)
    assert producer.flush(30) == 0
    result = _operator(topic, tmp_path, table, window).execute(context={})

    assert result["input_rows"] == len(good) + len(bad)
    assert result["invalid_rows"] == len(bad) and result["late_rows"] == 0
    letters = _late_letters(tmp_path)
    assert {(e["original_location"]["partition"], e["original_location"]["offset"]) for e in letters} == positions
    assert len(letters) == len(bad) and {e["stage"] for e in letters} == {"parse"}
    # every good row is in the sink's counts (the windows the watermark closed) or still open in the state
    pg = PostgresHook(postgres_conn_id="postgres_default")
    written = pg.get_first(f'select coalesce(sum("count"), 0) from {table}')[0]
    assert result["window_pairs"] == result["aggregated_rows"] + len(bad)
    assert written > 0
    pg.run(f"drop table {table}; drop table {table}__etl_state")
