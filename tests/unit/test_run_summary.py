"""The notifiers' pure part: conditions and renderings of a run summary."""

from __future__ import annotations

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.run_summary import (
    alert_reason,
    payload,
    render_html,
    render_markdown,
    validate_condition,
)

SUMMARY = {
    "kind": "load",
    "outcome": "failed",
    "dag_id": "d",
    "task_id": "t",
    "run_id": "r1",
    "try_number": 2,
    "error": "AirflowRescheduleException: ... (caused by CircuitOpenError: circuit pg open)",
    "rows_read": 10,
    "rows_loaded": 8,
    "rows_dead_lettered": 2,
    "rows_quarantined": 0,
    "late_rows": 0,
    "failed_rules": {},
    "top_errors": [{"error_class": "NotNullViolation", "count": 2, "example": "<b>null</b>"}],
    "dead_letter_location": "s3://dlq/x",
    "circuit_breaker": "pg",
    "circuit_state": "open",
    "circuit_transitions": [{"from": "closed", "to": "open", "reason": "5 consecutive failures"}],
    "ti_url": "http://127.0.0.1:8080/dags/d/runs/r1/tasks/t?try_number=2",
}


def test_conditions() -> None:
    assert alert_reason(SUMMARY, "circuit_opened") == "circuit breaker pg opened: 5 consecutive failures"
    assert alert_reason(SUMMARY, "dead_letters_above", 1) == "2 row(s) dead-lettered (threshold 1)"
    assert alert_reason(SUMMARY, "dead_letters_above", 2) is None
    assert alert_reason(SUMMARY, "quality_failed") is None
    assert (
        alert_reason({**SUMMARY, "failed_rules": {"r": 3}}, "quality_failed")
        == "data quality: 1 rule(s) failed"
    )
    assert alert_reason({**SUMMARY, "late_rows": 5}, "late_rows_above", 4) == "5 late row(s) (threshold 4)"
    assert alert_reason(SUMMARY, "always") == "task failed"


@pytest.mark.parametrize(
    ("when", "threshold", "field"),
    [
        ("often", None, "when"),
        ("late_rows_above", None, "threshold"),
        ("dead_letters_above", -1, "threshold"),
    ],
)
def test_bad_conditions(when: str, threshold: int | None, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_condition(when, threshold)
    assert err.value.path == field


def test_renderings_carry_the_summary_and_escape_html() -> None:
    html = render_html(SUMMARY, "x")
    assert "&lt;b&gt;null&lt;/b&gt;" in html and "<b>null</b>" not in html
    assert f'<a href="{SUMMARY["ti_url"]}">' in html
    md = render_markdown(SUMMARY, "x")
    assert f"<{SUMMARY['ti_url']}|open in Airflow>" in md
    body = payload(SUMMARY, "x")
    assert body["summary"] == SUMMARY and "read=10 loaded=8 dead-lettered=2" in body["text"]
    assert "s3://dlq/x" in body["text"]
