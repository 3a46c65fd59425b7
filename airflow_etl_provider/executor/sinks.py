"""Dead-letter sinks: Kafka, S3 and local files, behind one small interface (:class:`DeadLetterSink`).

Executor-side code (see :mod:`airflow_etl_provider.executor`): no Airflow. Sinks are small picklable
objects holding *resolved* connection settings (credentials included, resolved on the driver by
:class:`~airflow_etl_provider.hooks.dead_letter.DeadLetterHook`); they open their clients lazily where they
run and never log or serialise credentials into envelopes.
"""

from __future__ import annotations

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_etl_provider.core.envelope import DeadLetterEnvelope, kafka_headers, kafka_key
from airflow_etl_provider.core.errors import ErrorKind
from airflow_etl_provider.core.retry import Retrier, RetryPolicy

log = logging.getLogger(__name__)

#: One Kafka producer per producer config per process, reused by the sinks that come after (the next Spark
#: task in a reused Python worker, the next micro-batch): a new idempotent producer pays ~0.5 s before its
#: first delivery (librdkafka's producer-id timer; benchmarks/bench_streaming.py). A producer that saw a
#: failed or unreported delivery is dropped, never reused.
_SHARED_PRODUCERS: dict[str, Any] = {}


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

    envelopes: Sequence[DeadLetterEnvelope] | None
    payloads: list[bytes]
    delivered: int = 0
    failed: list[bytes] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    completed_at: float | None = None

    @property
    def done(self) -> bool:
        """Whether every message has its delivery report."""
        return self.delivered + len(self.failed) == len(self.payloads)

    def envelopes_at(self, indices: Sequence[int]) -> list[DeadLetterEnvelope]:
        """The envelopes of the messages at ``indices`` (rebuilt from their JSON when the batch was started
        from built messages)."""
        if self.envelopes is not None:
            return [self.envelopes[i] for i in indices]
        return [DeadLetterEnvelope.from_json(self.payloads[i]) for i in indices]

    def all_envelopes(self) -> list[DeadLetterEnvelope]:
        """Every envelope of the batch."""
        return self.envelopes_at(range(len(self.payloads)))

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

    def _config(self) -> dict[str, Any]:
        config = {**self.PRODUCER_DEFAULTS, **self.producer_config}
        config.setdefault("message.timeout.ms", int(self.delivery_timeout_s * 1000))
        for consumer_only in ("group.id", "auto.offset.reset", "enable.auto.commit"):
            config.pop(consumer_only, None)  # from a connection shared with consumers
        return config

    def _shared_key(self) -> str:
        return json.dumps(self._config(), sort_keys=True, default=str)

    def _get_producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            key = self._shared_key()
            producer = _SHARED_PRODUCERS.get(key)
            if producer is None:
                producer = Producer(self._config())
            # Fetch the topic's metadata now so that an unreachable broker fails here, early. (A new producer's
            # first batch still pays ~0.5 s: librdkafka's idempotent producer asks for its producer id on a
            # fixed 500 ms timer after start; create the hook's sink early to overlap it with other work.)
            try:
                producer.list_topics(self.topic, timeout=self._message_timeout_s())
            except Exception:
                if _SHARED_PRODUCERS.get(key) is producer:  # an early one (connect_early): not kept either
                    del _SHARED_PRODUCERS[key]
                raise
            _SHARED_PRODUCERS[key] = self._producer = producer
        return self._producer

    def connect_early(self) -> None:
        """Create the producer now, without waiting for anything, so that its start (the idempotent producer's
        id comes after ~0.5 s) overlaps with building the first batch. Errors surface at the first
        :meth:`start`, where they take the retry and spool path: a producer the config does not allow is
        created (and refused) again there."""
        if self._producer is None:
            key = self._shared_key()
            if key not in _SHARED_PRODUCERS:
                from confluent_kafka import KafkaException, Producer

                try:
                    _SHARED_PRODUCERS[key] = Producer(self._config())
                except KafkaException as err:
                    log.debug("DLQ %s: no early producer (%s); the first batch creates it", self.description, err)

    def _discard_producer(self) -> None:
        """Never reuse a producer that failed a delivery (it may be fenced or in a fatal state)."""
        if self._producer is not None:
            key = self._shared_key()
            if _SHARED_PRODUCERS.get(key) is self._producer:
                del _SHARED_PRODUCERS[key]

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
        batch = InFlightBatch(envelopes=envelopes, payloads=[env.to_json().encode() for env in envelopes])
        self._produce(producer, batch, [kafka_key(env) for env in envelopes], [kafka_headers(env) for env in envelopes])
        return batch

    def start_messages(self, keys: Sequence[bytes], values: Sequence[bytes],
                       headers: Sequence[list[tuple[str, bytes]]]) -> InFlightBatch:
        """:meth:`start` for messages already built (keys, values and headers, as
        :class:`~airflow_etl_provider.executor.arrow_envelopes.KafkaMessageBuilder` builds them from Arrow rows):
        the batch holds no envelope objects; :meth:`finish` rebuilds only those of failed messages from their
        JSON.

        :param keys: the message keys.
        :param values: the envelopes' JSON.
        :param headers: the messages' headers.
        """
        producer = self._get_producer()
        batch = InFlightBatch(envelopes=None, payloads=list(values))
        self._produce(producer, batch, keys, headers)
        return batch

    def _produce(self, producer: Any, batch: InFlightBatch, keys: Sequence[bytes],
                 headers: Sequence[list[tuple[str, bytes]]]) -> None:
        produce, topic, payloads, poll_every = producer.produce, self.topic, batch.payloads, self.POLL_EVERY
        n = len(payloads)

        def on_delivery(err: Any, msg: Any) -> None:
            if err is None:
                batch.delivered += 1
            else:
                batch.failed.append(msg.value())
                self.last_error = str(err)
            if batch.delivered + len(batch.failed) == n:
                batch.completed_at = time.monotonic()

        batch.started_at = time.monotonic()
        for i, (key, payload, message_headers) in enumerate(zip(keys, payloads, headers, strict=True)):
            while True:
                try:
                    produce(topic, key=key, value=payload, headers=message_headers, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports, then try again
                    producer.poll(0.1)
            if i % poll_every == poll_every - 1:  # serve delivery reports now and then
                producer.poll(0)

    def serve_delivery_reports(self) -> None:
        """Run the delivery callbacks of the reports that have arrived, without waiting."""
        if self._producer is not None:
            self._producer.poll(0)

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
        self._discard_producer()
        if batch.delivered + len(batch.failed) < n:
            log.warning("DLQ %s: %d of %d messages got no delivery report; resending the batch",
                        self.description, n - batch.delivered - len(batch.failed), n)
            return batch.all_envelopes()
        remaining = Counter(batch.failed)
        failed = []
        for i, payload in enumerate(batch.payloads):
            if remaining[payload] > 0:
                remaining[payload] -= 1
                failed.append(i)
        return batch.envelopes_at(failed)

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
