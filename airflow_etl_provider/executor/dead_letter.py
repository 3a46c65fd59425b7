"""The local spool, deliver-or-spool and the per-partition publisher: the part of the dead-letter queue
that runs **on the Spark executors** (and on the driver for small volumes).

Everything here imports neither Airflow nor any module that does (``tests/unit/test_executor_side.py``
proves it in an interpreter where ``import airflow`` fails): on a real cluster the executors have no
Airflow, and under an Airflow worker the Task SDK supervisor blocks the metadata DB in every process the
task starts, Spark's Python workers included, so ``import airflow`` fails there too. Connections are
resolved on the driver (:class:`~airflow_etl_provider.hooks.dead_letter.DeadLetterHook`) and reach
these objects as plain settings.

Sinks are small picklable objects holding *resolved* connection settings (credentials included); they
open their clients lazily where they run and never log or serialise credentials into envelopes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_etl_provider.core.envelope import (
    DeadLetterEnvelope,
    RunContext,
    build_envelope,
    run_independent_id,
)
from airflow_etl_provider.core.errors import DeadLetterUnavailableError
from airflow_etl_provider.executor.arrow_envelopes import KafkaMessageBuilder, KafkaMessages, envelopes_of
from airflow_etl_provider.executor.sinks import (  # noqa: F401 - the sinks are part of this module's interface
    DeadLetterSink,
    FileSink,
    InFlightBatch,
    KafkaSink,
    PartialDelivery,
    S3Sink,
    _BlobSink,
    _safe,
)

log = logging.getLogger(__name__)


#: Columns a failed-rows DataFrame may carry besides the original columns. They are removed from the
#: envelope's ``record`` and fill its error fields.
ERROR_COLUMN = "_etl_error"
ERROR_CLASS_COLUMN = "_etl_error_class"
FAILED_RULES_COLUMN = "_etl_failed_rules"
META_COLUMNS = (ERROR_COLUMN, ERROR_CLASS_COLUMN, FAILED_RULES_COLUMN)

#: Envelopes per delivery confirmation (Kafka) or per object (S3, files). See KafkaSink.PRODUCER_DEFAULTS.
DEFAULT_BATCH_SIZE = 1000

def default_spool_dir() -> str:
    """``$AIRFLOW_ETL_DLQ_SPOOL``, else ``$AIRFLOW_HOME/dlq-spool``, else ``./.local/dlq-spool`` (read at call time)."""
    if os.environ.get("AIRFLOW_ETL_DLQ_SPOOL"):
        return os.environ["AIRFLOW_ETL_DLQ_SPOOL"]
    if os.environ.get("AIRFLOW_HOME"):
        return os.path.join(os.environ["AIRFLOW_HOME"], "dlq-spool")
    return os.path.join(os.getcwd(), ".local", "dlq-spool")

#: The status row each partition of :func:`partition_publisher` returns (the only data that reaches the driver).
STATUS_SCHEMA = ("partition INT, delivered LONG, spooled LONG, spool_path STRING, error STRING, location STRING, "
                 "batch_latencies_s ARRAY<DOUBLE>")

#: Kafka batches of a partition waiting for their acks while the next ones are built and produced
MAX_IN_FLIGHT = 4


@dataclass
class PublishResult:
    """What a publish did. ``delivered + spooled`` always equals the rows given.

    :param delivered: envelopes the DLQ confirmed (Kafka acks=all delivery reports, S3/file writes).
    :param spooled: envelopes written to the local spool because the DLQ could not take them.
    :param locations: where delivered envelopes are (topic, object keys or files), deduplicated.
    :param spool_paths: spool files holding the undelivered envelopes.
    :param errors: the last error of each failed partition/batch.
    :param batch_latencies_s: per batch, the time until every envelope was confirmed (for metrics).
    """

    delivered: int = 0
    spooled: int = 0
    locations: list[str] = field(default_factory=list)
    spool_paths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    batch_latencies_s: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.delivered + self.spooled

    def raise_if_spooled(self, location: str, replay_target: str = "") -> None:
        """Fail with :class:`DeadLetterUnavailableError` when envelopes ended in the spool: how many, where, why,
        and the command that replays them (``replay_target``: its ``--to ...`` part)."""
        if self.spooled:
            command = " ".join(["airflow-etl dlq replay-spool", *self.spool_paths, *([replay_target] if replay_target else [])])
            raise DeadLetterUnavailableError(spool_path=", ".join(self.spool_paths), rows=self.spooled,
                                             replay_command=command,
                                             reason=f"{location}: {self.errors[0] if self.errors else 'unknown error'}")

    def merge(self, other: PublishResult) -> PublishResult:
        self.delivered += other.delivered
        self.spooled += other.spooled
        self.locations += [loc for loc in other.locations if loc not in self.locations]
        self.spool_paths += other.spool_paths
        self.errors += other.errors
        self.batch_latencies_s += other.batch_latencies_s
        return self


# --------------------------------------------------------------------------------------------- spool
def spool(envelopes: Sequence[DeadLetterEnvelope], spool_dir: str, batch_id: str) -> str:
    """Write envelopes that the DLQ could not take to a local JSON Lines file and return its path."""
    directory = Path(spool_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"spool-{_safe(batch_id)}-{uuid.uuid4().hex[:8]}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for env in envelopes:
            fh.write(env.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return str(path)


def read_spool(paths: Iterable[str]) -> Iterator[DeadLetterEnvelope]:
    """Yield the envelopes in spool files (or directories of them)."""
    for p in paths:
        files = sorted(Path(p).glob("*.jsonl")) if Path(p).is_dir() else [Path(p)]
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield DeadLetterEnvelope.from_json(line)


def deliver_or_spool(sink: DeadLetterSink, envelopes: Sequence[DeadLetterEnvelope], batch_id: str,
                     spool_dir: str) -> PublishResult:
    """Deliver a batch with the sink's retries; on final failure spool it. Never drops an envelope."""
    if not envelopes:
        return PublishResult()
    try:
        locations = sink.write_with_retry(envelopes, batch_id)
        return PublishResult(delivered=len(envelopes), locations=locations)
    except Exception as err:
        undelivered = err.undelivered if isinstance(err, PartialDelivery) else list(envelopes)
        path = spool(undelivered, spool_dir, batch_id)
        reason = f"{type(err).__name__}: {err}" + (f" ({sink.last_error})" if sink.last_error else "")
        log.error("DLQ %s unreachable (%s): %d dead letters spooled to %s",
                  sink.description, reason, len(undelivered), path)
        delivered = len(envelopes) - len(undelivered)
        return PublishResult(delivered=delivered, spooled=len(undelivered), spool_paths=[path], errors=[reason],
                             locations=[sink.description] if delivered else [])


def _chunks(items: Iterable[DeadLetterEnvelope], size: int) -> Iterator[list[DeadLetterEnvelope]]:
    batch: list[DeadLetterEnvelope] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch



# --------------------------------------------------------------------------------------------- executor functions
def partition_publisher(
    sink: DeadLetterSink,
    *,
    spool_dir: str,
    batch_prefix: str,
    pipeline_id: str,
    run_context: RunContext,
    stage: str,
    key_columns: Sequence[str] = (),
    source: str | None = None,
    target: str | None = None,
    default_error: str = "rejected",
    batch_size: int = DEFAULT_BATCH_SIZE,
    location_columns: Sequence[str] = (),
    context_columns: Sequence[str] = (),
    run_independent_ids: bool = False,
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInArrow`` function that turns one partition's failed rows into envelopes and delivers them
    batch by batch (retries, then the local spool), returning one :data:`STATUS_SCHEMA` row.

    The rows hold the original columns plus optional :data:`ERROR_COLUMN`, :data:`ERROR_CLASS_COLUMN` and
    :data:`FAILED_RULES_COLUMN`. The function refers only to this module and the pure core, so the
    executors need neither Airflow nor the hooks.

    :param location_columns: columns that say where the row was read (``_etl_topic``, ``_etl_partition``,
        ``_etl_offset``): moved from the record to the envelope's ``original_location`` (without ``_etl_``).
    :param context_columns: columns moved from the record to the envelope's ``context`` (without ``_etl_``).
    :param run_independent_ids: envelope ids without the Airflow run (:func:`run_independent_id`).
    """
    keys = tuple(key_columns)
    locations, contexts = tuple(location_columns), tuple(context_columns)
    # Kafka rows without location or context columns take the column-wise path (arrow_envelopes): the same
    # messages, byte for byte, without an envelope object per row.
    column_wise = isinstance(sink, KafkaSink) and not locations and not contexts and not run_independent_ids

    def publish_partition(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        ctx = TaskContext.get()
        pid = ctx.partitionId() if ctx is not None else 0
        now = datetime.now(UTC)
        res, n = PublishResult(), 0
        pending: list[DeadLetterEnvelope] = []
        in_flight: deque[tuple[InFlightBatch, str]] = deque()
        builder = None
        if column_wise:
            builder = KafkaMessageBuilder(
                stage=stage, pipeline_id=pipeline_id, run_context=run_context, key_columns=keys, source=source,
                target=target, default_error=default_error, now=now, error_column=ERROR_COLUMN,
                error_class_column=ERROR_CLASS_COLUMN, rules_column=FAILED_RULES_COLUMN,
            )
            sink.connect_early()  # type: ignore[attr-defined]

        def next_batch_id() -> str:
            nonlocal n
            n += 1
            return f"{batch_prefix}-p{pid:05d}-b{n - 1:05d}"

        def flush() -> None:
            nonlocal pending
            t0 = time.monotonic()
            res.merge(deliver_or_spool(sink, pending, next_batch_id(), spool_dir))
            res.batch_latencies_s.append(time.monotonic() - t0)
            pending = []

        def settle(started: InFlightBatch, batch_id: str) -> None:
            # every message confirmed or failed; the failed ones take deliver_or_spool's retries, then the spool
            undelivered = sink.finish(started)  # type: ignore[attr-defined]
            if started.latency_s is not None:
                res.batch_latencies_s.append(started.latency_s)
            delivered = len(started.payloads) - len(undelivered)
            res.merge(PublishResult(delivered=delivered, locations=[f"kafka://{sink.topic}"] if delivered else []))  # type: ignore[attr-defined]
            if undelivered:
                res.merge(deliver_or_spool(sink, undelivered, batch_id, spool_dir))

        def send(messages: KafkaMessages) -> None:
            # Up to MAX_IN_FLIGHT batches wait for their acks while the next ones are built and produced;
            # each is settled as soon as its last report is in, and all of them before the partition returns.
            batch_id = next_batch_id()
            try:
                started = sink.start_messages(messages.keys, messages.values, messages.headers)  # type: ignore[attr-defined]
            except Exception:  # the producer cannot even start (broker unreachable): retry, then spool
                while in_flight:
                    settle(*in_flight.popleft())
                res.merge(deliver_or_spool(sink, envelopes_of(messages.values), batch_id, spool_dir))
                return
            in_flight.append((started, batch_id))
            while in_flight and (len(in_flight) > MAX_IN_FLIGHT or in_flight[0][0].done):
                settle(*in_flight.popleft())

        for batch in batches:
            if builder is not None and builder.handles(batch.schema):
                # built chunk by chunk, right before it is produced, after serving the delivery reports that came
                # in meanwhile: a confirmed batch is settled (and its latency taken) before the next is built
                for start in range(0, batch.num_rows, batch_size):
                    if in_flight:
                        sink.serve_delivery_reports()  # type: ignore[attr-defined]
                        while in_flight and in_flight[0][0].done:
                            settle(*in_flight.popleft())
                    send(builder.messages(batch.slice(start, batch_size)))
                continue
            for row in batch.to_pylist():
                error = row.pop(ERROR_COLUMN, None) or default_error
                error_class = row.pop(ERROR_CLASS_COLUMN, None)
                rules = row.pop(FAILED_RULES_COLUMN, None) or ()
                location = {c.removeprefix("_etl_"): row.pop(c, None) for c in locations} or None
                context = {c.removeprefix("_etl_"): row.pop(c, None) for c in contexts} or None
                env = build_envelope(
                    row, error, stage=stage, pipeline_id=pipeline_id, run_context=run_context,
                    failed_rules=list(rules), key_columns=keys, source=source, target=target, now=now,
                    original_location=location, context=context,
                )
                if error_class:
                    env = dataclasses.replace(env, error_class=error_class)
                if run_independent_ids:
                    env = dataclasses.replace(env, envelope_id=run_independent_id(env))
                pending.append(env)
                if len(pending) >= batch_size:
                    flush()
        while in_flight:
            settle(*in_flight.popleft())
        if pending:
            flush()
        sink.close()
        status_schema = pa.schema([("partition", pa.int32()), ("delivered", pa.int64()), ("spooled", pa.int64()),
                                   ("spool_path", pa.string()), ("error", pa.string()), ("location", pa.string()),
                                   ("batch_latencies_s", pa.list_(pa.float64()))])
        yield pa.RecordBatch.from_pylist(
            [{"partition": pid, "delivered": res.delivered, "spooled": res.spooled,
              "spool_path": ",".join(res.spool_paths) or None,
              "error": res.errors[0] if res.errors else None,
              "location": ",".join(res.locations) or None,
              "batch_latencies_s": res.batch_latencies_s}],
            schema=status_schema,
        )

    return publish_partition


def result_from_statuses(statuses: Iterable[Any]) -> PublishResult:
    """Add up the :data:`STATUS_SCHEMA` rows of :func:`partition_publisher` (driver side)."""
    result = PublishResult()
    for st in statuses:
        result.merge(PublishResult(
            delivered=st["delivered"], spooled=st["spooled"],
            locations=(st["location"] or "").split(",") if st["location"] else [],
            spool_paths=st["spool_path"].split(",") if st["spool_path"] else [],
            errors=[st["error"]] if st["error"] else [],
            batch_latencies_s=list(st["batch_latencies_s"] or []),
        ))
    return result


#: The rows :func:`object_reader` returns: one envelope JSON document and where it was read.
OBJECT_READER_SCHEMA = "value STRING, _dlq_location STRING"


def object_reader(sink: _BlobSink) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInArrow`` function that reads S3/file dead-letter objects (a ``key`` column) back as
    envelope JSON documents (:data:`OBJECT_READER_SCHEMA`), on the executors."""

    def read_objects(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for batch in batches:
            values: list[str] = []
            locations: list[str] = []
            for key in batch.column("key").to_pylist():
                for doc in sink.decode(key, sink.get(key)):
                    values.append(doc)
                    locations.append(sink.location(key))
            yield pa.RecordBatch.from_pydict({"value": values, "_dlq_location": locations})

    return read_objects
