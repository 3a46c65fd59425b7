"""The streaming operator's metrics on a real stream (Kafka -> Spark -> PostgreSQL, late rows to a file DLQ),
read back from the Pushgateway, and its run summary for the late-rows alert."""

from __future__ import annotations

import os

import pytest

from airflow_etl_provider.core.run_summary import alert_reason
from tests.integration.test_metrics_backends import _group, _series
from tests.integration.test_streaming_operator import _event, _operator, _produce

pytestmark = [pytest.mark.integration, pytest.mark.spark]
PUSHGATEWAY = os.environ.get("AIRFLOW_ETL_PUSHGATEWAY_URL", "http://127.0.0.1:49091")


def test_stream_metrics_are_readable_from_the_pushgateway(spark, kafka_bootstrap, unique, tmp_path) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from confluent_kafka.admin import AdminClient, NewTopic
    from prometheus_client import delete_from_gateway

    topic, table = f"stream-metrics-{unique}", f"public.stream_metrics_{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    window = {"type": "tumbling", "duration": "5 minutes"}
    _produce(
        kafka_bootstrap, topic, [_event(i, "ab"[i % 2], m, "1.00") for i, m in enumerate([3, 1, 7, 12, 24])]
    )
    _operator(topic, tmp_path, table, window, metrics=["pushgateway"]).execute(context={})
    # after run 1 the watermark is 14 minutes: the events at 2 and 8 minutes are late in run 2
    _produce(
        kafka_bootstrap,
        topic,
        [_event(100 + i, "ab"[i % 2], m, "2.00") for i, m in enumerate([2, 8, 27, 31])],
    )
    op = _operator(topic, tmp_path, table, window, metrics=["pushgateway"])
    result = op.execute(context={})
    PostgresHook(postgres_conn_id="postgres_default").run(f"drop table if exists {table}")

    summary = op.etl_run_summary
    group = _group(PUSHGATEWAY, summary["dag_id"], summary["task_id"])
    pipeline = (("pipeline", summary["pipeline"]),)
    assert _series(group, "etl_rows_read") == {pipeline: float(result["input_rows"])}
    assert _series(group, "etl_late_rows") == {pipeline: float(result["late_rows"])}
    assert result["late_rows"] > 0
    assert _series(group, "etl_rows_dead_lettered") == {
        (("error_class", "LateRow"), ("pipeline", summary["pipeline"]), ("stage", "late_data")): float(
            result["late_rows"]
        )
    }
    assert _series(group, "etl_stream_batches") == {pipeline: float(result["batches"])}
    assert _series(group, "etl_watermark_lag_seconds") == {pipeline: float(result["watermark_lag_s"])}
    batch_sum = _series(group, "etl_stream_batch_duration_seconds")  # a summary: its _sum
    assert batch_sum == {pipeline: pytest.approx(sum(result["batch_durations_s"]))}
    assert alert_reason(summary, "late_rows_above", result["late_rows"] - 1) is not None
    assert alert_reason(summary, "late_rows_above", result["late_rows"]) is None
    delete_from_gateway(
        PUSHGATEWAY,
        job="airflow_etl",
        grouping_key={"dag_id": summary["dag_id"], "task_id": summary["task_id"]},
    )
