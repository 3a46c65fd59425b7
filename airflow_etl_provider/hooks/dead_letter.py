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

The hook runs on the driver: it resolves the Airflow connection into a sink of
:mod:`airflow_etl_provider.executor.dead_letter` (plain settings, credentials included), and only that
module's code travels to the executors, which need no Airflow.
"""


from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_etl_provider.core.config import (
    DeadLetterConfig,
    FileDeadLetterConfig,
    KafkaDeadLetterConfig,
    S3DeadLetterConfig,
    parse_dead_letter,
)
from airflow_etl_provider.core.envelope import DeadLetterEnvelope, RunContext, build_envelope
from airflow_etl_provider.core.errors import ConfigError

# The executor-side half, re-exported: these names were public here before they moved.
from airflow_etl_provider.executor.dead_letter import (  # noqa: F401
    DEFAULT_BATCH_SIZE,
    ERROR_CLASS_COLUMN,
    ERROR_COLUMN,
    FAILED_RULES_COLUMN,
    META_COLUMNS,
    STATUS_SCHEMA,
    DeadLetterSink,
    FileSink,
    InFlightBatch,
    KafkaSink,
    PartialDelivery,
    PublishResult,
    S3Sink,
    _BlobSink,
    _chunks,
    _safe,
    default_spool_dir,
    deliver_or_spool,
    partition_publisher,
    read_spool,
    result_from_statuses,
    spool,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from airflow_etl_provider.hooks.dead_letter_jvm import JvmPublish

log = logging.getLogger(__name__)

#: Kafka client settings whose values are secrets (passwords, keys, JAAS configs holding a password).
_SECRET_SETTING = re.compile(r"pass(word)?|secret|token|credential|jaas|api[_.-]?key|key\.pem", re.IGNORECASE)


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
            result.merge(PublishResult(delivered=len(started.payloads) - len(undelivered),
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
        result.raise_if_spooled(self.location, self.replay_target())

    def replay_target(self) -> str:
        """The ``--to ...`` part of ``airflow-etl dlq replay-spool`` for this DLQ."""
        cfg = self.config
        if isinstance(cfg, KafkaDeadLetterConfig):
            target = f"--to kafka --topic {cfg.topic}" + (f" --conn-id {cfg.conn_id}" if cfg.conn_id else "")
            if cfg.config.get("bootstrap.servers"):
                target += f" --bootstrap-servers {cfg.config['bootstrap.servers']}"
            return target
        if isinstance(cfg, S3DeadLetterConfig):
            return f"--to s3 --bucket {cfg.bucket} --prefix {cfg.prefix} --conn-id {cfg.conn_id}"
        return f"--to file --path {cfg.path}"  # type: ignore[union-attr]

    def replay_command(self, spool_paths: Sequence[str]) -> str:
        return f"airflow-etl dlq replay-spool {' '.join(spool_paths)} {self.replay_target()}"

    # -- executor-side publish of a DataFrame
    def _jvm_publish(self, failed: DataFrame) -> JvmPublish | None:
        """The JVM publish of ``failed`` when the config's ``writer`` allows it and it can run (see
        :mod:`airflow_etl_provider.hooks.dead_letter_jvm`), else ``None`` (the Python path)."""
        cfg = self.config
        if not isinstance(cfg, KafkaDeadLetterConfig) or cfg.writer == "python":
            return None
        from airflow_etl_provider.hooks.dead_letter_jvm import JvmPublish

        publish = JvmPublish(failed, self.sink, (ERROR_COLUMN, ERROR_CLASS_COLUMN, FAILED_RULES_COLUMN))  # type: ignore[arg-type]
        reason = publish.unavailable()
        if reason is not None:
            _no_jvm(cfg.writer, reason)
            return None
        return publish

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
        returns one status row; only those status rows reach the driver. For Kafka, the config's ``writer``
        picks where that runs: Spark's JVM (:mod:`airflow_etl_provider.hooks.dead_letter_jvm`, the same
        messages byte for byte) or the Python workers (``mapInArrow``).

        :param failed: the failed rows.
        :param stage: the pipeline stage (``load``, ``quality``, ``parse`` ...).
        :param key_columns: business-key columns: the Kafka key and the envelope's ``record_key``.
        :param source: source name for the envelope.
        :param target: target name for the envelope.
        :param default_error: error message for rows without ``_etl_error``.
        :param raise_on_spool: raise when rows had to be spooled (see :meth:`publish`).
        :param batch_size: envelopes per delivery confirmation / per object.
        """
        batch_prefix = self._batch_prefix()
        jvm = self._jvm_publish(failed)
        if jvm is not None:
            statuses: list[Any] = jvm.run(
                spool_dir=self.spool_dir, batch_prefix=batch_prefix, pipeline_id=self.pipeline_id,
                run_context=self.run_context, stage=stage, key_columns=key_columns, source=source, target=target,
                default_error=default_error, batch_size=batch_size,
            )
        else:
            writer = partition_publisher(
                self.sink, spool_dir=self.spool_dir, batch_prefix=batch_prefix, pipeline_id=self.pipeline_id,
                run_context=self.run_context, stage=stage, key_columns=key_columns, source=source, target=target,
                default_error=default_error, batch_size=batch_size,
            )
            statuses = failed.mapInArrow(writer, STATUS_SCHEMA).collect()
        result = result_from_statuses(statuses)
        log.info("Dead letters: %d delivered to %s, %d spooled (%s publisher)", result.delivered, self.location,
                 result.spooled, "jvm" if jvm is not None else "python")
        if raise_on_spool:
            self.raise_if_spooled(result)
        return result


def _no_jvm(writer: str, reason: str) -> None:
    if writer == "jvm":
        raise ConfigError("dead_letter.writer", f"'jvm' cannot run here: {reason}; use 'auto' (the JVM where it "
                          "can run, else Python) or 'python'")
    log.info("Dead letters published from Python workers: %s", reason)


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
