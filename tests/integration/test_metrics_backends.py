"""The metrics backends against real services: the stack's Pushgateway, moto's standalone server (CloudWatch on
the S3 port), a real StatsD listener behind Airflow's Stats; a Pushgateway that is down or never answers."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from urllib.request import urlopen

import pytest

from airflow_etl_provider.core.metrics import MetricsRecorder, emit_all
from airflow_etl_provider.hooks.metrics import (
    AirflowStatsReporter,
    CloudWatchReporter,
    PushgatewayReporter,
    delete_stale_groups,
    pushgateway_groups,
)

PUSHGATEWAY = os.environ.get("AIRFLOW_ETL_PUSHGATEWAY_URL", "http://127.0.0.1:49091")


def _group(url: str, dag_id: str, task_id: str) -> dict:
    with urlopen(f"{url}/api/v1/metrics", timeout=5) as resp:
        body = json.load(resp)
    found = [
        g
        for g in body["data"]
        if g["labels"].get("dag_id") == dag_id and g["labels"].get("task_id") == task_id
    ]
    assert len(found) == 1, found
    return found[0]


def _series(group: dict, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    family = group.get(name)
    if family is None:
        return {}
    out = {}
    for metric in family["metrics"]:
        labels = tuple(
            sorted(
                (k, v)
                for k, v in metric["labels"].items()
                if k not in ("job", "dag_id", "task_id", "instance")
            )
        )
        out[labels] = float(metric["value"]) if "value" in metric else float(metric["sum"])
    return out


@pytest.fixture
def closed_port() -> int:
    """A port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A socket that accepts connections (the kernel completes the handshake) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def test_pushgateway_push_is_readable_and_each_run_replaces_the_group(unique) -> None:
    dag_id, task_id = f"dag_{unique}", "load"
    first = MetricsRecorder(dag_id, task_id, "orders")
    first.add("etl_rows_read", 120)
    first.add("etl_rows_dead_lettered", 20, stage="load", error_class="NotNullViolation")
    first.add("etl_stage_duration_seconds", 1.25, stage="merge", outcome="ok")
    where = PushgatewayReporter(PUSHGATEWAY).emit(first.points)
    assert where.endswith(f"/metrics/job/airflow_etl/dag_id/{dag_id}/task_id/{task_id}")
    group = _group(PUSHGATEWAY, dag_id, task_id)
    assert _series(group, "etl_rows_read") == {(("pipeline", "orders"),): first.value("etl_rows_read")}
    assert _series(group, "etl_rows_dead_lettered") == {
        (("error_class", "NotNullViolation"), ("pipeline", "orders"), ("stage", "load")): 20.0
    }
    assert _series(group, "etl_stage_duration_seconds") == {
        (("outcome", "ok"), ("pipeline", "orders"), ("stage", "merge")): 1.25
    }

    second = MetricsRecorder(dag_id, task_id, "orders")
    second.add("etl_rows_read", 7)
    PushgatewayReporter(PUSHGATEWAY).emit(second.points)
    group = _group(PUSHGATEWAY, dag_id, task_id)
    assert _series(group, "etl_rows_read") == {(("pipeline", "orders"),): 7.0}
    assert _series(group, "etl_rows_dead_lettered") == {}  # the last run's series only: no stale series

    # stale-group policy: groups older than the limit are deleted, younger ones kept
    pushed_at = next(
        g["push_time_seconds"] for g in pushgateway_groups(PUSHGATEWAY) if g["labels"].get("dag_id") == dag_id
    )
    assert delete_stale_groups(PUSHGATEWAY, older_than_s=3600, now=pushed_at + 10) == []
    deleted = delete_stale_groups(PUSHGATEWAY, older_than_s=3600, now=pushed_at + 7200)
    assert {"dag_id": dag_id, "task_id": task_id} in deleted
    assert not [g for g in pushgateway_groups(PUSHGATEWAY) if g["labels"].get("dag_id") == dag_id]


def test_pushgateway_down_costs_one_warning(closed_port, caplog) -> None:
    rec = MetricsRecorder("d", "t", "p")
    rec.add("etl_rows_read", 1)
    warnings: list[str] = []
    (delivery,) = emit_all(
        [PushgatewayReporter(f"http://127.0.0.1:{closed_port}", timeout_s=1)],
        rec.points,
        timeout_s=5,
        warn=warnings.append,
    )
    assert not delivery.ok
    assert "Connection refused" in delivery.detail
    assert len(warnings) == 1


def test_pushgateway_that_never_answers_is_given_up_within_the_bound(black_hole) -> None:
    rec = MetricsRecorder("d", "t", "p")
    rec.add("etl_rows_read", 1)
    warnings: list[str] = []
    url = f"http://127.0.0.1:{black_hole}"
    # the push's own socket timeout fires first ...
    (delivery,) = emit_all(
        [PushgatewayReporter(url, timeout_s=1)], rec.points, timeout_s=10, warn=warnings.append
    )
    assert not delivery.ok and "timed out" in delivery.detail
    # ... and with a long socket timeout the emission's deadline still ends the wait
    (delivery,) = emit_all(
        [PushgatewayReporter(url, timeout_s=60)], rec.points, timeout_s=1, warn=warnings.append
    )
    assert delivery.detail == "timed out after 1 s"
    assert len(warnings) == 2


def test_cloudwatch_through_the_aws_connection_on_moto_server(unique) -> None:
    """1,200 series and 400 observations of one timing: 1,203 data, more than one request, all readable."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    rec = MetricsRecorder(f"dag_{unique}", "load", "orders")
    for i in range(1200):
        rec.add("etl_rule_failing_rows", i, rule=f"rule_{i:04d}", status="fail")
    observations = [i / 100 for i in range(400)]
    for value in observations:
        rec.add("etl_stream_batch_duration_seconds", value)
    namespace = f"AirflowETL/{unique}"
    where = CloudWatchReporter(conn_id="aws_default", namespace=namespace).emit(rec.points)
    assert "2 request(s)" in where

    client = AwsBaseHook(aws_conn_id="aws_default", client_type="cloudwatch").get_conn()
    names: list[tuple[str, tuple]] = []
    for page in client.get_paginator("list_metrics").paginate(Namespace=namespace):
        names += [
            (m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
            for m in page["Metrics"]
        ]
    assert len(set(names)) == 1201
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    stats = client.get_metric_statistics(
        Namespace=namespace,
        MetricName="etl_stream_batch_duration_seconds",
        Dimensions=[{"Name": k, "Value": v} for k, v in rec.base.items()],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=3600,
        Statistics=["SampleCount", "Sum"],
    )
    (point,) = stats["Datapoints"]
    assert point["SampleCount"] == len(observations)
    assert point["Sum"] == pytest.approx(sum(observations))


def test_airflow_stats_reaches_a_real_statsd_listener(monkeypatch) -> None:
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    from airflow.sdk._shared.observability.metrics import stats as shared_stats
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

    saved = (shared_stats._factory, shared_stats._export_legacy_names)  # restored below: Airflow's own Stats
    stats.initialize(factory=get_stats_factory(), export_legacy_names=False)
    try:
        rec = MetricsRecorder("dag", "task", "orders")
        rec.add("etl_rows_read", 42)
        rec.add("etl_watermark_lag_seconds", 3.5)
        rec.add("etl_stream_batch_duration_seconds", 0.25)
        where = AirflowStatsReporter().emit(rec.points)
        assert "[metrics] statsd_on" in where
        packets = {sock.recv(4096).decode() for _ in range(3)}
    finally:
        stats.initialize(factory=saved[0] or NoStatsLogger, export_legacy_names=saved[1])
        sock.close()
    parsed = set()
    for packet in packets:
        name, _, rest = packet.partition(":")
        value, _, kind = rest.partition("|")
        parsed.add((name, float(value), kind))
    assert parsed == {
        ("airflow.etl.rows_read", 42.0, "c"),
        ("airflow.etl.watermark_lag_seconds", 3.5, "g"),
        ("airflow.etl.stream_batch_duration_seconds", 0.25 * 1000, "ms"),  # StatsD timings are milliseconds
    }


def test_a_task_with_its_pushgateway_gone_succeeds_with_one_warning(
    spark, tmp_path, black_hole, caplog
) -> None:
    """The load operator end to end: the metrics backend never answers; the task's result is unchanged."""
    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    src = tmp_path / "in.csv"
    src.write_text("id,name\n1,a\n2,b\n3,c\n")
    op = ResilientSparkLoadOperator(
        task_id="load_parquet",
        source={"format": "csv", "path": str(src), "options": {"header": "true"}},
        target={"type": "parquet", "path": str(tmp_path / "out"), "mode": "overwrite"},
        circuit_breaker=None,
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        metrics=[{"type": "pushgateway", "url": f"http://127.0.0.1:{black_hole}", "timeout_s": 1}],
    )
    with caplog.at_level(logging.WARNING):
        result = op.execute(context={})
    assert result["records_read"] == result["records_loaded"] == 3
    warned = [r for r in caplog.records if "metrics backend pushgateway" in r.getMessage()]
    assert len(warned) == 1
    (delivery,) = op.etl_run_summary["metrics"]
    assert delivery["backend"] == "pushgateway" and delivery["ok"] is False
    assert "timed out" in delivery["detail"]


def test_a_task_run_is_readable_from_the_pushgateway(spark, tmp_path, unique) -> None:
    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    src = tmp_path / "in.csv"
    src.write_text("id,name\n1,a\n2,b\nx\n")
    op = ResilientSparkLoadOperator(
        task_id=f"load_{unique}",
        source={
            "format": "csv",
            "path": str(src),
            "options": {"header": "true"},
            "schema": "id INT, name STRING",
        },
        target={"type": "parquet", "path": str(tmp_path / "out")},
        circuit_breaker=None,
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        metrics=["pushgateway"],
    )
    result = op.execute(context={})
    dag_id = op.etl_run_summary["dag_id"]
    group = _group(PUSHGATEWAY, dag_id, f"load_{unique}")
    pipeline = (("pipeline", op.etl_run_summary["pipeline"]),)
    assert _series(group, "etl_rows_read") == {pipeline: float(result["records_read"])}
    assert _series(group, "etl_rows_loaded") == {pipeline: float(result["records_loaded"])}
    dead = _series(group, "etl_rows_dead_lettered")
    assert sum(dead.values()) == result["records_dead_lettered"] > 0
    stages = {dict(k)["stage"] for k in _series(group, "etl_stage_duration_seconds")}
    assert {"read", "load", "dead_letter"} <= stages
    assert op.etl_run_summary["metrics"][0]["ok"] is True
    from prometheus_client import delete_from_gateway

    delete_from_gateway(
        PUSHGATEWAY, job="airflow_etl", grouping_key={"dag_id": dag_id, "task_id": f"load_{unique}"}
    )


def test_cli_deletes_stale_groups(unique, capsys) -> None:
    from airflow_etl_provider.cli import main

    job = f"etl_cli_{unique}"
    rec = MetricsRecorder(f"dag_{unique}", "old_task", "p")
    rec.add("etl_rows_read", 1)
    PushgatewayReporter(PUSHGATEWAY, job=job).emit(rec.points)
    assert main(["metrics", "delete-stale", "--url", PUSHGATEWAY, "--older-than", "1d", "--job", job]) == 0
    assert [g for g in pushgateway_groups(PUSHGATEWAY) if g["labels"].get("job") == job]  # younger: kept
    assert main(["metrics", "delete-stale", "--url", PUSHGATEWAY, "--older-than", "0s", "--job", job]) == 0
    assert f"deleted group dag_id=dag_{unique}, task_id=old_task" in capsys.readouterr().out
    assert not [g for g in pushgateway_groups(PUSHGATEWAY) if g["labels"].get("job") == job]
