"""ResilientSparkLoadOperator validates its configuration at parse time, without I/O."""

from __future__ import annotations

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

SOURCE = {"format": "parquet", "path": "/data/orders/"}
TARGET = {"type": "postgres", "conn_id": "postgres_default", "table": "public.orders", "mode": "upsert",
          "keys": ["order_id"]}


def _op(**kwargs):
    return ResilientSparkLoadOperator(task_id="load", **{"source": SOURCE, "target": TARGET, **kwargs})


def test_a_valid_operator_builds_and_parses_the_seed_blocks() -> None:
    op = _op(retry={"strategy": "exponential-backoff", "maxAttempts": 5, "initialDelayMs": 1000,
                    "maxDelayMs": 60000, "backoffMultiplier": 2.0, "jitter": True},
             circuit_breaker={"enabled": True, "failureThreshold": 5, "resetTimeoutSeconds": 60,
                              "halfOpenMaxAttempts": 1})
    assert op.etl_retry_policy.max_attempts == 5 and op.etl_retry_policy.jitter == "full"
    assert op.breaker_policy is not None and op.breaker_policy.failure_threshold == 5
    assert op.dead_letter == {"type": "file"}  # the embedded default


def test_error_handling_block_fills_what_is_not_given() -> None:
    op = _op(error_handling={"errorHandling": {
        "retry": {"maxAttempts": 3, "delaySeconds": 5},
        "circuitBreaker": {"enabled": False},
        "deadLetterQueue": {"enabled": True, "type": "kafka",
                            "config": {"bootstrap.servers": "127.0.0.1:9092", "topic": "orders.dlq"}}}})
    assert op.etl_retry_policy.strategy == "fixed" and op.etl_retry_policy.max_attempts == 3
    assert op.breaker_policy is None
    assert op.dead_letter is not None and op.dead_letter["topic"] == "orders.dlq"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"target": {**TARGET, "mode": "merge"}}, "target.mode"),
    ({"target": {**TARGET, "keys": []}}, "target.keys"),
    ({"target": {**TARGET, "table": "public.orders; drop table x"}}, "target.table"),
    ({"target": {**TARGET, "keys": ["id\"--"]}}, "target.keys"),
    ({"target": {"type": "mysql"}}, "target.type"),
    ({"source": {"format": "xls", "path": "/x"}}, "source.format"),
    ({"source": {"format": "csv"}}, "source.path"),
    ({"retry": {"jitter": "sometimes"}}, "retry.jitter"),
    ({"retry": {"maxAttempts": 0}}, "retry"),
    ({"dead_letter": {"type": "rabbit"}}, "dead_letter.type"),
    ({"dead_letter": {"type": "kafka"}}, "dead_letter.topic"),
    ({"quality_rules": [{"type": "not_null"}]}, "rules[0]"),
    ({"quality_rules": [{"type": "range", "column": "id", "mostly": 2}]}, "rules[0]"),
])
def test_bad_configuration_fails_at_parse_time_naming_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError) as info:
        _op(**kwargs)
    assert str(info.value).startswith(field), str(info.value)


def test_templated_values_are_validated_at_run_time_not_parse_time() -> None:
    op = _op(source={"format": "parquet", "path": "/data/{{ ds }}/"},
             target={**TARGET, "table": "{{ params.table }}"})
    assert "source" in op.template_fields and "target" in op.template_fields
