"""Where a stream's windows go: PostgreSQL, Parquet or Kafka (:class:`WindowSink`).

Executor-side code (see :mod:`airflow_etl_provider.executor`): used by the ``foreachBatch`` function, which on
Spark Connect runs on the server, without Airflow. Connection settings arrive resolved.

Guarantees, with the batch's state and ledger row committed in one PostgreSQL transaction after the write:

* :class:`PostgresWindowSink` writes inside that same transaction: **exactly once**.
* :class:`ParquetWindowSink` writes each batch's windows to a directory of their own
  (``<path>/batch=<epoch>-<batch id>``), overwritten if the batch is replayed: **exactly once** for readers of
  the committed batches (a batch that crashed before its commit leaves a directory the replay overwrites).
* :class:`KafkaWindowSink` produces with an idempotent producer and waits for every acknowledgement before the
  commit: **at-least-once with stable keys** (group and window), so a compacted topic or a consumer keyed on
  them sees each window's latest value once.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from airflow_etl_provider.core.identifiers import quote_identifier
from airflow_etl_provider.core.streaming import Aggregate

WINDOW_START, WINDOW_END = "window_start", "window_end"


class WindowSink(ABC):
    """Receives a batch's windows: rows of ``group columns, window_start, window_end, aggregates``."""

    #: sinks that can only add rows cannot take ``output_mode="update"``
    append_only = False

    @property
    @abstractmethod
    def description(self) -> str:
        """Where the windows go, safe to log."""

    def ensure(  # noqa: B027 - an optional hook
        self, cur: Any, group_by: Sequence[str], aggregates: Sequence[Aggregate], column_types: dict[str, str]
    ) -> None:
        """Create what the sink needs (inside the batch's transaction)."""

    @abstractmethod
    def write(self, cur: Any, spark: Any, columns: Sequence[str], key_len: int, rows: Sequence[Sequence[Any]], *,
              upsert: bool, batch_tag: str) -> None:
        """Write the windows; ``columns[:key_len]`` identify a window."""

    def delete(self, cur: Any, columns: Sequence[str], keys: Sequence[Sequence[Any]]) -> None:  # noqa: B027
        """Remove windows a longer session replaced (``update`` mode)."""


@dataclass
class PostgresWindowSink(WindowSink):
    """A table keyed by the group columns and the window, written in the batch's own transaction.

    :param table: the quoted ``"schema"."table"`` (created if missing).
    """

    table: str

    @property
    def description(self) -> str:
        return f"postgres table {self.table}"

    def ensure(self, cur: Any, group_by: Sequence[str], aggregates: Sequence[Aggregate],
               column_types: dict[str, str]) -> None:
        cols = [f"{quote_identifier(c, 'group_by')} {column_types.get(c, 'text')}" for c in group_by]
        cols += [f"{WINDOW_START} timestamptz NOT NULL", f"{WINDOW_END} timestamptz NOT NULL"]
        cols += [f"{quote_identifier(a.name, 'aggregations')} {output_type(a, column_types)}" for a in aggregates]
        key = ", ".join([*(quote_identifier(c) for c in group_by), WINDOW_START, WINDOW_END])
        cur.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(cols)}, PRIMARY KEY ({key}))")

    def write(self, cur: Any, spark: Any, columns: Sequence[str], key_len: int, rows: Sequence[Sequence[Any]], *,
              upsert: bool, batch_tag: str) -> None:
        cols = [quote_identifier(c) for c in columns]
        if not upsert:  # append: each window once, with COPY (a duplicate key would fail the batch, loudly)
            with cur.copy(f"COPY {self.table} ({', '.join(cols)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
            return
        conflict = (f" ON CONFLICT ({', '.join(cols[:key_len])}) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in cols[key_len:]))
        cur.executemany(f"INSERT INTO {self.table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
                        f"{conflict}", [list(r) for r in rows])

    def delete(self, cur: Any, columns: Sequence[str], keys: Sequence[Sequence[Any]]) -> None:
        cols = [quote_identifier(c) for c in columns]
        cur.executemany(f"DELETE FROM {self.table} WHERE ({', '.join(cols)}) = ({', '.join(['%s'] * len(cols))})",
                        [list(k) for k in keys])


@dataclass
class ParquetWindowSink(WindowSink):
    """Parquet files, one directory per batch: ``<path>/batch=<epoch>-<batch id>`` (read ``<path>`` as a dataset).

    :param path: the dataset's root (local, ``s3a://`` ...).
    """

    path: str
    append_only = True

    @property
    def description(self) -> str:
        return f"parquet {self.path}"

    def write(self, cur: Any, spark: Any, columns: Sequence[str], key_len: int, rows: Sequence[Sequence[Any]], *,
              upsert: bool, batch_tag: str) -> None:
        frame = spark.createDataFrame([list(r) for r in rows], schema=list(columns), samplingRatio=1.0)
        frame.coalesce(1).write.mode("overwrite").parquet(f"{self.path.rstrip('/')}/batch={batch_tag}")


@dataclass
class KafkaWindowSink(WindowSink):
    """A Kafka topic: one JSON message per window, keyed by the group columns and the window.

    :param topic: the topic.
    :param producer_config: librdkafka settings (resolved on the driver).
    :param timeout_s: how long to wait for every acknowledgement.
    """

    topic: str
    producer_config: dict[str, Any] = field(repr=False)
    timeout_s: float = 60.0

    @property
    def description(self) -> str:
        return f"kafka topic {self.topic} @ {self.producer_config.get('bootstrap.servers')}"

    def _produce(self, messages: Sequence[tuple[bytes, bytes | None]]) -> None:
        from confluent_kafka import Producer

        config = {k: v for k, v in self.producer_config.items()
                  if k not in ("group.id", "auto.offset.reset", "enable.auto.commit")}
        producer = Producer({**config, "enable.idempotence": True, "acks": "all"})
        failed: list[str] = []

        def done(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        for key, value in messages:
            producer.produce(self.topic, key=key, value=value, on_delivery=done)
            producer.poll(0)
        left = producer.flush(self.timeout_s)
        if left or failed:
            raise RuntimeError(f"{self.description}: {left} window message(s) unconfirmed after {self.timeout_s:.0f} s"
                               + (f", {len(failed)} failed: {failed[0]}" if failed else "")
                               + "; the batch is not committed and will be replayed")

    def write(self, cur: Any, spark: Any, columns: Sequence[str], key_len: int, rows: Sequence[Sequence[Any]], *,
              upsert: bool, batch_tag: str) -> None:
        self._produce([(_json(dict(zip(columns[:key_len], r[:key_len], strict=True))),
                        _json(dict(zip(columns, r, strict=True)))) for r in rows])

    def delete(self, cur: Any, columns: Sequence[str], keys: Sequence[Sequence[Any]]) -> None:
        self._produce([(_json(dict(zip(columns, k, strict=True))), None) for k in keys])  # tombstones


def output_type(agg: Aggregate, column_types: dict[str, str]) -> str:
    """The PostgreSQL type of one aggregate column."""
    if agg.func in ("count", "approx_count_distinct"):
        return "bigint"
    source = column_types.get(agg.column, "numeric")
    if agg.func in ("min", "max"):
        return source
    return "double precision" if source in ("double precision", "real") else "numeric"


def _json(doc: dict[str, Any]) -> bytes:
    def plain(v: Any) -> Any:
        if isinstance(v, Decimal):
            return str(v)
        if isinstance(v, datetime):
            return v.isoformat()
        return v

    return json.dumps({k: plain(v) for k, v in doc.items()}, sort_keys=True).encode()
