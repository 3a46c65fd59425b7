"""A task run's observation with the real Guard and breaker (in-memory store): retries and breaker transitions
become metrics and the summary the circuit_opened alert reads; the deployment-wide backend configuration."""

from __future__ import annotations

import pytest

from airflow_etl_provider.core.circuit_breaker import InMemoryBreakerStore, SharedCircuitBreaker
from airflow_etl_provider.core.errors import CircuitOpenError, ConfigError, TransientError
from airflow_etl_provider.core.guard import Guard
from airflow_etl_provider.core.metrics import BackendSpec, InMemoryReporter
from airflow_etl_provider.core.run_summary import alert_reason
from airflow_etl_provider.hooks.metrics import build_reporter, configured_backends
from airflow_etl_provider.hooks.observability import observe


class Task:
    dag_id, task_id, pipeline_id = "orders_dag", "load_orders", "orders"


class ConnectionLost(TransientError):
    pass


def test_retries_and_the_breaker_opening_are_counted_and_alertable() -> None:
    breaker = SharedCircuitBreaker(
        "pg_main", {"failure_threshold": 3, "reset_timeout_s": 60}, InMemoryBreakerStore()
    )
    guard = Guard({"max_attempts": 5, "initial_delay_s": 0, "max_delay_s": 0}, breaker, sleep=lambda _: None)
    memory, task = InMemoryReporter(), Task()

    def down() -> None:
        raise ConnectionLost("server closed the connection unexpectedly")

    with pytest.raises(CircuitOpenError):
        with observe(task, {}, "load", reporters=[memory]) as obs:
            obs.watch_guard(guard)
            guard.call(down)
    points = {(p.name, tuple(sorted(p.labels.items()))): p.value for p in memory.points}
    base = (("dag_id", "orders_dag"), ("pipeline", "orders"), ("task_id", "load_orders"))

    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(base + tuple(labels.items())))

    assert points[key("etl_attempts")] == guard.stats.attempts == 3
    assert points[key("etl_retries", error_class="ConnectionLost")] == len(guard.stats.retry_events) > 0
    transition = key("etl_circuit_transitions", breaker="pg_main", from_state="closed", to_state="open")
    assert points[transition] == 1
    summary = task.etl_run_summary  # type: ignore[attr-defined]
    assert summary["outcome"] == "failed" and summary["circuit_transitions"][0]["to"] == "open"
    assert alert_reason(summary, "circuit_opened").startswith("circuit breaker pg_main opened: 3 consecutive")
    assert [d["backend"] for d in summary["metrics"]] == ["memory"]


def test_backends_from_the_operator_or_the_deployment(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW__ETL_PROVIDER__METRICS_BACKENDS", raising=False)
    assert configured_backends(None) == (BackendSpec("airflow_stats"),)
    monkeypatch.setenv("AIRFLOW__ETL_PROVIDER__METRICS_BACKENDS", "pushgateway, cloudwatch")
    assert configured_backends(None) == (BackendSpec("pushgateway"), BackendSpec("cloudwatch"))
    assert configured_backends([]) == ()  # the operator's own list wins
    monkeypatch.setenv("AIRFLOW__ETL_PROVIDER__METRICS_BACKENDS", "prometheus")
    with pytest.raises(ConfigError) as err:
        configured_backends(None)
    assert err.value.path == "[etl_provider] metrics_backends[0]"


def test_pushgateway_url_comes_from_the_config_or_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW__ETL_PROVIDER__PUSHGATEWAY_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_ETL_PUSHGATEWAY_URL", raising=False)
    with pytest.raises(ConfigError, match="pushgateway"):
        build_reporter(BackendSpec("pushgateway"))
    monkeypatch.setenv("AIRFLOW_ETL_PUSHGATEWAY_URL", "http://127.0.0.1:1/")
    assert build_reporter(BackendSpec("pushgateway")).url == "http://127.0.0.1:1"  # type: ignore[attr-defined]
    monkeypatch.setenv("AIRFLOW__ETL_PROVIDER__PUSHGATEWAY_URL", "http://127.0.0.1:2")
    assert build_reporter(BackendSpec("pushgateway")).url == "http://127.0.0.1:2"  # type: ignore[attr-defined]


def test_operators_refuse_a_bad_metrics_list_at_parse_time() -> None:
    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    with pytest.raises(ConfigError) as err:
        ResilientSparkLoadOperator(
            task_id="t",
            source={"format": "parquet", "path": "/x"},
            target={"type": "parquet", "path": "/y"},
            metrics=[{"type": "pushgateway", "url": "localhost:9091"}],
        )
    assert err.value.path == "metrics[0].url"


def test_a_bad_emission_timeout_is_a_config_error_and_a_bad_exporter_only_a_warning(
    monkeypatch, caplog
) -> None:
    from airflow_etl_provider.hooks.observability import TaskObservation

    monkeypatch.setenv("AIRFLOW__ETL_PROVIDER__METRICS_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError) as err:
        TaskObservation(Task(), {}, "load", reporters=[])
    assert err.value.path == "[etl_provider] metrics_timeout_s"
    monkeypatch.setenv("AIRFLOW__ETL_PROVIDER__METRICS_TIMEOUT_S", "2.5")
    assert TaskObservation(Task(), {}, "load", reporters=[]).timeout_s == 2.5

    from opentelemetry import trace

    monkeypatch.setattr(
        trace, "_TRACER_PROVIDER", None
    )  # as in a fresh task process: no provider installed yet
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    task = Task()
    with observe(task, {}, "load", reporters=[]) as obs:
        obs.done({"records_read": 1, "records_loaded": 1, "records_dead_lettered": 0, "errors": {}})
    assert task.etl_run_summary["outcome"] == "success"  # type: ignore[attr-defined]
    assert any("OTEL_TRACES_EXPORTER" in r.getMessage() for r in caplog.records)
