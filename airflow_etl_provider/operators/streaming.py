"""StreamingWatermarkOperator: a Structured Streaming aggregation from Kafka with event-time windows, run the
way Airflow runs tasks: it processes what arrived since the last run and stops, every late row is captured to
the dead-letter queue, and each micro-batch counts exactly once in PostgreSQL.

The operator is thin: the rules are in :mod:`airflow_etl_provider.core.streaming` (validated at DAG parse
time), the micro-batch in :mod:`airflow_etl_provider.executor.streaming` (no Airflow: on Spark Connect it runs on
the server), the query's life in :mod:`airflow_etl_provider.hooks.streaming`.

Sources: Kafka (the Kafka position of each row goes with its dead letter) and files (json, csv, parquet; the
file path goes with it). Sinks (:mod:`airflow_etl_provider.executor.stream_sinks`): PostgreSQL (exactly once),
Parquet (one directory per batch, exactly once for committed batches), Kafka (at-least-once with stable keys).
The window state and the ledger always live in PostgreSQL: the sink's database, or ``sink.state_conn_id``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_etl_provider.core.config import is_templated as _templated
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import quote_table
from airflow_etl_provider.core.metrics import parse_backends
from airflow_etl_provider.core.streaming import StreamingConfig, validate_streaming


class StreamingWatermarkOperator(BaseOperator):
    """Aggregate a Kafka stream by event-time windows into PostgreSQL; capture every late row.

    :param source: ``{"type": "kafka", "conn_id": "kafka_default", "topic": ..., "starting_offsets": "earliest",
        "format": "json", "schema": "<DDL>", "max_offsets_per_trigger": None}`` (templated).
    :param event_time_column: the event-time column of ``source.schema``.
    :param watermark: the allowed lateness, e.g. ``"10 minutes"``.
    :param window: ``{"type": "tumbling", "duration": "5 minutes"}``, ``{"type": "sliding", "duration": ...,
        "slide": ...}`` or ``{"type": "session", "gap": "10 minutes"}`` (a row is late when its own session
        ``[t, t + gap)`` ends at or before the watermark; sessions that overlap or touch merge, as in Spark).
    :param group_by: grouping columns.
    :param aggregations: ``{"amount": ["sum", "avg", "min", "max"], "*": ["count"], "order_id":
        ["approx_count_distinct"]}``; output columns ``amount_sum`` ..., ``count``.
    :param sink: ``{"type": "postgres", "conn_id": "postgres_default", "table": "public.orders_5min"}`` (the
        table is created if missing, keyed by the group columns and the window), ``{"type": "parquet", "path":
        ...}`` or ``{"type": "kafka", "conn_id": "kafka_default", "topic": ...}``; the last two keep their state
        in ``state_conn_id`` (default ``postgres_default``). Templated.
    :param output_mode: ``append`` (a window is written once, when the watermark passes its end) or ``update``
        (upserted as it changes).
    :param checkpoint_location: the stream's checkpoint (required; templated).
    :param trigger: ``"available_now"`` (default: what arrived since the last run, then stop) or
        ``{"processing_time": "30 seconds", "max_runtime": "15 minutes"}``.
    :param late_data: ``{"dead_letter": <a DLQ config>}`` (late rows there, stage ``late_data``) or ``"drop"``
        (counted only). Templated.
    :param pipeline_id: the stream's name (default ``<dag_id>.<task_id>``): ledger, lock and envelopes.
    :param spark_conn_id: ``spark`` or ``spark_connect`` connection.
    :param spark_conf: Spark conf overriding the connection's extras.
    :param metrics: metrics backends for this task (see the load operator); ``None``: the deployment's
        ``[etl_provider] metrics_backends``; ``[]``: none. Per-batch durations, watermark lag and late rows come
        from the run's ledger.
    """

    template_fields: Sequence[str] = ("source", "sink", "checkpoint_location", "late_data")
    template_fields_renderers = {"source": "json", "sink": "json", "late_data": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        source: Mapping[str, Any],
        event_time_column: str,
        watermark: str,
        window: Mapping[str, Any],
        aggregations: Mapping[str, Any],
        sink: Mapping[str, Any],
        checkpoint_location: str,
        group_by: Sequence[str] = (),
        output_mode: str = "append",
        trigger: str | Mapping[str, Any] = "available_now",
        late_data: Mapping[str, Any] | str | None = None,
        pipeline_id: str | None = None,
        spark_conn_id: str = "spark_default",
        spark_conf: Mapping[str, Any] | None = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # copied as given: validation (below, or at run time when templated) names what is wrong
        self.source, self.sink = _copy(source), _copy(sink)
        self.event_time_column, self.watermark, self.window = event_time_column, watermark, _copy(window)
        self.group_by = list(group_by) if isinstance(group_by, list | tuple) else group_by
        self.aggregations = _copy(aggregations)
        self.output_mode, self.trigger = output_mode, trigger
        self.checkpoint_location = checkpoint_location
        self.late_data = late_data
        self.pipeline_id = pipeline_id
        self.spark_conn_id, self.spark_conf = spark_conn_id, dict(spark_conf or {})
        self._runner: Any = None
        if metrics is not None and not _templated(metrics):
            parse_backends(metrics)
        self.metrics = metrics
        if late_data is None:
            raise ConfigError("late_data", "is required: {'dead_letter': <a DLQ config>} to keep every late row, or "
                              "'drop' to only count them")
        if not any(_templated(v) for v in (source, sink, checkpoint_location, late_data)):
            self._validate()

    def _validate(self) -> StreamingConfig:
        cfg = validate_streaming(
            source=self.source, event_time_column=self.event_time_column, watermark=self.watermark,
            window=self.window, group_by=self.group_by, aggregations=self.aggregations, sink=self.sink,
            output_mode=self.output_mode, checkpoint_location=self.checkpoint_location, trigger=self.trigger,
            late_data=self.late_data,
        )
        if cfg.sink_type == "postgres":
            quote_table(self.sink["table"], "sink.table")
        return cfg

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_etl_provider.hooks.observability import observe

        pipeline = self.pipeline_id or f"{self.dag_id}.{self.task_id}"
        with observe(self, context, "streaming", self.metrics, pipeline=pipeline) as obs:
            obs.start_stage("stream")
            result = self._execute(context)
            obs.record_batches(result.get("batch_durations_s") or ())
            obs.end_stage("stream", batches=result["batches"], rows_read=result["input_rows"],
                          late_rows=result["late_rows"])
            return obs.done(result)

    def _execute(self, context: Any) -> dict[str, Any]:
        from airflow_etl_provider.hooks.dead_letter import DeadLetterHook
        from airflow_etl_provider.hooks.postgres import SparkPostgresHook
        from airflow_etl_provider.hooks.resilience import run_context
        from airflow_etl_provider.hooks.spark import SparkSessionHook
        from airflow_etl_provider.hooks.streaming import StreamRunner, build_window_sink

        cfg = self._validate()
        pipeline = self.pipeline_id or f"{self.dag_id}.{self.task_id}"
        rc = run_context(context, pipeline)
        dlq = DeadLetterHook(self.late_data["dead_letter"], pipeline_id=pipeline, run_context=rc) \
            if isinstance(self.late_data, Mapping) else None
        state_conn = (self.sink.get("conn_id") if self.sink["type"] == "postgres" else self.sink.get("state_conn_id"))
        conn_args = SparkPostgresHook(postgres_conn_id=state_conn or "postgres_default") \
            .psycopg_conn_args(application_name=f"airflow-etl stream {pipeline}")
        self._runner = StreamRunner(
            cfg, source=self.source, sink=self.sink, window_sink=build_window_sink(self.sink),
            checkpoint_location=self.checkpoint_location, pipeline_id=pipeline, conn_args=conn_args,
            kafka_options=_kafka_options(self.source) if self.source["type"] == "kafka" else {},
            dead_letter_sink=dlq.sink if dlq is not None else None,
            spool_dir=dlq.spool_dir if dlq is not None else os.path.abspath("."), run_context=rc,
            holder=f"airflow-etl stream {pipeline} {rc.dag_id}.{rc.task_id} {rc.run_id}",
            dead_letter_replay_target=dlq.replay_target() if dlq is not None else "",
        )
        with SparkSessionHook(self.spark_conn_id, self.spark_conf, app_name=f"stream.{pipeline}").session() as spark:
            result = self._runner.run(spark)
        self.log.info("Stream %s: %d batch(es), %d rows in, %d aggregated, %d late, %d window(s) written, watermark "
                      "%s -> %s", pipeline, result["batches"], result["input_rows"], result["aggregated_rows"],
                      result["late_rows"], result["output_rows"], result["watermark"]["before"],
                      result["watermark"]["after"])
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the stream's source in, the sink and the late rows' dead-letter queue out, row accounting
        (:mod:`airflow_etl_provider.hooks.lineage`)."""
        from airflow_etl_provider.hooks import lineage

        dlq = self.late_data.get("dead_letter") if isinstance(self.late_data, Mapping) else None
        return lineage.operator_lineage(getattr(self, "etl_run_summary", None), [lineage.source_dataset(self.source)],
                                        [lineage.target_dataset(self.sink), lineage.dead_letter_dataset(dlq)])

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner.unlock()


def _kafka_options(source: Mapping[str, Any]) -> dict[str, str]:
    """``kafka.*`` reader options from the source's Airflow connection (resolved on the driver)."""
    from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

    config = KafkaBaseHook(kafka_config_id=source.get("conn_id") or "kafka_default")._build_config()
    drop = {"group.id", "auto.offset.reset", "enable.auto.commit", "socket.timeout.ms"}  # Spark manages them
    return {f"kafka.{k}": str(v) for k, v in config.items() if k not in drop}


def _copy(value: Any) -> Any:
    """A mapping as a new ``dict``; anything else as it is (for the validation to refuse by name)."""
    return dict(value) if isinstance(value, Mapping) else value
