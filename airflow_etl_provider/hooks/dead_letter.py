"""Dead-letter queues: Kafka, S3 and local files, behind one interface.

Two ways in:

* :meth:`DeadLetterHook.publish` -- envelopes from the driver (a Python iterable), for small volumes
  and for replaying a spool;
* :meth:`DeadLetterHook.publish_dataframe` -- failed rows of a Spark DataFrame, published **from the
  executors** (``mapInArrow``: works on embedded Spark, a standalone cluster and Spark Connect). The
  driver collects only one small status row per partition, never the rows themselves.

Nothing is lost when the DLQ is down: after the sink's own retries, each partition spools what it could
not deliver to a local JSON Lines file and reports it; the hook then raises
:class:`~airflow_etl_provider.core.errors.DeadLetterUnavailableError` naming the files and the command
that replays them (``airflow-etl dlq replay-spool``).

Sinks are small picklable objects holding *resolved* connection settings (credentials included, taken
from the Airflow connection on the driver); they open their clients lazily where they run and never log
or serialise credentials into envelopes.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_etl_provider.core.config import (
    DeadLetterConfig,
    FileDeadLetterConfig,
    KafkaDeadLetterConfig,
    S3DeadLetterConfig,
    parse_dead_letter,
)
from airflow_etl_provider.core.envelope import (
    DeadLetterEnvelope,
    RunContext,
    build_envelope,
    kafka_headers,
    kafka_key,
)
from airflow_etl_provider.core.errors import DeadLetterUnavailableError, ErrorKind
from airflow_etl_provider.core.retry import Retrier, RetryPolicy

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

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

#: Kafka client settings whose values are secrets (passwords, keys, JAAS configs holding a password).
_SECRET_SETTING = re.compile(r"pass(word)?|secret|token|credential|jaas|api[_.-]?key|key\.pem", re.IGNORECASE)

_STATUS_SCHEMA = "partition INT, delivered LONG, spooled LONG, spool_path STRING, error STRING, location STRING"


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

    def merge(self, other: PublishResult) -> PublishResult:
        self.delivered += other.delivered
        self.spooled += other.spooled
        self.locations += [loc for loc in other.locations if loc not in self.locations]
        self.spool_paths += other.spool_paths
        self.errors += other.errors
        self.batch_latencies_s += other.batch_latencies_s
        return self


# --------------------------------------------------------------------------------------------- sinks
class DeadLetterSink(ABC):
    """Where envelopes go. Implementations are picklable and open their clients lazily."""

    retry: RetryPolicy
    last_error: str | None = None

    @abstractmethod
    def write(self, envelopes: Sequence[DeadLetterEnvelope], batch_id: str) -> list[str]:
        """Deliver every envelope or raise. Return the locations written (topic, keys, files).

        :param envelopes: the batch.
        :param batch_id: unique per run, try and partition; object keys are derived from it so that a
            retried task never overwrites or duplicates another try's objects.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients (flush producers)."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Where this sink writes, safe to log (no credentials)."""

    def write_with_retry(self, envelopes: Sequence[DeadLetterEnvelope], batch_id: str) -> list[str]:
        """:meth:`write` under the sink's retry policy. Every error is retried: the alternative is the spool."""
        retrier = Retrier(self.retry, classifier=lambda _err: ErrorKind.TRANSIENT, op=f"DLQ {self.description}")
        return retrier.call(self.write, envelopes, batch_id)


@dataclass
class InFlightBatch:
    """A Kafka batch produced and not yet confirmed (:meth:`KafkaSink.start` / :meth:`KafkaSink.finish`)."""

    envelopes: Sequence[DeadLetterEnvelope]
    payloads: list[bytes]
    delivered: int = 0
    failed: list[bytes] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    completed_at: float | None = None

    @property
    def latency_s(self) -> float | None:
        """From the first ``produce()`` to the last delivery report."""
        return None if self.completed_at is None else self.completed_at - self.started_at


class PartialDelivery(RuntimeError):
    """Some envelopes of a batch were not confirmed; ``undelivered`` holds exactly those."""

    def __init__(self, undelivered: Sequence[DeadLetterEnvelope], reason: str) -> None:
        super().__init__(f"{len(undelivered)} dead letters not delivered: {reason}")
        self.undelivered = list(undelivered)


@dataclass
class KafkaSink(DeadLetterSink):
    """Kafka topic sink: idempotent producer, ``acks=all``, batched asynchronous sends; a batch counts as
    delivered only when every message has a successful delivery report.

    A retry re-sends only the messages whose delivery failed, so a flaky broker does not duplicate the
    ones already acknowledged (consumers can still dedupe on ``envelope_id``: delivery is at-least-once).

    :param topic: the dead-letter topic.
    :param producer_config: librdkafka config (bootstrap.servers, security ...), resolved on the driver.
    :param retry: retry policy for the messages of a batch whose delivery failed.
    :param delivery_timeout_s: ``message.timeout.ms`` unless the config sets it: how long librdkafka keeps
        trying one message before reporting it failed.
    """

    topic: str
    producer_config: dict[str, Any]
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=3, initial_delay_s=0.5))
    delivery_timeout_s: float = 30.0
    _producer: Any = field(default=None, repr=False, compare=False)

    # Each batch waits for its last acks, so linger.ms is paid once per batch: with 1,000-envelope batches,
    # linger.ms=2 gave ~60k rows/s and p50 ~14 ms per batch on this machine, linger.ms=5 ~46k rows/s and
    # ~21 ms, linger.ms=0 about the same as 2 (benchmarks/bench_dlq_kafka.py, --producer-setting).
    # 10,000-envelope batches with linger.ms=20 gave p99 ~540 ms.
    PRODUCER_DEFAULTS = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 200000,
    }
    #: messages produced between two polls for delivery reports (flush() serves the rest of a batch)
    POLL_EVERY = 500

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_producer"] = None
        return state

    @property
    def description(self) -> str:
        return f"kafka topic {self.topic} @ {self.producer_config.get('bootstrap.servers')}"

    def _message_timeout_s(self) -> float:
        return float(self.producer_config.get("message.timeout.ms", self.delivery_timeout_s * 1000)) / 1000

    def _get_producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            config = {**self.PRODUCER_DEFAULTS, **self.producer_config}
            config.setdefault("message.timeout.ms", int(self.delivery_timeout_s * 1000))
            for consumer_only in ("group.id", "auto.offset.reset", "enable.auto.commit"):
                config.pop(consumer_only, None)  # from a connection shared with consumers
            producer = Producer(config)
            # Fetch the topic's metadata now so that an unreachable broker fails here, early. (The first
            # batch still pays ~0.5 s: librdkafka's idempotent producer asks for its producer id on a
            # fixed 500 ms timer after start; create the hook's sink early to overlap it with other work.)
            producer.list_topics(self.topic, timeout=self._message_timeout_s())
            self._producer = producer
        return self._producer

    def write(self, envelopes: Sequence[DeadLetterEnvelope], batch_id: str) -> list[str]:
        undelivered = self._send(envelopes)
        if undelivered:
            raise PartialDelivery(undelivered, f"delivery to {self.description} failed")
        return [f"kafka://{self.topic}"]

    def _send(self, envelopes: Sequence[DeadLetterEnvelope]) -> list[DeadLetterEnvelope]:
        """Produce a batch and wait for every delivery report; return the envelopes whose delivery failed."""
        return self.finish(self.start(envelopes))

    def start(self, envelopes: Sequence[DeadLetterEnvelope]) -> InFlightBatch:
        """Produce a batch without waiting for its delivery reports (see :meth:`finish`).

        One delivery callback serves the whole batch: it counts the delivered messages and keeps the
        payload of each failed one, which names its envelope (equal payloads are equal envelopes). No
        object per message outlives its ``produce()`` call, so a batch does not trigger the garbage
        collector (a full collection over the envelopes of a 100k-row publish takes ~0.3 s: with a
        callback per message, it was the p99 batch).
        """
        producer = self._get_producer()
        produce, topic = producer.produce, self.topic
        batch = InFlightBatch(envelopes=envelopes, payloads=[env.to_json().encode() for env in envelopes])

        def on_delivery(err: Any, msg: Any) -> None:
            if err is None:
                batch.delivered += 1
            else:
                batch.failed.append(msg.value())
                self.last_error = str(err)
            if batch.delivered + len(batch.failed) == len(batch.payloads):
                batch.completed_at = time.monotonic()

        for i, (env, payload) in enumerate(zip(envelopes, batch.payloads, strict=True)):
            while True:
                try:
                    produce(topic, key=kafka_key(env), value=payload, headers=kafka_headers(env),
                            on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports, then try again
                    producer.poll(0.1)
            if i % self.POLL_EVERY == self.POLL_EVERY - 1:  # serve delivery reports now and then
                producer.poll(0)
        return batch

    def finish(self, batch: InFlightBatch) -> list[DeadLetterEnvelope]:
        """Wait for every delivery report of a started batch; return the envelopes whose delivery failed.

        librdkafka reports every message within ``message.timeout.ms``; we wait a little longer than that.
        Should messages get no report at all, the whole batch counts as undelivered (at-least-once:
        consumers dedupe on ``envelope_id``).
        """
        producer = self._get_producer()
        n = len(batch.payloads)
        deadline = time.monotonic() + self._message_timeout_s() + 5
        while batch.delivered + len(batch.failed) < n and time.monotonic() < deadline:
            producer.poll(0.005)
        if batch.delivered == n:
            return []
        if batch.delivered + len(batch.failed) < n:
            log.warning("DLQ %s: %d of %d messages got no delivery report; resending the batch",
                        self.description, n - batch.delivered - len(batch.failed), n)
            return list(batch.envelopes)
        remaining = Counter(batch.failed)
        undelivered = []
        for env, payload in zip(batch.envelopes, batch.payloads, strict=True):
            if remaining[payload] > 0:
                remaining[payload] -= 1
                undelivered.append(env)
        return undelivered

    #: On a retry, at most this many failed messages are re-sent one by one (one record batch each).
    ISOLATE_MAX = 200

    def write_with_retry(self, envelopes: Sequence[DeadLetterEnvelope], batch_id: str) -> list[str]:
        """Write with retries that re-send only the messages whose delivery failed.

        The broker accepts or rejects a whole record batch: one message over ``max.message.bytes`` fails
        every message batched with it. So a retry of a few failed messages sends them one by one, and
        only the ones the broker really refuses end in the spool.
        """
        pending = list(envelopes)
        first = True

        def attempt() -> list[str]:
            nonlocal pending, first
            isolate, first = (not first and len(pending) <= self.ISOLATE_MAX), False
            undelivered = [e for env in pending for e in self._send([env])] if isolate else self._send(pending)
            if undelivered:
                pending = undelivered
                raise PartialDelivery(undelivered, f"delivery to {self.description} failed")
            return [f"kafka://{self.topic}"]

        retrier = Retrier(self.retry, classifier=lambda _err: ErrorKind.TRANSIENT, op=f"DLQ {self.description}")
        return retrier.call(attempt)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._message_timeout_s() + 5)
            self._producer = None


_PARTITION_FORMATS = {"date": "dt={dt}", "hour": "dt={dt}/hour={hour}", "pipeline": "pipeline={pipeline}/dt={dt}"}


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", part)[:200]


@dataclass
class _BlobSink(DeadLetterSink):
    """Shared layout of the S3 and file sinks: JSON Lines (gzip) or Parquet objects at
    ``<prefix>/<partition>/<pipeline>/<run_id>/try=<n>/part-<batch>.jsonl.gz``."""

    prefix: str
    format: str = "jsonl"
    partition_by: str = "date"
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=3, initial_delay_s=0.5))

    def object_key(self, first: DeadLetterEnvelope, batch_id: str) -> str:
        ts = datetime.fromisoformat(first.timestamp.replace("Z", "+00:00"))
        part = _PARTITION_FORMATS[self.partition_by].format(
            dt=ts.strftime("%Y-%m-%d"), hour=ts.strftime("%H"), pipeline=_safe(first.pipeline_id)
        )
        ext = "jsonl.gz" if self.format == "jsonl" else "parquet"
        run = _safe(first.run_id or "no-run")
        try_number = first.try_number if first.try_number is not None else 0
        root = self.prefix.rstrip("/") if isinstance(self, FileSink) else self.prefix.strip("/")
        return "/".join(p for p in (root, part, _safe(first.pipeline_id), run,
                                     f"try={try_number}", f"part-{_safe(batch_id)}.{ext}") if p)

    def encode(self, envelopes: Sequence[DeadLetterEnvelope]) -> bytes:
        if self.format == "jsonl":
            raw = "".join(env.to_json() + "\n" for env in envelopes).encode()
            return gzip.compress(raw, compresslevel=5)
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [json.loads(env.to_json()) for env in envelopes]
        for row in rows:  # nested free-form objects as JSON strings: one stable Parquet schema
            for key in ("record", "context", "original_location"):
                row[key] = json.dumps(row.get(key), sort_keys=True, default=str)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
        return buf.getvalue()

    def write(self, envelopes: Sequence[DeadLetterEnvelope], batch_id: str) -> list[str]:
        if not envelopes:
            return []
        key = self.object_key(envelopes[0], batch_id)
        self.put(key, self.encode(envelopes))
        return [self.location(key)]

    def decode(self, key: str, data: bytes) -> Iterator[str]:
        """Yield the envelope JSON documents stored in one object (the inverse of :meth:`encode`)."""
        if key.endswith(".parquet"):
            import pyarrow.parquet as pq

            for row in pq.read_table(io.BytesIO(data)).to_pylist():
                for k in ("record", "context", "original_location"):
                    if isinstance(row.get(k), str):
                        row[k] = json.loads(row[k])
                yield json.dumps(row, sort_keys=True)
            return
        raw = gzip.decompress(data) if key.endswith(".gz") else data
        for line in raw.decode().splitlines():
            if line.strip():
                yield line

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def list_keys(self, prefix: str | None = None) -> list[str]:
        """Keys of the dead-letter objects below ``prefix`` (default: the sink's prefix)."""

    @abstractmethod
    def location(self, key: str) -> str: ...


@dataclass
class S3Sink(_BlobSink):
    """S3 sink (any S3-compatible endpoint). Credentials resolved from the Airflow ``aws`` connection.

    :param bucket: the bucket.
    :param client_kwargs: ``boto3.client("s3", **client_kwargs)`` arguments (endpoint, region, keys).
    """

    bucket: str = ""
    client_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    _client: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def description(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", **self.client_kwargs)
        return self._client

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def list_keys(self, prefix: str | None = None) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=(prefix or self.prefix).strip("/")):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith((".jsonl.gz", ".parquet"))]
        return sorted(keys)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass
class FileSink(_BlobSink):
    """Local (or mounted shared) filesystem sink: the embedded default."""

    @property
    def description(self) -> str:
        return f"file://{os.path.abspath(self.prefix)}"

    def put(self, key: str, data: bytes) -> None:
        path = Path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written file

    def get(self, key: str) -> bytes:
        return Path(key).read_bytes()

    def list_keys(self, prefix: str | None = None) -> list[str]:
        root = Path(prefix or self.prefix)
        if root.is_file():
            return [str(root)]
        return sorted(str(p) for p in root.rglob("*") if p.name.endswith((".jsonl.gz", ".parquet")))

    def location(self, key: str) -> str:
        return os.path.abspath(key)


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


# --------------------------------------------------------------------------------------------- hook
class DeadLetterHook(BaseHook):
    """Publishes dead letters to the configured queue (Kafka, S3 or files) and reads them back.

    :param dead_letter: a DLQ config: ``{"type": "kafka", "conn_id": "kafka_default", "topic": ...}``,
        ``{"type": "s3", "bucket": ..., "prefix": ...}``, ``{"type": "file", "path": ...}``, the seed's
        ``deadLetterQueue`` block, or a parsed :class:`DeadLetterConfig`.
    :param pipeline_id: written into every envelope and used as the Kafka key when no business key is known.
    :param run_context: dag/task/run/try of the task publishing (part of envelopes and object keys).
    :param spool_dir: where undeliverable envelopes are spooled (default ``.local/dlq-spool`` or
        ``$AIRFLOW_ETL_DLQ_SPOOL``).
    """

    hook_name = "Dead-letter queue (airflow-etl-provider)"

    def __init__(
        self,
        dead_letter: DeadLetterConfig | Mapping[str, Any],
        pipeline_id: str,
        run_context: RunContext | None = None,
        spool_dir: str | None = None,
    ) -> None:
        super().__init__()
        config = parse_dead_letter(dead_letter)
        if config is None:
            raise ValueError("dead_letter is disabled; pass a config with enabled=true or no DeadLetterHook")
        self.config = config
        self.pipeline_id = pipeline_id
        self.run_context = run_context or RunContext(None, None, None, None, pipeline_id)
        self.spool_dir = os.path.abspath(spool_dir or default_spool_dir())
        self._sink: DeadLetterSink | None = None

    # -- sink from the Airflow connection (driver side)
    @property
    def sink(self) -> DeadLetterSink:
        if self._sink is None:
            self._sink = self._build_sink()
        return self._sink

    def _build_sink(self) -> DeadLetterSink:
        # The sink travels to the executors inside pickled closures: keep its secrets out of the logs of the
        # Python-JVM bridges (py4j and Spark Connect print what they send at DEBUG).
        from airflow_etl_provider.hooks.postgres import hide_from_spark_logs

        cfg = self.config
        if isinstance(cfg, KafkaDeadLetterConfig):
            producer_config: dict[str, Any] = {}
            if cfg.conn_id:
                from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

                producer_config.update(KafkaBaseHook(kafka_config_id=cfg.conn_id)._build_config())
            producer_config.update(cfg.config)
            hide_from_spark_logs(*(str(v) for k, v in producer_config.items() if _SECRET_SETTING.search(k) and v))
            return KafkaSink(topic=cfg.topic, producer_config=producer_config)
        if isinstance(cfg, S3DeadLetterConfig):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            s3 = S3Hook(aws_conn_id=cfg.conn_id)
            creds = s3.get_credentials()
            client_kwargs: dict[str, Any] = {
                "aws_access_key_id": creds.access_key,
                "aws_secret_access_key": creds.secret_key,
                "region_name": s3.conn_region_name or "us-east-1",
            }
            if creds.token:
                client_kwargs["aws_session_token"] = creds.token
            hide_from_spark_logs(creds.secret_key, creds.token)
            if s3.conn_config.endpoint_url:
                client_kwargs["endpoint_url"] = s3.conn_config.endpoint_url
            return S3Sink(prefix=cfg.prefix, format=cfg.format, partition_by=cfg.partition_by,
                          bucket=cfg.bucket, client_kwargs=client_kwargs)
        if isinstance(cfg, FileDeadLetterConfig):
            return FileSink(prefix=os.path.abspath(cfg.path), format=cfg.format, partition_by=cfg.partition_by)
        raise TypeError(f"unsupported dead-letter config {type(cfg).__name__}")

    @property
    def location(self) -> str:
        """Where this DLQ writes (safe to log and to return in XCom)."""
        return self.sink.description

    def _batch_prefix(self) -> str:
        rc = self.run_context
        return f"{_safe(rc.run_id or 'adhoc')}-t{rc.try_number or 0}"

    # -- driver-side publish
    def publish(self, envelopes: Iterable[DeadLetterEnvelope], batch_size: int = DEFAULT_BATCH_SIZE,
                raise_on_spool: bool = True) -> PublishResult:
        """Publish envelopes from the driver in batches; raise if any had to be spooled.

        :param envelopes: the dead letters.
        :param batch_size: envelopes per delivery confirmation (and per S3/file object).
        :param raise_on_spool: raise :class:`DeadLetterUnavailableError` when the DLQ could not take
            everything (the default: a task must not report success with rows outside the DLQ).
        """
        result = PublishResult()
        sink, prefix = self.sink, self._batch_prefix()
        kafka = isinstance(sink, KafkaSink)
        in_flight: tuple[InFlightBatch, str] | None = None

        def settle(started: InFlightBatch, batch_id: str) -> None:
            # Kafka: batch k is confirmed while batch k+1 is already being produced (two in flight), so the
            # wait for acks overlaps with serialising the next batch. Failed messages take the retry and
            # spool path of deliver_or_spool.
            undelivered = sink.finish(started)  # type: ignore[attr-defined]
            if started.latency_s is not None:
                result.batch_latencies_s.append(started.latency_s)
            result.merge(PublishResult(delivered=len(started.envelopes) - len(undelivered),
                                       locations=[f"kafka://{sink.topic}"]))  # type: ignore[attr-defined]
            if undelivered:
                result.merge(deliver_or_spool(sink, undelivered, batch_id, self.spool_dir))

        for n, batch in enumerate(_chunks(envelopes, batch_size)):
            batch_id = f"{prefix}-d{n:05d}"
            if not kafka:
                t0 = time.monotonic()
                result.merge(deliver_or_spool(sink, batch, batch_id, self.spool_dir))
                result.batch_latencies_s.append(time.monotonic() - t0)
                continue
            try:
                started = sink.start(batch)  # type: ignore[attr-defined]
            except Exception:  # the producer cannot even start (broker unreachable): retry, then spool
                if in_flight is not None:
                    settle(*in_flight)
                    in_flight = None
                result.merge(deliver_or_spool(sink, batch, batch_id, self.spool_dir))
                continue
            if in_flight is not None:
                settle(*in_flight)
            in_flight = (started, batch_id)
        if in_flight is not None:
            settle(*in_flight)
        sink.close()
        if raise_on_spool:
            self.raise_if_spooled(result)
        return result

    def raise_if_spooled(self, result: PublishResult) -> None:
        if result.spooled:
            raise DeadLetterUnavailableError(
                spool_path=", ".join(result.spool_paths),
                rows=result.spooled,
                replay_command=self.replay_command(result.spool_paths),
                reason=f"{self.location}: {result.errors[0] if result.errors else 'unknown error'}",
            )

    def replay_command(self, spool_paths: Sequence[str]) -> str:
        cfg = self.config
        if isinstance(cfg, KafkaDeadLetterConfig):
            target = f"--to kafka --topic {cfg.topic}" + (f" --conn-id {cfg.conn_id}" if cfg.conn_id else "")
            if cfg.config.get("bootstrap.servers"):
                target += f" --bootstrap-servers {cfg.config['bootstrap.servers']}"
        elif isinstance(cfg, S3DeadLetterConfig):
            target = f"--to s3 --bucket {cfg.bucket} --prefix {cfg.prefix} --conn-id {cfg.conn_id}"
        else:
            target = f"--to file --path {cfg.path}"  # type: ignore[union-attr]
        return f"airflow-etl dlq replay-spool {' '.join(spool_paths)} {target}"

    # -- executor-side publish of a DataFrame
    def publish_dataframe(
        self,
        failed: DataFrame,
        *,
        stage: str,
        key_columns: Sequence[str] = (),
        source: str | None = None,
        target: str | None = None,
        default_error: str = "rejected",
        raise_on_spool: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> PublishResult:
        """Publish the rows of ``failed`` as envelopes, from the executors.

        ``failed`` holds the original columns plus optional ``_etl_error`` (message),
        ``_etl_error_class`` and ``_etl_failed_rules`` (array of rule names). Each partition builds its
        envelopes batch by batch, delivers each batch with the sink's retries or spools it locally, and
        returns one status row; only those status rows reach the driver.

        :param failed: the failed rows.
        :param stage: the pipeline stage (``load``, ``quality``, ``parse`` ...).
        :param key_columns: business-key columns: the Kafka key and the envelope's ``record_key``.
        :param source: source name for the envelope.
        :param target: target name for the envelope.
        :param default_error: error message for rows without ``_etl_error``.
        :param raise_on_spool: raise when rows had to be spooled (see :meth:`publish`).
        :param batch_size: envelopes per delivery confirmation / per object.
        """
        import pyarrow as pa

        sink, spool_dir, rc, batch_prefix = self.sink, self.spool_dir, self.run_context, self._batch_prefix()
        pipeline_id = self.pipeline_id
        keys = tuple(key_columns)
        status_schema = pa.schema([("partition", pa.int32()), ("delivered", pa.int64()), ("spooled", pa.int64()),
                                   ("spool_path", pa.string()), ("error", pa.string()), ("location", pa.string())])

        def publish_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            ctx = TaskContext.get()
            pid = ctx.partitionId() if ctx is not None else 0
            now = datetime.now(UTC)
            res, pending, n = PublishResult(), [], 0

            def flush() -> None:
                nonlocal pending, n
                res.merge(deliver_or_spool(sink, pending, f"{batch_prefix}-p{pid:05d}-b{n:05d}", spool_dir))
                pending, n = [], n + 1

            for batch in batches:
                for row in batch.to_pylist():
                    error = row.pop(ERROR_COLUMN, None) or default_error
                    error_class = row.pop(ERROR_CLASS_COLUMN, None)
                    rules = row.pop(FAILED_RULES_COLUMN, None) or ()
                    env = build_envelope(
                        row, error, stage=stage, pipeline_id=pipeline_id, run_context=rc,
                        failed_rules=list(rules), key_columns=keys, source=source, target=target, now=now,
                    )
                    if error_class:
                        env = dataclasses.replace(env, error_class=error_class)
                    pending.append(env)
                    if len(pending) >= batch_size:
                        flush()
            if pending:
                flush()
            sink.close()
            yield pa.RecordBatch.from_pylist(
                [{"partition": pid, "delivered": res.delivered, "spooled": res.spooled,
                  "spool_path": ",".join(res.spool_paths) or None,
                  "error": res.errors[0] if res.errors else None,
                  "location": ",".join(res.locations) or None}],
                schema=status_schema,
            )

        statuses = failed.mapInArrow(publish_partition, _STATUS_SCHEMA).collect()
        result = PublishResult()
        for st in statuses:
            result.merge(PublishResult(
                delivered=st["delivered"], spooled=st["spooled"],
                locations=(st["location"] or "").split(",") if st["location"] else [],
                spool_paths=st["spool_path"].split(",") if st["spool_path"] else [],
                errors=[st["error"]] if st["error"] else [],
            ))
        log.info("Dead letters: %d delivered to %s, %d spooled", result.delivered, self.location, result.spooled)
        if raise_on_spool:
            self.raise_if_spooled(result)
        return result


def envelopes_from_rows(
    rows: Iterable[Mapping[str, Any]],
    error: BaseException | str,
    *,
    stage: str,
    pipeline_id: str,
    run_context: RunContext | None = None,
    key_columns: Sequence[str] = (),
    source: str | None = None,
    target: str | None = None,
) -> Iterator[DeadLetterEnvelope]:
    """Envelopes for plain Python rows that failed with one error (driver side)."""
    now = datetime.now(UTC)
    for row in rows:
        yield build_envelope(dict(row), error, stage=stage, pipeline_id=pipeline_id, run_context=run_context,
                             key_columns=key_columns, source=source, target=target, now=now)
