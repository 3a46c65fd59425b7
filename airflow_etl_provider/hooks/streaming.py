"""Running one stream safely inside one Airflow task: the query's life, its checkpoint's identity, one run at
a time, and the result.

* **One run per stream at a time**: a PostgreSQL advisory lock held for the whole run; a second task for the
  same stream fails fast naming the holder (its ``application_name`` says dag, task and run).
* **The checkpoint's identity** (``epoch``): Spark numbers batches from 0 in a new checkpoint, so the ledger
  keys batches by an epoch tied to the checkpoint's query id (``<checkpoint>/metadata``). A deleted checkpoint
  gets a new epoch; changing the window, watermark, grouping or aggregations of an existing one is refused.
* **The query's life**: ``available_now`` processes what arrived since the last run and stops (windows the
  watermark closes are written in the same run); ``processing_time`` runs until ``max_runtime``, then stops after
  the batch in progress. No query or session outlives the task (:meth:`StreamRunner.stop` on kill).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import quote_table
from airflow_etl_provider.core.streaming import StreamingConfig
from airflow_etl_provider.executor.stream_sinks import (
    KafkaWindowSink,
    ParquetWindowSink,
    PostgresWindowSink,
    WindowSink,
)
from airflow_etl_provider.executor.streaming import LOCATION_COLUMNS, StreamBatchProcessor

#: Where a files source says each row came from (the envelope's ``original_location``).
FILE_COLUMN = "_etl_file"

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: The first key of the streams' advisory locks (the second is the hash of the stream's name).
LOCK_CLASS = 20261202

EPOCHS_DDL = """
CREATE TABLE IF NOT EXISTS {epochs} (
    pipeline text NOT NULL,
    checkpoint text NOT NULL,
    epoch text NOT NULL,
    query_id text,
    config_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, checkpoint)
)"""

_PG_TYPES = {"string": "text", "int": "integer", "bigint": "bigint", "smallint": "smallint", "double": "double precision",
             "float": "real", "boolean": "boolean", "date": "date", "timestamp": "timestamptz",
             "timestamp_ntz": "timestamp"}


def pg_type(spark_type: str) -> str:
    """The PostgreSQL column type for a Spark simple type string (``decimal(12,2)`` -> ``numeric(12,2)``)."""
    if spark_type.startswith("decimal"):
        return "numeric" + spark_type[len("decimal"):]
    return _PG_TYPES.get(spark_type, "text")


def build_window_sink(sink: Mapping[str, Any]) -> WindowSink:
    """The sink's writer, connections resolved here on the driver (the Kafka producer settings)."""
    if sink["type"] == "postgres":
        return PostgresWindowSink(table=quote_table(sink["table"], "sink.table"))
    if sink["type"] == "parquet":
        return ParquetWindowSink(path=sink["path"])
    from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

    config = KafkaBaseHook(kafka_config_id=sink.get("conn_id") or "kafka_default")._build_config()
    return KafkaWindowSink(topic=sink["topic"], producer_config={**config, **(sink.get("config") or {})})


def state_tables(sink: Mapping[str, Any], pipeline_id: str) -> tuple[str, str, str]:
    """The quoted state, ledger and epochs tables: next to a PostgreSQL sink's table, else in the schema
    ``sink.state_schema`` (default ``public``) of the ``sink.state_conn_id`` database."""
    if sink["type"] == "postgres":
        schema, _, name = sink["table"].rpartition(".")
    else:
        schema = sink.get("state_schema") or "public"
        name = "stream_" + "".join(ch if ch.isalnum() else "_" for ch in pipeline_id.lower())[:40]
    prefix = f"{schema}." if schema else ""
    return (quote_table(f"{prefix}{name[:54]}__etl_state", "sink.table"),
            quote_table(f"{prefix}etl_stream_ledger", "sink.table"),
            quote_table(f"{prefix}etl_stream_epochs", "sink.table"))


def config_hash(cfg: StreamingConfig) -> str:
    """What a checkpoint's state depends on: a change needs a new checkpoint."""
    doc = {"event_time": cfg.event_time_column, "watermark_us": cfg.watermark_us, "window": asdict(cfg.window),
           "group_by": list(cfg.group_by), "aggregates": [asdict(a) for a in cfg.aggregates]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class StreamRunner:
    """Runs one stream for one task.

    :param cfg: the validated config.
    :param source: the source config (kafka).
    :param sink: the sink config.
    :param window_sink: the sink's writer (:func:`build_window_sink`).
    :param checkpoint_location: the checkpoint.
    :param pipeline_id: the stream's name.
    :param conn_args: psycopg parameters of the sink's database (resolved on the driver).
    :param kafka_options: ``kafka.*`` options of the source (resolved on the driver).
    :param dead_letter_sink: where late rows go, or ``None`` (``late_data="drop"``).
    :param spool_dir: the dead-letter spool.
    :param run_context: dag/task/run/try.
    :param holder: this task's name in ``pg_stat_activity`` while it holds the stream's lock.
    :param dead_letter_replay_target: the ``--to ...`` part of the replay command a spooled dead letter names.
    """

    def __init__(self, cfg: StreamingConfig, *, source: Mapping[str, Any], sink: Mapping[str, Any],
                 window_sink: WindowSink, checkpoint_location: str, pipeline_id: str, conn_args: dict[str, Any],
                 kafka_options: dict[str, str], dead_letter_sink: Any, spool_dir: str, run_context: Any,
                 holder: str, dead_letter_replay_target: str = "") -> None:
        self.cfg, self.source, self.sink, self.window_sink = cfg, source, sink, window_sink
        self.checkpoint = checkpoint_location
        self.pipeline_id = pipeline_id
        self.conn_args = conn_args
        self.kafka_options = kafka_options
        self.dead_letter_sink = dead_letter_sink
        self.dead_letter_replay_target = dead_letter_replay_target
        self.spool_dir = spool_dir
        self.run_context = run_context
        self.holder = holder[:63]
        self.state_table, self.ledger_table, self.epochs_table = state_tables(sink, pipeline_id)
        self.query: Any = None
        self._lock_conn: Any = None

    # ------------------------------------------------------------------------------- one at a time
    def lock(self) -> None:
        """Take the stream's advisory lock, or fail naming the task that holds it."""
        import psycopg

        conn = psycopg.connect(**{**self.conn_args, "application_name": self.holder}, autocommit=True)
        key = f"airflow-etl stream {self.pipeline_id}"
        if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, key)).fetchone()[0]:
            holders = conn.execute(
                "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
                "USING (pid) WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = %s "
                "AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295) AND a.pid <> pg_backend_pid()",
                (LOCK_CLASS, key)).fetchall()
            conn.close()
            who = "; ".join(f"{h[0] or 'unknown'} (since {h[2]:%Y-%m-%d %H:%M:%S %Z})" for h in holders) or "another session"
            raise RuntimeError(f"stream {self.pipeline_id!r} is already running: {who}. One run per stream at a "
                               "time: this task does not start a second query on the same checkpoint.")
        self._lock_conn = conn

    def unlock(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()  # the session ends: the advisory lock is released
            self._lock_conn = None

    # ------------------------------------------------------------------------------------ epoch
    def _checkpoint_query_id(self, spark: SparkSession) -> str | None:
        from urllib.parse import urlparse

        from pyspark.errors import AnalysisException

        metadata = f"{self.checkpoint.rstrip('/')}/metadata"
        url = urlparse(metadata)
        if url.scheme in ("", "file") and not type(spark).__module__.startswith("pyspark.sql.connect"):
            # a classic session's driver is this process and writes the checkpoint's metadata itself: read the
            # file directly rather than with a Spark job (~0.3 s)
            local = Path(url.path if url.scheme else metadata)
            if not local.exists():
                return None
            first = local.read_text().splitlines()[:1]
            return str(json.loads(first[0])["id"]) if first else None
        try:
            lines = spark.read.text(metadata).collect()
        except AnalysisException as err:
            if err.getCondition() == "PATH_NOT_FOUND":  # a new checkpoint: Spark writes its metadata on start
                return None
            raise
        return str(json.loads(lines[0][0])["id"]) if lines else None

    def epoch(self, spark: SparkSession) -> tuple[str, str | None]:
        """The epoch of the checkpoint (and its query id, ``None`` while Spark has not created it)."""
        import psycopg

        query_id = self._checkpoint_query_id(spark)
        digest = config_hash(self.cfg)
        with psycopg.connect(**self.conn_args) as conn:
            conn.execute(EPOCHS_DDL.format(epochs=self.epochs_table))
            row = conn.execute(f"SELECT epoch, query_id, config_hash FROM {self.epochs_table} WHERE pipeline = %s "
                               "AND checkpoint = %s FOR UPDATE", (self.pipeline_id, self.checkpoint)).fetchone()
            same = row is not None and (row[1] is None or row[1] == query_id)
            if same and row[2] != digest:
                raise ConfigError("window", "the window, watermark, grouping or aggregations differ from the ones "
                                  f"the checkpoint {self.checkpoint!r} was built with: its state would be wrong. "
                                  "Start a new checkpoint_location (or restore the old settings)")
            epoch = row[0] if same else uuid.uuid4().hex
            conn.execute(f"INSERT INTO {self.epochs_table} (pipeline, checkpoint, epoch, query_id, config_hash) "
                         "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pipeline, checkpoint) DO UPDATE SET "
                         "epoch = excluded.epoch, query_id = excluded.query_id, config_hash = excluded.config_hash",
                         (self.pipeline_id, self.checkpoint, epoch, query_id, digest))
        if not same and row is not None:
            log.warning("Stream %s: the checkpoint %s is new (query id %s, was %s): a new epoch %s starts",
                        self.pipeline_id, self.checkpoint, query_id, row[1], epoch)
        return epoch, query_id

    def _record_query_id(self, query_id: str) -> None:
        import psycopg

        with psycopg.connect(**self.conn_args) as conn:
            conn.execute(f"UPDATE {self.epochs_table} SET query_id = %s WHERE pipeline = %s AND checkpoint = %s",
                         (query_id, self.pipeline_id, self.checkpoint))

    # ------------------------------------------------------------------------------------ source
    def read(self, spark: SparkSession) -> DataFrame:
        from pyspark.sql import functions as F

        src = self.source
        if src["type"] == "files":
            files = spark.readStream.format(src["format"]).schema(src["schema"])
            for key, value in (src.get("options") or {}).items():
                files = files.option(key, str(value))
            return files.load(src["path"]).select("*", F.col("_metadata.file_path").alias(FILE_COLUMN))
        reader = spark.readStream.format("kafka").option("subscribe", src["topic"]).option(
            "startingOffsets", src.get("starting_offsets", "earliest"))
        for key, value in self.kafka_options.items():
            reader = reader.option(key, value)
        if src.get("max_offsets_per_trigger"):
            reader = reader.option("maxOffsetsPerTrigger", str(src["max_offsets_per_trigger"]))
        for key, value in (src.get("options") or {}).items():
            reader = reader.option(key, str(value))
        raw = reader.load()
        parsed = F.from_json(F.col("value").cast("string"), src["schema"]).alias("_v")
        return raw.select(parsed, F.col("topic").alias(LOCATION_COLUMNS[0]), F.col("partition").alias(LOCATION_COLUMNS[1]),
                          F.col("offset").alias(LOCATION_COLUMNS[2])).select("_v.*", *LOCATION_COLUMNS)

    # ------------------------------------------------------------------------------------ run
    def run(self, spark: SparkSession) -> dict[str, Any]:
        """Lock, run the query to its end (or ``max_runtime``), unlock; return the run's result."""
        self.lock()
        try:
            return self._run(spark)
        finally:
            self.stop()
            self.unlock()

    def _run(self, spark: SparkSession) -> dict[str, Any]:
        epoch, query_id = self.epoch(spark)
        stream = self.read(spark)
        types = {f.name: pg_type(f.dataType.simpleString()) for f in stream.schema.fields}
        processor = StreamBatchProcessor(
            pipeline_id=self.pipeline_id, epoch=epoch, conn_args=self.conn_args, sink=self.window_sink,
            state_table=self.state_table, ledger_table=self.ledger_table,
            event_time_column=self.cfg.event_time_column, watermark_us=self.cfg.watermark_us, window=self.cfg.window,
            group_by=self.cfg.group_by, aggregates=self.cfg.aggregates, output_mode=self.cfg.output_mode,
            dead_letter=self.dead_letter_sink, spool_dir=self.spool_dir, run_context=self.run_context,
            column_types=types, location_columns=(FILE_COLUMN,) if self.source["type"] == "files" else LOCATION_COLUMNS,
            replay_target=self.dead_letter_replay_target,
        )
        before = self._last_batch(epoch)
        writer = (stream.writeStream.queryName(f"etl_{self.pipeline_id}"[:60]).foreachBatch(processor)
                  .option("checkpointLocation", self.checkpoint))
        if self.cfg.trigger == "available_now":
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{self.cfg.processing_time_us // 1000} milliseconds")
        started = time.monotonic()
        self.query = writer.start()
        if query_id is None:
            self._record_query_id(str(self.query.id))
        log.info("Stream %s: query %s started (epoch %s, checkpoint %s, trigger %s)", self.pipeline_id,
                 self.query.id, epoch, self.checkpoint, self.cfg.trigger)
        if self.cfg.trigger == "available_now":
            self.query.awaitTermination()
        else:
            assert self.cfg.max_runtime_us is not None
            if not self.query.awaitTermination(self.cfg.max_runtime_us / 1_000_000):
                self._stop_after_batch_in_progress()
        result = self._result(epoch, before, time.monotonic() - started)
        # Spark runs no stateful operator here, so it drops nothing behind the watermark: said, not assumed
        result["spark_rows_dropped_by_watermark"] = sum(
            int(op["numRowsDroppedByWatermark"]) for progress in self.query.recentProgress
            for op in progress["stateOperators"])
        return result

    def _stop_after_batch_in_progress(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.query.isActive and self.query.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.2)
        log.info("Stream %s: max_runtime reached; stopping the query between batches", self.pipeline_id)
        self.query.stop()
        self.query.awaitTermination()

    def stop(self) -> None:
        """Stop the query if it still runs (on kill, on error)."""
        if self.query is not None and self.query.isActive:
            log.warning("Stream %s: stopping query %s", self.pipeline_id, self.query.id)
            self.query.stop()

    def _last_batch(self, epoch: str) -> int:
        import psycopg

        from airflow_etl_provider.executor.streaming import LEDGER_DDL

        with psycopg.connect(**self.conn_args) as conn:
            conn.execute(LEDGER_DDL.format(ledger=self.ledger_table))
            row = conn.execute(f"SELECT max(batch_id) FROM {self.ledger_table} WHERE pipeline = %s AND epoch = %s",
                               (self.pipeline_id, epoch)).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def _result(self, epoch: str, before: int, elapsed_s: float) -> dict[str, Any]:
        import psycopg

        with psycopg.connect(**self.conn_args) as conn:
            first = conn.execute(f"SELECT watermark_after_us FROM {self.ledger_table} WHERE pipeline = %s AND "
                                 "epoch = %s AND batch_id = %s", (self.pipeline_id, epoch, before)).fetchone()
            rows = conn.execute(
                f"SELECT batch_id, watermark_before_us, watermark_after_us, max_event_time_us, input_rows, input_pairs, "
                "aggregated_pairs, late_pairs, output_rows, offsets, duration_s, dead_letter_location, invalid_rows "
                "FROM "
                f"{self.ledger_table} WHERE pipeline = %s AND epoch = %s AND batch_id > %s ORDER BY batch_id",
                (self.pipeline_id, epoch, before)).fetchall()
        from airflow_etl_provider.executor.streaming import _iso

        wm_before = int(first[0]) if first else (int(rows[0][1]) if rows else 0)
        wm_after = int(rows[-1][2]) if rows else wm_before
        max_event = max((int(r[3]) for r in rows if r[3] is not None), default=None)
        offsets: dict[str, dict[str, int]] = {}
        for r in rows:
            for part, span in (r[9] or {}).items():
                cur = offsets.setdefault(part, {"start": span["from"], "end": span["to"]})
                cur["start"], cur["end"] = min(cur["start"], span["from"]), max(cur["end"], span["to"])
        return {
            "pipeline_id": self.pipeline_id, "epoch": epoch, "checkpoint_location": self.checkpoint,
            "batches": len(rows), "input_rows": sum(int(r[4]) for r in rows),
            "window_pairs": sum(int(r[5]) for r in rows), "aggregated_rows": sum(int(r[6]) for r in rows),
            "late_rows": sum(int(r[7]) for r in rows), "output_rows": sum(int(r[8]) for r in rows),
            "invalid_rows": sum(int(r[12]) for r in rows),
            "watermark": {"before": _iso(wm_before), "after": _iso(wm_after)},
            "max_event_time": _iso(max_event) if max_event is not None else None,
            "watermark_lag_s": round((max_event - wm_after) / 1e6, 3) if max_event is not None else None,
            "offsets": offsets, "batch_durations_s": [round(float(r[10] or 0), 3) for r in rows],
            "dead_letter_location": rows[-1][11] if rows else None, "target": self.window_sink.description,
            "elapsed_s": round(elapsed_s, 3),
        }


def default_spool_dir() -> str:
    from airflow_etl_provider.executor.dead_letter import default_spool_dir as spool

    return os.path.abspath(spool())
