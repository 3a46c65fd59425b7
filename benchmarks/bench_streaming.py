"""Streaming (P8): StreamingWatermarkOperator vs a bare Structured Streaming query with Spark's own watermark.

What is compared (same Kafka topic, same SparkSession, ``--rounds`` times, medians)
    *Ours*: ``StreamingWatermarkOperator(...).execute(context={})`` -- the real operator: Kafka source
    (``max_offsets_per_trigger``), 10-minute watermark, 5-minute tumbling windows by ``customer``,
    ``sum/avg/min/max(amount)`` and ``count`` (``--with-distinct`` adds ``approx_count_distinct(order_id)``),
    ``trigger="available_now"``, PostgreSQL sink (``postgres_default``, append mode), every late row to a Kafka
    dead-letter topic (``kafka_default``), exactly once through the PostgreSQL ledger. Fresh checkpoint,
    sink table and DLQ topic per round.

    *Peer*: what a user writes without us: ``from_json`` of the same topic, ``withWatermark("event_time",
    "10 minutes")``, ``groupBy(window(event_time, "5 minutes"), customer).agg(<the same aggregations>)``,
    ``writeStream.format("parquet").outputMode("append")``, ``trigger(availableNow=True)``, the same
    ``maxOffsetsPerTrigger``. Spark's state store keeps the windows; late rows are dropped silently and only
    counted (``numRowsDroppedByWatermark`` of the query's progress, summed over batches). No ledger, no
    dead-letter queue, no exactly-once sink.

    Timed: ours ``execute()`` from call to return (lock, checkpoint epoch, query, every batch, the XCom
    result); the peer from building the query to ``awaitTermination()``. Goal (issue P8): ours <= 1.3x.

The stream (generated once per run, not timed): ``--events`` JSON events ``{order_id, customer (1000 keys),
amount DECIMAL(12,2), event_time}`` round-robin over ``--partitions`` partitions of a fresh topic. Event
times advance ``--event-rate`` events per second of event time (default 100/s: 1M events span ~2.8 hours,
~33 windows x 1000 customers) and lag up to 8 minutes behind (out of order, within the 10-minute lateness:
never late for either side). About ``--late-fraction`` (1 %) of the events are late for BOTH sides: Spark
judges a batch's late rows with the watermark of the batch before (Spark >= 3.4: the watermark computed
after batch N-2), ours with the watermark recorded after batch N-1 (never older), so a late event in batch
N >= 2 is given an event time whose window ends >= 19 minutes before the stream position where batch N-1
starts (8 min jitter + 10 min watermark + 1 min margin). Both sides read the same batches (the same
``maxOffsetsPerTrigger``, default ``events / 5``: five batches). Spark drops late rows *after* its partial
aggregation, so ``numRowsDroppedByWatermark`` counts partially aggregated rows; each late event of a batch
is therefore given its own (customer, window), which makes Spark's count equal the number of late events.

Checked (not timed), or the run exits 1: ours read every event and its XCom ``late_rows`` and the DLQ
topic's message count equal the generator's late events; ours' sink and the peer's Parquet output hold the
same windows with the same ``count`` and ``amount_sum`` totals.

Where our time goes: the benchmark wraps ``StreamBatchProcessor``'s steps and every ``DataFrame.collect``
it makes (``first()`` included) with timers, and reads the queries' progress (``durationMs``): per-phase
seconds are printed per round (``--no-profile`` leaves the operator unwrapped; the overhead is a few
``perf_counter`` calls per batch).

Results (1M events, ``--rounds 3`` medians, quiet 2-core box, load average ~1.6): ours 9.74 s (103k events/s),
peer 7.68 s (130k events/s): **1.27x, goal 1.3x met** (rounds 1.15x, 1.27x, 1.29x). At load average 8-13 (other
engineers' Spark tests on the same box) the same command gave 1.7x: our Python work slows down more than the
peer's JVM-only query. Late rows: 10,000 placed, 10,000 in ours' XCom and DLQ topic, Spark's
``numRowsDroppedByWatermark`` 10,000 (dropped). Sinks equal (32,976 windows). Peak RSS: Python driver ~420 MiB
both, Spark JVM ~1.5 GB both.

Where ours' 9.74 s go (the median round, summed over 5 batches): 6.1 the one aggregation per batch that reads
Kafka, parses and computes everything (partials, late and time-less pairs, per-partition counts and offsets; two
grouping sets; the peer's whole query is 7.7), 1.4 the merge into PostgreSQL (state 0.45, sink COPY 0.3, the
rest Python), 1.6 the DLQ publish (in a thread alongside the merge: Arrow from the cached aggregate, envelopes,
Kafka), 1.5 waiting for it and building plans, 0.7 outside ``foreachBatch``.

Design choices, measured (``/tmp``-style experiments on static reads of the same 5 batches, 5 rounds, medians):
the peer-like aggregation 6.03 s; ours with one key column per payload column 6.98, with the row as one struct key
6.64 (kept), without carrying the row at all 6.42 (then the late rows must be read again: a second Kafka read
costs ~1 s per 200k). Before this design (batch cached, scanned four times, DLQ from a Spark task with a new
producer each) the ratio was 1.97x. Not tried, by reasoning only: publishing the DLQ from a ``mapInArrow`` in the
aggregation's own pass (every row would cross into Python), and observed metrics for the counts (an observation
in a map stage counts a retried task twice, which would break the exact accounting).

Peak memory: the high-water marks (``VmHWM``) of the Python driver, the Spark JVM (driver and executors:
``local[2]``) and Spark's Python workers are reset (``/proc/<pid>/clear_refs``) before each side and read
after it, so each side's peak is its own; ``ru_maxrss`` of the whole run is printed too.

How to run (the local stack must be up: ``make services-up``)::

    set -a; . .local/airflow.env; set +a
    .venv/bin/python benchmarks/bench_streaming.py [--events 1000000] [--rounds 3] [--max-offsets-per-trigger N]

A whole warm-up round (both sides on the same stream, not timed) runs first: with a small warm-up the peer's
first full-size round was 2x slower than its later ones (JIT). The last line is
``bench streaming_p8_vs_bare_spark_watermark: ours=<s> peer=<s> ratio=<ours/peer>`` (medians). No timing is
asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from _common import (
    delete_topics,
    kafka_bootstrap,
    peak_rss_mb,
    postgres_port,
    proc_peak_rss_mb,
    result_line,
    topic_message_count,
)

BENCH_ID = "streaming_p8_vs_bare_spark_watermark"
GOAL = 1.3
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "order_id STRING, customer STRING, amount DECIMAL(12,2), event_time TIMESTAMP"
CUSTOMERS = 1000
MIN_US = 60_000_000
WATERMARK_US, WINDOW_US = 10 * MIN_US, 5 * MIN_US
JITTER_US = 8 * MIN_US  # on-time events lag up to 8 minutes: < the 10-minute watermark
LATE_MARGIN_US = JITTER_US + WATERMARK_US + 1 * MIN_US
T0_US = 1_796_040_000_000_000  # 2026-11-30T12:00:00Z


# ------------------------------------------------------------------------------------------ the stream
@dataclass
class Stream:
    topic: str
    events: int
    max_offsets: int
    late: int  # late events the generator placed (late for both sides)
    late_by_batch: dict[int, int] = field(default_factory=dict)
    on_time_amount: Decimal = Decimal(0)
    span_s: float = 0.0


def generate(events: int, max_offsets: int, partitions: int, rate: float, late_fraction: float,
             seed: int = 42) -> tuple[list[bytes], list[int], int, dict[int, int], float]:
    """The events as JSON bytes (round-robin over ``partitions`` in this order), the indexes of the late
    ones, their count per batch, and the event-time span in seconds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if max_offsets % partitions:
        raise SystemExit(f"--max-offsets-per-trigger ({max_offsets}) must be a multiple of --partitions "
                         f"({partitions}): every batch then ends at the same stream position on every partition")
    step_us = 1e6 / rate
    base = T0_US + (np.arange(events) * step_us).astype(np.int64)
    times = base - rng.integers(0, JITTER_US, events)
    batches = -(-events // max_offsets)
    # late events: in batches >= 2 (Spark judges batch N with the watermark after batch N-2), away from the
    # first 5 % of a batch (a margin around the batch boundaries)
    eligible = np.array([i for b in range(2, batches) for i in range(b * max_offsets + max_offsets // 20,
                                                                      min(events, (b + 1) * max_offsets))],
                        dtype=np.int64)
    n_late = round(events * late_fraction)
    if n_late and len(eligible) < n_late:
        raise SystemExit(f"{events} events in batches of {max_offsets} give {batches} batch(es): late events need "
                         "at least 3 batches (lower --max-offsets-per-trigger)")
    late_idx = np.sort(rng.choice(eligible, n_late, replace=False)) if n_late else np.array([], dtype=np.int64)
    customers = rng.integers(0, CUSTOMERS, events)
    late_by_batch: dict[int, int] = defaultdict(int)
    for i in late_idx:
        b = int(i) // max_offsets
        j = late_by_batch[b]  # the j-th late event of batch b: its own (customer, window)
        late_by_batch[b] += 1
        ref = int(base[(b - 1) * max_offsets])  # the stream position where batch b-1 starts
        newest_window = (ref - LATE_MARGIN_US) // WINDOW_US - 1  # its end <= ref - margin
        window = newest_window - j // CUSTOMERS
        times[i] = window * WINDOW_US + int(rng.integers(0, WINDOW_US))
        customers[i] = j % CUSTOMERS
    cents = rng.integers(100, 5_000_000, events)
    out = []
    for i in range(events):
        t = int(times[i])
        secs, us = divmod(t, 1_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{us:06d}"
        c = int(cents[i])
        out.append(f'{{"order_id":"o{i:08d}","customer":"c{int(customers[i]):04d}","amount":{c // 100}.{c % 100:02d},'
                   f'"event_time":"{stamp}"}}'.encode())
    return out, [int(i) for i in late_idx], dict(late_by_batch), events * step_us / 1e6


def admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import NewTopic

    client = admin(bootstrap)
    client.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = client.list_topics(timeout=10).topics
        if topic in meta and len(meta[topic].partitions) == partitions and all(
                p.leader >= 0 for p in meta[topic].partitions.values()):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topic {topic} not ready within 30 s")


def produce(bootstrap: str, topic: str, payloads: list[bytes], partitions: int) -> None:
    """Send event i to partition i % partitions, in order (idempotent producer: no reordering on retry)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                         "batch.num.messages": 10_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 500_000})
    errors: list[Any] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for i, value in enumerate(payloads):
        while True:
            try:
                producer.produce(topic, value=value, partition=i % partitions, on_delivery=done)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) or errors:
        raise RuntimeError(f"producing to {topic} failed: {errors[:3]}")


def make_stream(bootstrap: str, events: int, max_offsets: int, partitions: int, rate: float,
                late_fraction: float, tag: str, label: str) -> Stream:
    t0 = time.perf_counter()
    payloads, late_idx, late_by_batch, span_s = generate(events, max_offsets, partitions, rate, late_fraction)
    topic = f"bench-p8-{label}-{tag}"
    create_topic(bootstrap, topic, partitions)
    produce(bootstrap, topic, payloads, partitions)
    if topic_message_count(bootstrap, topic) != events:
        raise RuntimeError(f"topic {topic} does not hold {events} events")
    print(f"  {label}: {events:,} events ({len(late_idx):,} late: "
          f"{', '.join(f'batch {b}: {n:,}' for b, n in sorted(late_by_batch.items())) or 'none'}) to {topic} "
          f"({partitions} partitions, {span_s / 3600:.2f} h of event time) in {time.perf_counter() - t0:.1f} s")
    return Stream(topic, events, max_offsets, len(late_idx), late_by_batch, span_s=span_s)


# ------------------------------------------------------------------------------------------ memory
class Peaks:
    """Per-side peak RSS of the Python driver, the Spark JVM and its Python workers (reset between sides)."""

    def __init__(self, jvm_pid: int | None) -> None:
        self.jvm_pid = jvm_pid
        self.can_reset = True

    def _pids(self) -> tuple[list[int], list[int]]:
        import psutil

        workers: list[int] = []
        if self.jvm_pid is not None:
            with contextlib.suppress(psutil.Error):
                workers = [p.pid for p in psutil.Process(self.jvm_pid).children(recursive=True)]
        return [os.getpid(), *([self.jvm_pid] if self.jvm_pid else [])], workers

    def reset(self) -> None:
        main, workers = self._pids()
        for pid in [*main, *workers]:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                if pid in main:
                    self.can_reset = False

    def read(self) -> dict[str, float | None]:
        main, workers = self._pids()
        worker_peaks = [p for p in (proc_peak_rss_mb(w) for w in workers) if p is not None]
        return {"driver": proc_peak_rss_mb(main[0]), "jvm": proc_peak_rss_mb(main[1]) if len(main) > 1 else None,
                "workers": sum(worker_peaks) if worker_peaks else None}


def fmt_mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


# ------------------------------------------------------------------------------------------ profiling
class Profiler:
    """Times ``StreamBatchProcessor``'s steps and every Spark action (``DataFrame.collect``) it makes, by caller."""

    STEPS = ("process", "_process", "_dead_letter", "_partials", "_merge_and_write", "_merge", "_write",
             "_estimates", "_union_sketches", "_process_one_pass", "_process_cached", "_finish")

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = defaultdict(list)
        self.actions: dict[str, list[float]] = defaultdict(list)
        self.sql: dict[str, list[float]] = defaultdict(list)
        self._saved: list[tuple[Any, str, Any]] = []

    @contextlib.contextmanager
    def active(self, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        try:  # pyspark >= 4: the classic (py4j) DataFrame holds collect(); first()/take() end there too
            from pyspark.sql.classic.dataframe import DataFrame
        except ImportError:
            from pyspark.sql import DataFrame

        from airflow_etl_provider.executor import streaming as ex

        for name in self.STEPS:
            if hasattr(ex.StreamBatchProcessor, name):
                self._wrap(ex.StreamBatchProcessor, name, self._step_timer(name))
        self._wrap(DataFrame, "collect", self._action_timer)
        import psycopg

        for name in ("execute", "executemany", "fetchall"):
            self._wrap(psycopg.Cursor, name, self._sql_timer(name))
        try:
            yield
        finally:
            for owner, name, original in reversed(self._saved):
                setattr(owner, name, original)
            self._saved.clear()

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def _step_timer(self, name: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def timed(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.steps[name].append(time.perf_counter() - t0)
            return timed
        return make

    def _action_timer(self, original: Any) -> Any:
        def timed(df: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(df, *args, **kwargs)
            finally:
                where = "?"
                for frame in inspect.stack(0)[1:]:
                    if "airflow_etl_provider" in frame.filename:
                        where = f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno} " \
                                f"{frame.function}"
                        break
                self.actions[where].append(time.perf_counter() - t0)
        return timed

    def _sql_timer(self, method: str) -> Callable[[Any], Any]:
        """Times the processor's PostgreSQL statements by kind (first words, without the table names)."""
        import re

        def make(original: Any) -> Any:
            def timed(cur: Any, *args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(cur, *args, **kwargs)
                finally:
                    if method == "fetchall":
                        kind = "fetchall"
                    else:
                        sql = str(args[0] if args else kwargs.get("query", ""))
                        kind = re.sub(r'\s+', " ", re.sub(r'("?[\w]+"?\.)?"?\w*(__etl_state|etl_stream_\w+|bench_p8_\w+)"?',
                                                         "<t>", sql)).strip()[:70]
                        kind = f"{method} {kind}"
                    self.sql[kind].append(time.perf_counter() - t0)
            return timed
        return make

    def total(self, name: str) -> float:
        return sum(self.steps.get(name, []))


def progress_durations(progress: Sequence[Any]) -> dict[str, float]:
    """Seconds per ``durationMs`` key summed over the query's batches."""
    out: dict[str, float] = defaultdict(float)
    for p in progress:
        for k, v in (p.get("durationMs") or {}).items():
            out[k] += v / 1000
    return dict(out)


# ------------------------------------------------------------------------------------------ sides
AGGS = {"amount": ["sum", "avg", "min", "max"], "*": ["count"]}


def run_ours(spark: Any, stream: Stream, work: Path, tag: str, profiler: Profiler, profile: bool) -> dict[str, Any]:
    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    bootstrap = kafka_bootstrap()
    dlq_topic = f"{stream.topic}-dlq-{tag}"
    create_topic(bootstrap, dlq_topic, 3)
    table = f"public.bench_p8_{tag}"
    aggs = dict(AGGS)
    if ARGS.with_distinct:
        aggs["order_id"] = ["approx_count_distinct"]
    op = StreamingWatermarkOperator(
        task_id="bench_p8",
        source={"type": "kafka", "conn_id": "kafka_default", "topic": stream.topic, "starting_offsets": "earliest",
                "format": "json", "schema": SCHEMA, "max_offsets_per_trigger": stream.max_offsets},
        event_time_column="event_time", watermark="10 minutes", window={"type": "tumbling", "duration": "5 minutes"},
        group_by=["customer"], aggregations=aggs,
        sink={"type": "postgres", "conn_id": "postgres_default", "table": table},
        checkpoint_location=str(work / f"ck_ours_{tag}"),
        late_data={"dead_letter": {"type": "kafka", "conn_id": "kafka_default", "topic": dlq_topic}},
        pipeline_id=f"bench.p8.{tag}",
    )
    with profiler.active(profile):
        t0 = time.perf_counter()
        result = op.execute(context={})
        seconds = time.perf_counter() - t0
    query = op._runner.query
    progress = list(query.recentProgress) if query is not None else []
    return {"seconds": seconds, "result": result, "table": table, "dlq_topic": dlq_topic,
            "pipeline": f"bench.p8.{tag}", "progress": progress}


def run_peer(spark: Any, stream: Stream, work: Path, tag: str) -> dict[str, Any]:
    from pyspark.sql import functions as F

    out_dir, ck = work / f"peer_out_{tag}", work / f"ck_peer_{tag}"
    t0 = time.perf_counter()
    raw = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", kafka_bootstrap())
           .option("subscribe", stream.topic).option("startingOffsets", "earliest")
           .option("maxOffsetsPerTrigger", str(stream.max_offsets)).load())
    events = raw.select(F.from_json(F.col("value").cast("string"), SCHEMA).alias("v")).select("v.*")
    exprs = [F.sum("amount").alias("amount_sum"), F.avg("amount").alias("amount_avg"),
             F.min("amount").alias("amount_min"), F.max("amount").alias("amount_max"),
             F.count(F.lit(1)).alias("count")]
    if ARGS.with_distinct:
        exprs.append(F.approx_count_distinct("order_id").alias("order_id_approx_count_distinct"))
    agg = (events.withWatermark("event_time", "10 minutes")
           .groupBy(F.window("event_time", "5 minutes"), F.col("customer")).agg(*exprs))
    out = agg.select("customer", F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                     *[c for c in agg.columns if c not in ("window", "customer")])
    query = (out.writeStream.queryName(f"bench_p8_peer_{tag}").format("parquet").option("path", str(out_dir))
             .option("checkpointLocation", str(ck)).outputMode("append").trigger(availableNow=True).start())
    query.awaitTermination()
    seconds = time.perf_counter() - t0
    progress = list(query.recentProgress)
    dropped = sum(int(op.get("numRowsDroppedByWatermark", 0)) for p in progress for op in p.get("stateOperators", []))
    return {"seconds": seconds, "dropped": dropped, "out_dir": out_dir, "progress": progress,
            "input_rows": sum(int(p.get("numInputRows", 0)) for p in progress)}


# ------------------------------------------------------------------------------------------ checks
def pg_connect() -> Any:
    import psycopg

    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

    return psycopg.connect(**SparkPostgresHook(postgres_conn_id="postgres_default").psycopg_conn_args(
        application_name="bench-streaming"), autocommit=True)


def verify(spark: Any, stream: Stream, ours: dict[str, Any], peer: dict[str, Any]) -> list[str]:
    from pyspark.sql import functions as F

    problems = []
    r = ours["result"]
    dlq = topic_message_count(kafka_bootstrap(), ours["dlq_topic"])
    ours["dlq_count"] = dlq
    if r["input_rows"] != stream.events:
        problems.append(f"ours read {r['input_rows']} events, expected {stream.events}")
    if r["late_rows"] != stream.late:
        problems.append(f"ours counted {r['late_rows']} late rows, the generator placed {stream.late}")
    if dlq != stream.late:
        problems.append(f"the DLQ topic holds {dlq} messages, the generator placed {stream.late} late events")
    if peer["input_rows"] != stream.events:
        problems.append(f"the peer read {peer['input_rows']} events, expected {stream.events}")
    with pg_connect() as conn:
        o = conn.execute(f'SELECT count(*), coalesce(sum("count"), 0), coalesce(sum(amount_sum), 0) '
                         f"FROM {ours['table']}").fetchone()
    p = spark.read.parquet(str(peer["out_dir"])).agg(F.count(F.lit(1)), F.sum("count"), F.sum("amount_sum")).first()
    ours_totals = (int(o[0]), int(o[1]), Decimal(o[2]))
    peer_totals = (int(p[0]), int(p[1] or 0), Decimal(p[2] or 0))
    ours["totals"], peer["totals"] = ours_totals, peer_totals
    if ours_totals != peer_totals:
        problems.append(f"sink totals (windows, sum(count), sum(amount_sum)) differ: ours {ours_totals}, "
                        f"peer {peer_totals}")
    return problems


def cleanup_ours(ours: dict[str, Any]) -> None:
    table = ours["table"]
    schema, _, name = table.rpartition(".")
    with pg_connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f'DROP TABLE IF EXISTS {schema}."{name}__etl_state"')
        for t in ("etl_stream_ledger", "etl_stream_epochs"):
            conn.execute(f"DELETE FROM {schema}.{t} WHERE pipeline = %s", (ours["pipeline"],))


# ------------------------------------------------------------------------------------------ main
def load_avg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def spark_session() -> Any:
    import _common

    return _common.local_spark_session("bench-streaming")


def describe_ours(ours: dict[str, Any], profiler: Profiler | None, events: int) -> None:
    r, secs = ours["result"], ours["seconds"]
    print(f"    ours: {secs:.2f} s, {events / secs:,.0f} events/s; {r['batches']} batches "
          f"({', '.join(f'{d:.1f}' for d in r['batch_durations_s'])} s each, from the ledger), "
          f"{r['input_rows']:,} in, {r['aggregated_rows']:,} aggregated, {r['late_rows']:,} late, "
          f"{r['output_rows']:,} windows written, watermark -> {r['watermark']['after']}")
    d = progress_durations(ours["progress"])
    if d:
        print(f"    ours, Spark query progress (s, summed over {len(ours['progress'])} triggers): "
              + ", ".join(f"{k}={v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])))
    if profiler is None or not profiler.steps:
        return
    process, inner = profiler.total("process"), profiler.total("_process")
    dead, mw = profiler.total("_dead_letter"), profiler.total("_merge_and_write")
    merge, write, est = profiler.total("_merge"), profiler.total("_write"), profiler.total("_estimates")
    scan = sum(t for where, times in profiler.actions.items() if "_process_one_pass" in where
               or "_process_cached" in where or "_partials" in where for t in times)
    print(f"    ours, phases (s, summed over batches): execute {secs:.2f} = foreachBatch {process:.2f} + "
          f"outside it {secs - process:.2f} (query start/planning/offsets/WAL, lock, epoch, result)")
    print(f"      foreachBatch {process:.2f} = connect+DDL+ledger+commit {process - inner:.2f} + the batch's "
          f"aggregation (Kafka read, parse, partials, late pairs, counts, offsets) {scan:.2f} + merge/write SQL "
          f"{mw:.2f} (state merge {merge:.2f}, sink insert {write:.2f}, HLL estimates {est:.2f}) + waiting for "
          f"the DLQ after the merge, plans {inner - scan - mw:.2f}")
    print(f"      DLQ publish {dead:.2f} (a Spark job over the cached aggregate, in a thread alongside the merge)")
    for where, times in sorted(profiler.actions.items(), key=lambda kv: -sum(kv[1])):
        print(f"      Spark action {where}: {sum(times):.2f} s in {len(times)} call(s)")
    for kind, times in sorted(profiler.sql.items(), key=lambda kv: -sum(kv[1]))[:6]:
        print(f"      SQL {kind}: {sum(times):.2f} s in {len(times)} call(s)")


def describe_peer(peer: dict[str, Any], events: int) -> None:
    secs = peer["seconds"]
    batches = [p for p in peer["progress"] if p.get("numInputRows")]
    print(f"    peer: {secs:.2f} s, {events / secs:,.0f} events/s; {len(peer['progress'])} triggers "
          f"({len(batches)} with data), numRowsDroppedByWatermark={peer['dropped']:,} (per trigger: "
          f"{', '.join(str(sum(int(o.get('numRowsDroppedByWatermark', 0)) for o in p.get('stateOperators', []))) for p in peer['progress'])})")
    d = progress_durations(peer["progress"])
    if d:
        print("    peer, Spark query progress (s, summed): "
              + ", ".join(f"{k}={v:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])))


def one_round(spark: Any, stream: Stream, work: Path, tag: str, peaks: Peaks, verbose: bool,
              profile: bool, peer_first: bool = True) -> tuple[dict[str, Any], dict[str, Any], Profiler]:
    profiler = Profiler()

    def peer_side() -> dict[str, Any]:
        peaks.reset()
        out = run_peer(spark, stream, work, tag)
        out["peaks"] = peaks.read()
        return out

    def ours_side() -> dict[str, Any]:
        peaks.reset()
        out = run_ours(spark, stream, work, tag, profiler, profile)
        out["peaks"] = peaks.read()
        return out

    if peer_first:
        peer = peer_side()
        ours = ours_side()
    else:
        ours = ours_side()
        peer = peer_side()
    if verbose:
        print(f"  ({'peer' if peer_first else 'ours'} ran first)")
    problems = verify(spark, stream, ours, peer)
    if verbose:
        describe_peer(peer, stream.events)
        describe_ours(ours, profiler, stream.events)
        print(f"    checked: late expected {stream.late:,} / ours (XCom late_rows) {ours['result']['late_rows']:,} / "
              f"ours DLQ topic {ours['dlq_count']:,} / Spark numRowsDroppedByWatermark {peer['dropped']:,}; "
              f"sink (windows, sum(count), sum(amount_sum)) ours {ours['totals']} peer {peer['totals']}")
        for side in ("peer", "ours"):
            pk = (peer if side == "peer" else ours)["peaks"]
            print(f"    peak RSS {side}: Python driver {fmt_mb(pk['driver'])} MiB, Spark JVM {fmt_mb(pk['jvm'])} MiB, "
                  f"Python workers {fmt_mb(pk['workers'])} MiB")
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        sys.exit(1)
    if not ARGS.keep:
        cleanup_ours(ours)
        delete_topics(kafka_bootstrap(), [ours["dlq_topic"]])
        shutil.rmtree(peer["out_dir"], ignore_errors=True)
    return ours, peer, profiler


ARGS: argparse.Namespace


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the stream (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, medians compared (default 3)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=None,
                        help="maxOffsetsPerTrigger of both sides (default events / 5, rounded to the partitions)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the event topic (default 4)")
    parser.add_argument("--event-rate", type=float, default=100.0,
                        help="events per second of event time (default 100: 1M events span ~2.8 h)")
    parser.add_argument("--late-fraction", type=float, default=0.01, help="late events (default 0.01)")
    parser.add_argument("--with-distinct", action="store_true",
                        help="add approx_count_distinct(order_id) on both sides")
    parser.add_argument("--no-profile", action="store_true", help="do not wrap the operator's steps with timers")
    parser.add_argument("--keep", action="store_true", help="keep topics, tables and checkpoints")
    parser.add_argument("--verbose", action="store_true", help="the operator's INFO log (a line per batch)")
    ARGS = args = parser.parse_args()
    postgres_port()
    bootstrap = kafka_bootstrap()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("airflow_etl_provider", "airflow.task", "py4j"):  # Airflow's structlog logs INFO otherwise
        logging.getLogger(name).setLevel(logging.INFO if args.verbose and name != "py4j" else logging.WARNING)
    parts = args.partitions
    mopt = args.max_offsets_per_trigger or max(parts, (args.events // 5) // parts * parts)
    tag = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="bench-p8-", dir=ROOT / ".local" if (ROOT / ".local").is_dir() else None))
    topics: list[str] = []
    print(f"P8: {args.events:,} events, maxOffsetsPerTrigger {mopt:,} on both sides, {parts} partitions, "
          f"{args.event_rate:g} events per event-time second, {args.late_fraction:.1%} late; Kafka {bootstrap}, "
          f"PostgreSQL 127.0.0.1:{postgres_port()}; load average {load_avg()} on {os.cpu_count()} cores")
    try:
        print("generating the streams (not timed) ...")
        stream = make_stream(bootstrap, args.events, mopt, parts, args.event_rate, args.late_fraction, tag, "events")
        topics.append(stream.topic)
        spark = spark_session()
        from bench_load_postgres import jvm_pids

        jvm_pid, _ = jvm_pids(spark)
        peaks = Peaks(jvm_pid)
        print(f"Spark {spark.version} {spark.sparkContext.master}, shuffle partitions "
              f"{spark.conf.get('spark.sql.shuffle.partitions')}; warm-up round (both sides, same stream, not timed)")
        t0 = time.perf_counter()
        one_round(spark, stream, work, f"{tag}_w", peaks, verbose=False, profile=False)
        print(f"  warm-up done in {time.perf_counter() - t0:.1f} s")
        if not peaks.can_reset:
            print("  (cannot reset the peak RSS counters: per-side peaks are the run's peaks so far)")
        ours_s, peer_s, ours_all, peer_all = [], [], [], []
        for r in range(1, args.rounds + 1):
            print(f"\n==== round {r}/{args.rounds} (load average {load_avg()})")
            ours, peer, _ = one_round(spark, stream, work, f"{tag}_{r}", peaks, verbose=True,
                                      profile=not args.no_profile, peer_first=r % 2 == 1)
            ours_s.append(ours["seconds"])
            peer_s.append(peer["seconds"])
            ours_all.append(ours)
            peer_all.append(peer)
        print(f"(load average {load_avg()})")
        ours_m, peer_m = statistics.median(ours_s), statistics.median(peer_s)
        ratio = ours_m / peer_m
        last_o, last_p = ours_all[-1], peer_all[-1]
        worst = {side: {k: max((x["peaks"][k] or 0) for x in runs) or None for k in ("driver", "jvm", "workers")}
                 for side, runs in (("ours", ours_all), ("peer", peer_all))}
        print(f"\nsummary for {args.events:,} events, medians of {args.rounds} round(s) "
              f"(ours {', '.join(f'{s:.2f}' for s in ours_s)} s; peer {', '.join(f'{s:.2f}' for s in peer_s)} s):")
        print(f"  ours {ours_m:.2f} s = {args.events / ours_m:,.0f} events/s; peer {peer_m:.2f} s = "
              f"{args.events / peer_m:,.0f} events/s")
        print(f"  late rows: expected {stream.late:,}; ours captured {last_o['result']['late_rows']:,} (XCom late_rows), "
              f"{last_o['dlq_count']:,} in the DLQ topic; Spark numRowsDroppedByWatermark {last_p['dropped']:,} "
              f"(dropped, not kept)")
        for side in ("ours", "peer"):
            w = worst[side]
            print(f"  peak RSS {side} (max over rounds): Python driver {fmt_mb(w['driver'])} MiB, Spark JVM "
                  f"{fmt_mb(w['jvm'])} MiB, Spark Python workers {fmt_mb(w['workers'])} MiB")
        print(f"  whole run: Python driver ru_maxrss {peak_rss_mb():.0f} MiB")
        print(f"goal P8: ours <= {GOAL:.1f}x the bare Spark query [{'ok' if ratio <= GOAL else 'MISSED'}: {ratio:.2f}x]")
        spark.stop()
    finally:
        if not args.keep:
            delete_topics(bootstrap, topics)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(result_line(BENCH_ID, ours_m, peer_m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
