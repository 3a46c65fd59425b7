"""The micro-batch function of the StreamingWatermarkOperator (``foreachBatch``), and the PostgreSQL tables
it keeps: the window state, the sink, and the ledger that makes each batch count exactly once.

Executor-side code (see :mod:`airflow_etl_provider.executor`): on Spark Connect the ``foreachBatch``
function runs in a Python process of the server, where there is no Airflow. Everything it needs arrives as
plain settings resolved on the driver.

What one batch does, in one PostgreSQL transaction (a replayed batch finds its ledger row and changes
nothing):

1. reads the watermark the ledger recorded after the previous batch, ``W(N-1)``;
2. assigns each row its windows (Spark's ``window``) and splits the (row, window) pairs: **late** when the
   window ends at or before ``W(N-1)`` (Spark's own drop rule), on time otherwise. Spark itself runs no
   stateful operator here, so it drops nothing: every row is either aggregated or dead-lettered;
3. sends the late pairs to the dead-letter queue (before the commit: at-least-once, with envelope ids that
   depend only on the row's Kafka position and window, so a replay re-sends the same ids);
4. merges the on-time partial aggregates into the window state (``count``, ``sum``, ``min``, ``max``, the
   parts of ``avg``, and HLL sketches for ``approx_count_distinct``);
5. moves the watermark to ``max(W(N-1), max event time - delay)``; in ``append`` mode writes every window
   the watermark has passed to the sink, once, and drops its state; in ``update`` mode upserts the windows
   this batch changed;
6. checks ``input pairs = aggregated pairs + late pairs`` and records the batch in the ledger.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from airflow_etl_provider.core.errors import RowAccountingError
from airflow_etl_provider.core.streaming import Aggregate, WindowSpec, advance_watermark, session_clusters
from airflow_etl_provider.executor.dead_letter import (
    ERROR_COLUMN,
    STATUS_SCHEMA,
    partition_publisher,
    result_from_statuses,
)
from airflow_etl_provider.executor.sinks import DeadLetterSink
from airflow_etl_provider.executor.stream_sinks import WINDOW_END, WINDOW_START, WindowSink

log = logging.getLogger(__name__)

try:  # a dependency (requirements-executor.txt too); the standard library gives the same documents without it
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment]

#: Columns the source adds to every row: where it was read (they never reach the sink).
TOPIC, PARTITION, OFFSET = "_etl_topic", "_etl_partition", "_etl_offset"
LOCATION_COLUMNS = (TOPIC, PARTITION, OFFSET)
#: Up to this many dead letters in a batch are published from the batch function's own process (collected as
#: Arrow: bounded memory) rather than by a Spark task per partition (benchmarks/bench_streaming.py: a Spark job,
#: a Python worker and a new producer per task cost ~0.5-2 s per batch for a few thousand late rows)
FEW_DEAD_LETTERS = 50_000

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {ledger} (
    pipeline text NOT NULL,
    epoch text NOT NULL,
    batch_id bigint NOT NULL,
    watermark_before_us bigint NOT NULL,
    watermark_after_us bigint NOT NULL,
    max_event_time_us bigint,
    input_rows bigint NOT NULL,
    input_pairs bigint NOT NULL,
    aggregated_pairs bigint NOT NULL,
    late_pairs bigint NOT NULL,
    invalid_rows bigint NOT NULL,
    output_rows bigint NOT NULL,
    offsets jsonb,
    dead_letter_location text,
    duration_s double precision,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, epoch, batch_id)
)"""

STATE_DDL = """
CREATE TABLE IF NOT EXISTS {state} (
    pipeline text NOT NULL,
    epoch text NOT NULL,
    group_key text NOT NULL,
    window_start_us bigint NOT NULL,
    window_end_us bigint NOT NULL,
    partials jsonb NOT NULL,
    PRIMARY KEY (pipeline, epoch, group_key, window_start_us, window_end_us)
)"""


# ------------------------------------------------------------------------------------------ partials
def partial_parts(agg: Aggregate) -> list[str]:
    """The partial aggregates one output needs (merged across batches): ``n``, ``s``, ``min``, ``max``, ``hll``."""
    return {"count": ["n"], "sum": ["s"], "avg": ["s", "n"], "min": ["min"], "max": ["max"],
            "approx_count_distinct": ["hll"]}[agg.func]


def _encode(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": value}
    if isinstance(value, Decimal):
        return {"t": "dec", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": repr(value)}
    if isinstance(value, datetime):
        return {"t": "ts", "v": value.isoformat()}
    if isinstance(value, bytes | bytearray):
        return {"t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    return {"t": "str", "v": str(value)}


def _decode(doc: Any) -> Any:
    if doc is None:
        return None
    kind, v = doc["t"], doc["v"]
    return {"bool": lambda: v, "int": lambda: int(v), "dec": lambda: Decimal(v), "float": lambda: float(v),
            "ts": lambda: datetime.fromisoformat(v), "bytes": lambda: base64.b64decode(v),
            "str": lambda: v}[kind]()


def _add(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else a + b


def _least(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class BatchResult:
    """What one micro-batch did (one ledger row)."""

    batch_id: int
    watermark_before_us: int
    watermark_after_us: int
    max_event_time_us: int | None
    input_rows: int
    input_pairs: int
    aggregated_pairs: int
    late_pairs: int
    output_rows: int
    invalid_rows: int = 0
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    duration_s: float = 0.0
    replayed: bool = False


@dataclass
class StreamBatchProcessor:
    """The ``foreachBatch`` function: ``processor(batch_df, batch_id)``. Picklable, no Airflow.

    :param pipeline_id: the stream's name (ledger, state and envelopes).
    :param epoch: identifies the checkpoint: batch ids restart at 0 with a new checkpoint, the epoch changes.
    :param conn_args: psycopg connection parameters (resolved on the driver).
    :param sink: where the windows go (:mod:`airflow_etl_provider.executor.stream_sinks`).
    :param state_table: quoted table of the open windows' partial aggregates.
    :param ledger_table: quoted ledger table.
    :param event_time_column: the event-time column.
    :param watermark_us: the allowed lateness.
    :param window: the window spec (tumbling or sliding).
    :param group_by: the grouping columns.
    :param aggregates: the outputs.
    :param output_mode: ``append`` (a window written once, when final) or ``update``.
    :param dead_letter: where late pairs go (``None``: counted and dropped, ``late_data="drop"``).
    :param spool_dir: the dead-letter spool.
    :param run_context: dag/task/run/try for the envelopes (a ``RunContext``).
    :param column_types: PostgreSQL types of the group-by columns (the sink's DDL).
    :param location_columns: the columns that say where a row was read (Kafka position, file).
    :param replay_target: the ``--to ...`` part of the replay command a spooled dead letter names.
    """

    pipeline_id: str
    epoch: str
    conn_args: dict[str, Any]
    sink: WindowSink
    state_table: str
    ledger_table: str
    event_time_column: str
    watermark_us: int
    window: WindowSpec
    group_by: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]
    output_mode: str
    dead_letter: DeadLetterSink | None
    spool_dir: str
    run_context: Any
    column_types: dict[str, str] = field(default_factory=dict)
    location_columns: tuple[str, ...] = LOCATION_COLUMNS
    replay_target: str = ""
    _batch_id: int = field(default=-1, repr=False)
    _tables_ensured: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------------------------ SQL
    def ensure_tables(self, cur: Any) -> None:
        """Create the ledger, the state and (PostgreSQL sink) the sink table if missing (idempotent); once per
        process, not once per batch (set once a batch committed them)."""
        if self._tables_ensured:
            return
        cur.execute(LEDGER_DDL.format(ledger=self.ledger_table))
        cur.execute(STATE_DDL.format(state=self.state_table))
        self.sink.ensure(cur, self.group_by, self.aggregates, self.column_types)

    # ------------------------------------------------------------------------------ the batch
    def __call__(self, df: Any, batch_id: int) -> None:
        self.process(df, batch_id)

    def process(self, df: Any, batch_id: int) -> BatchResult:
        import psycopg

        started = time.monotonic()
        with psycopg.connect(**self.conn_args) as conn:  # one transaction: commits on success
            _fast_json(conn)
            cur = conn.cursor()
            self.ensure_tables(cur)
            cur.execute(f"SELECT 1 FROM {self.ledger_table} WHERE pipeline = %s AND epoch = %s AND batch_id = %s",
                        (self.pipeline_id, self.epoch, batch_id))
            if cur.fetchone() is not None:
                log.info("Stream %s: batch %d is in the ledger already (a replay): nothing to do",
                         self.pipeline_id, batch_id)
                return BatchResult(batch_id, 0, 0, None, 0, 0, 0, 0, 0, replayed=True)
            cur.execute(f"SELECT watermark_after_us FROM {self.ledger_table} WHERE pipeline = %s AND epoch = %s "
                        "ORDER BY batch_id DESC LIMIT 1", (self.pipeline_id, self.epoch))
            row = cur.fetchone()
            watermark_before = int(row[0]) if row else 0
            result = self._process(df, batch_id, watermark_before, cur)
            result.duration_s = time.monotonic() - started
            cur.execute(
                f"INSERT INTO {self.ledger_table} (pipeline, epoch, batch_id, watermark_before_us, watermark_after_us, "
                "max_event_time_us, input_rows, input_pairs, aggregated_pairs, late_pairs, invalid_rows, output_rows, "
                "offsets, dead_letter_location, duration_s) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s)",
                (self.pipeline_id, self.epoch, batch_id, result.watermark_before_us, result.watermark_after_us,
                 result.max_event_time_us, result.input_rows, result.input_pairs, result.aggregated_pairs,
                 result.late_pairs, result.invalid_rows, result.output_rows, json.dumps(result.offsets),
                 self.dead_letter.description if self.dead_letter is not None else None, result.duration_s))
        self._tables_ensured = True
        lag = (result.max_event_time_us - result.watermark_after_us) / 1e6 if result.max_event_time_us is not None else 0
        log.info("Stream %s batch %d: %d rows in (%d window pairs), %d late, %d aggregated, %d windows written, "
                 "watermark %s -> %s (lag %.0f s), %.1f s", self.pipeline_id, batch_id, result.input_rows,
                 result.input_pairs, result.late_pairs, result.aggregated_pairs, result.output_rows,
                 _iso(result.watermark_before_us), _iso(result.watermark_after_us), lag, result.duration_s)
        return result

    def _process(self, df: Any, batch_id: int, watermark_before: int, cur: Any) -> BatchResult:
        self._batch_id = batch_id
        if self.window.type == "session" or not _groupable(df.schema):
            df = df.persist()
            try:
                return self._process_cached(df, batch_id, watermark_before, cur)
            finally:
                df.unpersist()
        return self._process_one_pass(df, batch_id, watermark_before, cur)

    def _pairs(self, df: Any) -> tuple[Any, Any]:
        """Each row with its windows, ``_ws``/``_we`` in microseconds, as Spark's ``window`` assigns them; a
        row without an event time keeps one pair with NULL bounds (Spark's ``window`` would drop it). Also the
        condition that marks one pair per row (a sliding window gives a row several)."""
        from pyspark.sql import functions as F

        t = F.unix_micros(F.col(self.event_time_column))
        if self.window.type == "session":  # judged by the row's own session [t, t + gap), as Spark does
            return (df.withColumn("_ws", t).withColumn("_we", F.col("_ws") + F.lit(self.window.gap_us)),
                    F.lit(True))
        d, s = F.lit(self.window.duration_us), F.lit(self.window.slide_us)
        if self.window.slide_us == self.window.duration_us:  # tumbling: [t - t mod d, + d)
            return df.withColumn("_ws", t - F.pmod(t, d)).withColumn("_we", F.col("_ws") + d), F.lit(True)
        # sliding: every start s_k = k * slide with s_k <= t < s_k + duration, the earliest first
        first = (t - d) - F.pmod(t - d, s) + s
        pairs = (df.withColumn("_ws", F.explode_outer(F.sequence(first, t - F.pmod(t, s), s)))
                 .withColumn("_we", F.col("_ws") + d))
        return pairs, F.col("_ws").isNull() | (F.col("_ws") == first)

    def _process_one_pass(self, df: Any, batch_id: int, watermark_before: int, cur: Any) -> BatchResult:
        """Tumbling and sliding windows, in one read of the batch: one aggregation (two grouping sets) gives
        the on-time partial aggregates per (group, window), each late or time-less (row, window) pair as a
        group of its own (its row in one struct key), and per Kafka partition the rows, pairs, late and
        time-less pairs, offsets and newest event time. Only that small result is cached; the dead letters
        are published from it, so the source is read once (benchmarks/bench_streaming.py)."""
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        columns = list(df.columns)
        pairs, first_pair = self._pairs(df)
        no_time = F.col("_ws").isNull()  # no event time: the message did not parse with the schema
        late = ~no_time & (F.col("_we") <= F.lit(watermark_before))  # Spark's rule, with W(N-1)
        kind = F.when(no_time, 2).when(late, 1).otherwise(0)
        # a late or time-less pair carries its row in one struct key (NULL for on-time pairs: one NULL to hash;
        # a struct was ~5 % faster than one key per column, benchmarks/bench_streaming.py's batch shape)
        pairs = (pairs.withColumn("_etl_kind", kind).withColumn("_etl_first", first_pair)
                 .withColumn("_etl_row", F.when(F.col("_etl_kind") != 0, F.struct(*[F.col(c) for c in columns]))))
        kafka = PARTITION in columns
        by_window = [*self.group_by, "_ws", "_we", "_etl_kind", "_etl_row"]
        by_partition = [TOPIC, PARTITION] if kafka else []
        t = F.unix_micros(F.col(self.event_time_column))
        exprs = [*self._partial_exprs(),
                 F.count(F.when(F.col("_etl_first"), 1)).alias("_rows"),
                 F.count(F.when(F.col("_etl_kind") == 1, 1)).alias("_late"),
                 F.count(F.when(F.col("_etl_kind") == 2, 1)).alias("_invalid"),
                 F.max(t).alias("_max_t"),
                 *([F.min(OFFSET).alias("_lo"), F.max(OFFSET).alias("_hi")] if kafka else [])]
        agg = pairs.groupingSets([by_window, by_partition], *by_window, *by_partition).agg(*exprs)
        agg = agg.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            kept = agg.where(F.col("_etl_kind").isNull() | (F.col("_etl_kind") == 0)).collect()
            stats = [r for r in kept if r["_etl_kind"] is None]  # per Kafka partition (or one grand total)
            partials = [r for r in kept if r["_etl_kind"] is not None]
            input_rows = sum(int(r["_rows"]) for r in stats)
            input_pairs = sum(int(r["_pairs"]) for r in stats)
            late_pairs = sum(int(r["_late"]) for r in stats)
            invalid = sum(int(r["_invalid"]) for r in stats)
            max_t = max((int(r["_max_t"]) for r in stats if r["_max_t"] is not None), default=None)
            offsets = {f"{r[TOPIC]}:{r[PARTITION]}": {"from": int(r["_lo"]), "to": int(r["_hi"])}
                       for r in stats if r["_pairs"]} if kafka else {}
            # The dead letters are published from the cached result (see _dead_letter) in a thread while this one
            # merges the partials into PostgreSQL; both end before the batch commits (the DLQ is at-least-once).
            with ThreadPoolExecutor(1, thread_name_prefix="etl-stream-dlq") as pool:
                publishing = [pool.submit(self._dead_letter, self._dead_letter_rows(agg, k), batch_id,
                                          watermark_before, late=k == 1, expected=n)
                              for k, n in ((1, late_pairs), (2, invalid)) if n and self.dead_letter is not None]
                try:
                    result = self._finish(cur, df, batch_id, watermark_before, partials, max_t, input_rows,
                                          input_pairs, late_pairs, invalid, offsets)
                except BaseException:
                    for failed in filter(None, (f.exception() for f in publishing)):
                        log.error("Stream %s batch %d: publishing dead letters failed too: %s", self.pipeline_id,
                                  batch_id, failed)
                    raise
                for f in publishing:
                    f.result()  # its error, if any, fails the batch: nothing commits
            return result
        finally:
            agg.unpersist()

    @staticmethod
    def _dead_letter_rows(agg: Any, kind: int) -> Any:
        """The late (``kind`` 1) or time-less (2) pairs of the one-pass aggregation, as rows again (a group
        holds identical pairs: ``_pairs`` copies)."""
        from pyspark.sql import functions as F

        return (agg.where(F.col("_etl_kind") == kind)
                .withColumn("_etl_copy", F.explode(F.array_repeat(F.lit(0), F.col("_pairs").cast("int"))))
                .select("_etl_row.*", "_ws", "_we"))

    def _process_cached(self, df: Any, batch_id: int, watermark_before: int, cur: Any) -> BatchResult:
        """Session windows (and sources with columns Spark cannot group by, such as maps): the batch is cached
        and scanned for the counts, the dead letters and the partial aggregates."""
        from pyspark.sql import functions as F

        et = F.col(self.event_time_column)
        # rows, newest event time and (Kafka) the offsets read, in one Spark job
        kafka = PARTITION in df.columns
        stats = (df.groupBy(TOPIC, PARTITION) if kafka else df.groupBy()).agg(
            F.count(F.lit(1)).alias("n"), F.max(F.unix_micros(et)).alias("max_t"),
            *([F.min(OFFSET).alias("lo"), F.max(OFFSET).alias("hi")] if kafka else [])).collect()
        input_rows = sum(int(r["n"]) for r in stats)
        max_t = max((r["max_t"] for r in stats if r["max_t"] is not None), default=None)
        offsets = {f"{r[TOPIC]}:{r[PARTITION]}": {"from": int(r["lo"]), "to": int(r["hi"])} for r in stats} if kafka else {}
        pairs, _first = self._pairs(df)
        invalid_cond = F.col("_we").isNull()  # no event time: the message did not parse with the schema
        late_cond = ~invalid_cond & (F.col("_we") <= F.lit(watermark_before))  # Spark's rule, with W(N-1)
        counts = pairs.agg(F.count(F.lit(1)).alias("pairs"), F.count(F.when(late_cond, 1)).alias("late"),
                           F.count(F.when(invalid_cond, 1)).alias("invalid")).first()
        input_pairs, late_pairs, invalid = int(counts["pairs"]), int(counts["late"]), int(counts["invalid"])
        if late_pairs and self.dead_letter is not None:
            self._dead_letter(pairs.where(late_cond), batch_id, watermark_before, late=True, expected=late_pairs)
        if invalid and self.dead_letter is not None:
            self._dead_letter(pairs.where(invalid_cond), batch_id, watermark_before, late=False, expected=invalid)
        partials = self._partials(pairs.where(~late_cond & ~invalid_cond))
        return self._finish(cur, df, batch_id, watermark_before, partials, int(max_t) if max_t is not None else None,
                            input_rows, input_pairs, late_pairs, invalid, offsets)

    def _finish(self, cur: Any, df: Any, batch_id: int, watermark_before: int, partials: Sequence[Any],
                max_t: int | None, input_rows: int, input_pairs: int, late_pairs: int, invalid: int,
                offsets: dict[str, dict[str, int]]) -> BatchResult:
        """Check the accounting, move the watermark, merge the partials into the state and write windows."""
        aggregated_pairs = sum(int(p["_pairs"]) for p in partials)
        if input_pairs != aggregated_pairs + late_pairs + invalid:
            raise RowAccountingError(f"stream {self.pipeline_id} batch {batch_id}: {input_pairs} (row, window) pairs "
                                     f"in, {aggregated_pairs} aggregated + {late_pairs} late + {invalid} without an "
                                     "event time")
        watermark_after = advance_watermark(watermark_before, max_t, self.watermark_us)
        output_rows = self._merge_and_write(cur, partials, watermark_after, df)
        return BatchResult(batch_id, watermark_before, watermark_after, max_t, input_rows, input_pairs,
                           aggregated_pairs, late_pairs, output_rows, invalid, offsets)

    def _dead_letter(self, rows: Any, batch_id: int, watermark_us: int, *, late: bool, expected: int) -> None:
        """Publish late (row, window) pairs (stage ``late_data``) or rows without an event time (stage ``parse``)."""
        from pyspark.sql import functions as F

        assert self.dead_letter is not None
        wm = _iso(watermark_us)
        if late:
            message = F.format_string(
                "late: its window [%s, %s) ended at or before the watermark " + wm + " (the event is %s s behind it)",
                F.timestamp_micros(F.col("_ws")).cast("string"), F.timestamp_micros(F.col("_we")).cast("string"),
                ((F.lit(watermark_us) - F.unix_micros(F.col(self.event_time_column))) / F.lit(1e6)).cast("string"))
            window = F.concat_ws("/", F.timestamp_micros(F.col("_ws")).cast("string"),
                                 F.timestamp_micros(F.col("_we")).cast("string"))
        else:
            message = F.lit(f"no event time: the message has no {self.event_time_column!r} or does not parse with "
                            "source.schema")
            window = F.lit(None).cast("string")
        frame = (rows.withColumn(ERROR_COLUMN, message).withColumn("_etl_window", window)
                 .withColumn("_etl_watermark", F.lit(wm)).drop("_ws", "_we"))
        locations = tuple(c for c in self.location_columns if c in rows.columns)
        writer = partition_publisher(
            self.dead_letter, spool_dir=self.spool_dir, batch_prefix=f"{self.epoch[:8]}-b{batch_id}",
            pipeline_id=self.pipeline_id, run_context=self.run_context, stage="late_data" if late else "parse",
            location_columns=locations, context_columns=("_etl_window", "_etl_watermark"),
            run_independent_ids=True,
        )
        if expected <= FEW_DEAD_LETTERS:
            # From this process (the batch function's), as Arrow: no Spark task and no Python worker, and one
            # producer kept from batch to batch (a new idempotent producer costs ~0.5 s before its first send)
            statuses = [s for b in writer(iter(frame.coalesce(1).toArrow().to_batches())) for s in b.to_pylist()]
        else:  # many: from the executors, one publisher per partition
            statuses = frame.mapInArrow(writer, STATUS_SCHEMA).collect()
        result = result_from_statuses(statuses)
        if result.delivered + result.spooled != expected:
            raise RowAccountingError(f"stream {self.pipeline_id} batch {batch_id}: {expected} "
                                     f"{'late' if late else 'time-less'} pairs to dead-letter, {result.delivered} "
                                     f"delivered + {result.spooled} spooled")
        result.raise_if_spooled(self.dead_letter.description, self.replay_target)

    def _partial_exprs(self) -> list[Any]:
        """``_pairs`` and every partial aggregate (:func:`partial_parts`), as Spark aggregate expressions."""
        from pyspark.sql import functions as F

        exprs = [F.count(F.lit(1)).alias("_pairs")]
        for agg in self.aggregates:
            col = F.col(agg.column) if agg.column != "*" else F.lit(1)
            for part in partial_parts(agg):
                name = f"{agg.name}__{part}"
                exprs.append({"n": F.count(col), "s": F.sum(col), "min": F.min(col), "max": F.max(col),
                              "hll": F.hll_sketch_agg(col) if agg.column != "*" else F.lit(None)}[part].alias(name))
        return exprs

    def _partials(self, on_time: Any) -> list[Any]:
        from pyspark.sql import functions as F

        exprs = self._partial_exprs()
        if self.window.type == "session":  # the batch's own sessions; merged with the stored ones in _merge
            session = F.session_window(F.col(self.event_time_column), f"{self.window.gap_us} microseconds")
            return (on_time.groupBy(*self.group_by, session.alias("_s")).agg(*exprs)
                    .withColumn("_ws", F.unix_micros(F.col("_s.start")))
                    .withColumn("_we", F.unix_micros(F.col("_s.end"))).drop("_s").collect())
        return on_time.groupBy(*self.group_by, "_ws", "_we").agg(*exprs).collect()

    def _merge_and_write(self, cur: Any, partials: Sequence[Any], watermark_after: int, df: Any) -> int:
        """Merge this batch's partial aggregates into the window state; write what the output mode says."""
        batch: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
        groups: dict[str, tuple[Any, ...]] = {}
        names = [f"{a.name}__{part}" for a in self.aggregates for part in partial_parts(a)]
        keys: dict[tuple[Any, ...], str] = {}  # a group's key encoded once, not once per window
        for row in partials:
            p = row.asDict()  # a Row's lookup by name is a list search: once per row, not per value
            values = tuple(p[c] for c in self.group_by)
            key = keys.get(values) if _hashable(values) else None
            if key is None:
                key = json.dumps([_encode(v) for v in values], sort_keys=True)
                if _hashable(values):
                    keys[values] = key
            groups[key] = values
            batch[key].append((int(p["_ws"]), int(p["_we"]), {n: p[n] for n in names}))
        merged: dict[tuple[str, int, int], dict[str, Any]] = {}
        superseded: list[tuple[str, int, int]] = []
        if batch:
            merged, superseded = self._merge(cur, batch, df)
        if superseded:
            cur.execute(f"DELETE FROM {self.state_table} WHERE pipeline = %s AND epoch = %s AND (group_key, "
                        "window_start_us, window_end_us) IN (SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[]))",
                        (self.pipeline_id, self.epoch, *map(list, zip(*superseded, strict=True))))
        if self.output_mode == "update":
            self._store(cur, merged)
            if superseded:  # sessions that merged into a longer one: their earlier rows are no longer windows
                self._delete_windows(cur, [(k, groups.get(k[0]) or _group_of(k[0])) for k in superseded])
            written = self._write(cur, [(k, v, groups[k[0]]) for k, v in merged.items()], df, upsert=True)
            cur.execute(f"DELETE FROM {self.state_table} WHERE pipeline = %s AND epoch = %s AND window_end_us <= %s",
                        (self.pipeline_id, self.epoch, watermark_after))
            return written
        # append: a window the watermark has passed goes to the sink now; one that opens and closes in this batch
        # never enters the state
        self._store(cur, {k: v for k, v in merged.items() if k[2] > watermark_after})
        cur.execute(f"DELETE FROM {self.state_table} WHERE pipeline = %s AND epoch = %s AND window_end_us <= %s "
                    "RETURNING group_key, window_start_us, window_end_us, partials",
                    (self.pipeline_id, self.epoch, watermark_after))
        final = [(k, v, groups[k[0]]) for k, v in merged.items() if k[2] <= watermark_after]
        final += [((r[0], int(r[1]), int(r[2])), {k: _decode(v) for k, v in r[3].items()}, _group_of(r[0]))
                  for r in cur.fetchall() if (r[0], int(r[1]), int(r[2])) not in merged]  # stored, not in this batch
        return self._write(cur, final, df, upsert=False)

    def _store(self, cur: Any, windows: Mapping[tuple[str, int, int], Mapping[str, Any]]) -> None:
        """Upsert windows into the state, in one statement."""
        if not windows:
            return
        keys = list(windows)
        cur.execute(
            f"INSERT INTO {self.state_table} (pipeline, epoch, group_key, window_start_us, window_end_us, partials) "
            "SELECT %s, %s, g, s, e, p::jsonb FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[]) AS u(g, s, e, p) "
            "ON CONFLICT (pipeline, epoch, group_key, window_start_us, window_end_us) DO UPDATE SET partials = "
            "excluded.partials",
            (self.pipeline_id, self.epoch, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
             [_dumps({n: _encode(v) for n, v in windows[k].items()}) for k in keys]))

    def _merge(self, cur: Any, batch: Mapping[str, list[tuple[int, int, dict[str, Any]]]], df: Any,
               ) -> tuple[dict[tuple[str, int, int], dict[str, Any]], list[tuple[str, int, int]]]:
        """Combine the batch's partials with the stored state: the same window (tumbling, sliding), or every
        session they overlap or touch (session windows). Returns the merged windows and the stored windows a
        longer session replaced."""
        session = self.window.type == "session"
        if session:  # every open session of the groups this batch touched
            cur.execute(f"SELECT group_key, window_start_us, window_end_us, partials FROM {self.state_table} "
                        "WHERE pipeline = %s AND epoch = %s AND group_key = ANY(%s) FOR UPDATE",
                        (self.pipeline_id, self.epoch, list(batch)))
        else:
            keys = [(g, s, e) for g, items in batch.items() for s, e, _p in items]
            cur.execute(
                f"SELECT group_key, window_start_us, window_end_us, partials FROM {self.state_table} WHERE pipeline = %s "
                "AND epoch = %s AND (group_key, window_start_us, window_end_us) IN "
                "(SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[])) FOR UPDATE",
                (self.pipeline_id, self.epoch, *map(list, zip(*keys, strict=True))))
        stored: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
        for r in cur.fetchall():
            stored[r[0]].append((int(r[1]), int(r[2]), {k: _decode(v) for k, v in r[3].items()}))
        merged: dict[tuple[str, int, int], dict[str, Any]] = {}
        superseded: list[tuple[str, int, int]] = []
        sketches: list[tuple[int, str, bytes]] = []
        order: list[tuple[str, int, int]] = []
        combiners = {f"{a.name}__{part}": {"n": _add, "s": _add, "min": _least, "max": _greatest, "hll": None}[part]
                     for a in self.aggregates for part in partial_parts(a)}
        has_sketches = any(c is None for c in combiners.values())
        for group, items in batch.items():
            # (start, end, partials, stored?) for the batch's windows and the stored ones they meet
            fresh = [(st, en, parts, False) for st, en, parts in items]
            old = [(st, en, parts, True) for st, en, parts in stored.get(group, [])]
            if session:
                everything = [*old, *fresh]
                clusters = [[everything[i] for i in c] for c in session_clusters([(m[0], m[1]) for m in everything])]
                clusters = [c for c in clusters if not all(m[3] for m in c)]  # untouched sessions stay as they are
            else:
                by_key: dict[tuple[int, int], list[tuple[int, int, dict[str, Any], bool]]] = defaultdict(list)
                for m in [*fresh, *old]:
                    by_key[(m[0], m[1])].append(m)
                clusters = list(by_key.values())
            for cluster in clusters:
                start, end = min(m[0] for m in cluster), max(m[1] for m in cluster)
                key = (group, start, end)
                superseded += [(group, m[0], m[1]) for m in cluster if m[3] and (m[0], m[1]) != (start, end)]
                if len(cluster) == 1 and not has_sketches:  # a window only this batch has: nothing to combine
                    merged[key] = dict(cluster[0][2])
                    order.append(key)
                    continue
                combined: dict[str, Any] = {}
                for _s, _e, parts, _stored in cluster:
                    for name, value in parts.items():
                        combine = combiners[name]
                        if combine is not None:
                            combined[name] = combine(combined.get(name), value)
                        elif value is not None:  # an HLL sketch: unioned in Spark below
                            sketches.append((len(order), name, bytes(value)))
                            combined.setdefault(name, None)
                merged[key] = combined
                order.append(key)
        if sketches:
            for i, name, union in self._union_sketches(df, sketches):
                merged[order[i]][name] = union
        return merged, superseded

    def _union_sketches(self, df: Any, sketches: list[tuple[int, str, bytes]]) -> Iterator[tuple[int, str, bytes]]:
        from pyspark.sql import functions as F

        frame = df.sparkSession.createDataFrame(sketches, "i INT, name STRING, s BINARY")
        for r in frame.groupBy("i", "name").agg(F.hll_union_agg("s").alias("u")).collect():
            yield int(r["i"]), r["name"], bytes(r["u"])

    def _delete_windows(self, cur: Any, windows: Sequence[tuple[tuple[str, int, int], tuple[Any, ...]]]) -> None:
        self.sink.delete(cur, [*self.group_by, WINDOW_START, WINDOW_END],
                         [(*group, _ts(k[1]), _ts(k[2])) for k, group in windows])

    def _write(self, cur: Any, windows: Sequence[tuple[tuple[str, int, int], Mapping[str, Any], tuple[Any, ...]]],
               df: Any, *, upsert: bool) -> int:
        if not windows:
            return 0
        estimates = self._estimates(df, [parts for _k, parts, _g in windows])
        rows = []
        for i, ((_gk, start, end), parts, group) in enumerate(windows):
            values: list[Any] = [*group, _ts(start), _ts(end)]
            for agg in self.aggregates:
                if agg.func == "count":
                    values.append(parts.get(f"{agg.name}__n") or 0)
                elif agg.func == "sum":
                    values.append(parts.get(f"{agg.name}__s"))
                elif agg.func == "avg":
                    s, n = parts.get(f"{agg.name}__s"), parts.get(f"{agg.name}__n")
                    values.append(None if not n or s is None else (Decimal(s) / n if isinstance(s, Decimal | int)
                                                                   else s / n))
                elif agg.func in ("min", "max"):
                    values.append(parts.get(f"{agg.name}__{agg.func}"))
                else:
                    values.append(estimates.get((i, agg.name), 0))
            rows.append(values)
        columns = [*self.group_by, WINDOW_START, WINDOW_END, *(a.name for a in self.aggregates)]
        self.sink.write(cur, df.sparkSession, columns, len(self.group_by) + 2, rows, upsert=upsert,
                        batch_tag=f"{self.epoch}-{self._batch_id:010d}")
        return len(rows)

    def _estimates(self, df: Any, windows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], int]:
        from pyspark.sql import functions as F

        wanted = [(i, a.name, bytes(sketch)) for i, parts in enumerate(windows)
                  for a in self.aggregates if a.func == "approx_count_distinct"
                  if (sketch := parts.get(f"{a.name}__hll")) is not None]
        if not wanted:
            return {}
        frame = df.sparkSession.createDataFrame(wanted, "i INT, name STRING, s BINARY")
        return {(int(r["i"]), r["name"]): int(r["e"])
                for r in frame.select("i", "name", F.hll_sketch_estimate("s").alias("e")).collect()}


def _groupable(schema: Any) -> bool:
    """Whether Spark can group by every column of ``schema`` (not by maps or variants, at any depth)."""
    from pyspark.sql.types import ArrayType, MapType, StructType

    def ok(t: Any) -> bool:
        if isinstance(t, MapType) or type(t).__name__ == "VariantType":
            return False
        if isinstance(t, ArrayType):
            return ok(t.elementType)
        if isinstance(t, StructType):
            return all(ok(f.dataType) for f in t.fields)
        return True

    return ok(schema)


def _fast_json(conn: Any) -> None:
    """Parse the state's ``jsonb`` with orjson on this connection (the standard library's parser was the
    merge's largest cost, benchmarks/bench_streaming.py); the same documents either way."""
    from psycopg.types.json import set_json_loads

    if _orjson is not None:
        set_json_loads(_orjson.loads, conn)


def _dumps(doc: Any) -> str:
    """A state document (a ``jsonb`` value: its formatting does not matter)."""
    return _orjson.dumps(doc).decode() if _orjson is not None else json.dumps(doc)


def _hashable(values: tuple[Any, ...]) -> bool:
    try:
        hash(values)
    except TypeError:  # a list or map among the group-by values
        return False
    return True


def _group_of(group_key: str) -> tuple[Any, ...]:
    return tuple(_decode(v) for v in json.loads(group_key))


def _ts(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _iso(us: int) -> str:
    return _ts(us).isoformat()
