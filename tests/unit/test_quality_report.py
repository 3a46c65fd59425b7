"""The HTML report and the failure table (pure rendering), and the DataQualityOperator's parse-time checks."""

from __future__ import annotations

import re

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.report import failure_table, render_html
from airflow_etl_provider.core.rules import parse_rules

REPORT = {
    "status": "fail",
    "row_count": 1000,
    "summary": {"pass": 1, "warn": 0, "fail": 1},
    "spark_queries": 3,
    "run": {"dag_id": "d", "task_id": "t", "run_id": "r1", "try_number": 1},
    "accounting": {"records_read": 1000, "records_passed": 990, "records_quarantined": 10},
    "rules": [
        {"name": "not_null(email)", "type": "not_null", "columns": ["email"], "status": "fail",
         "failing_rows": 10, "failure_ratio": 0.01, "threshold": "no failing rows", "action": "quarantine",
         "action_taken": "quarantined 10 row(s)", "message": "10 of 1000 rows failed (1.00%)",
         "samples": [{"id": 1, "email": None}, {"id": 2, "email": "<img src=x onerror=alert(1)>"}]},
        {"name": "row_count", "type": "row_count", "columns": [], "status": "pass", "failing_rows": None,
         "failure_ratio": None, "threshold": ">= 1", "action": "fail", "message": "1000 rows", "samples": []},
    ],
    "profile": {"columns": {"email": {"type": "string", "null_ratio": 0.01, "approx_distinct": 990,
                                      "min_length": 5, "max_length": 30,
                                      "top_values": [{"value": "a@x", "count": 3}]}}},
}


def test_page_is_self_contained_and_escapes_data() -> None:
    page = render_html(REPORT)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from anywhere
    assert "<svg" in page and 'aria-label="Failing rows per rule"' in page
    assert "Column profiles" in page and "quarantined 10 row(s)" in page
    assert "rows quarantined<b>10</b>" in page
    assert "Data quality: d.t" in page


def test_page_without_rules_or_profile() -> None:
    page = render_html({"status": "pass", "rules": []})
    assert "No rules." in page and "Column profiles" not in page and "No failing rows." in page


def test_failure_table_is_aligned_text() -> None:
    table = failure_table(REPORT["rules"][:1]).splitlines()
    assert table[0].split() == ["rule", "type", "status", "failing", "ratio", "threshold", "taken", "message"]
    assert set(table[1]) <= {"-", " "}
    assert "not_null(email)" in table[2] and "1.00%" in table[2] and "quarantined 10 row(s)" in table[2]


# ------------------------------------------------------------------------ operator, parse time (no I/O)
def _op(**kwargs):
    from airflow_etl_provider.operators.quality import DataQualityOperator

    base = {"task_id": "c", "source": {"format": "parquet", "path": "/data/x"},
            "rules": [{"type": "not_null", "column": "a"}]}
    return DataQualityOperator(**{**base, **kwargs})


def test_operator_validates_everything_at_parse_time() -> None:
    with pytest.raises(ConfigError, match="on_failure: is not a supported action"):
        _op(on_failure="explode")
    with pytest.raises(ConfigError, match="sample_size"):
        _op(sample_size=-1)
    with pytest.raises(ConfigError, match=r"output.path: is required"):
        _op(output={"format": "parquet"})
    with pytest.raises(ConfigError, match=r"output.format"):
        _op(output={"format": "xlsx", "path": "/x"})
    with pytest.raises(ConfigError, match=r"history.table"):
        _op(history={"table": "x; drop table y"})
    with pytest.raises(ConfigError, match=r"history.window"):
        _op(history={"window": 0})
    with pytest.raises(ConfigError, match=r"source.format"):
        _op(source={"format": "excel", "path": "/x"})
    with pytest.raises(ConfigError, match=r"dead_letter: is required to quarantine rows \(rules \['not_null\(a\)'\]\)"):
        _op(rules=[{"type": "not_null", "column": "a", "action": "quarantine"}])
    with pytest.raises(ConfigError, match=r"rules\[row_count\].action.*no rows to quarantine"):
        _op(rules=[{"type": "row_count", "min": 1, "action": "quarantine"}], dead_letter={"type": "file"})
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        _op(rules=[{"type": "nope"}])


def test_templated_and_file_rules_are_left_for_run_time() -> None:
    op = _op(rules="rules/orders.yaml", source={"format": "parquet", "path": "/d/{{ ds }}"},
             output={"format": "parquet", "path": "/o/{{ ds }}"})
    assert op.rules == "rules/orders.yaml" and op.output_config["path"] == "/o/{{ ds }}"
    assert "output_config" in op.template_fields and "rules" in op.template_fields


def test_resolve_action() -> None:
    from airflow_etl_provider.operators.quality import resolve_action

    rules = {r.rule_name: r for r in parse_rules([
        {"type": "not_null", "column": "a"},
        {"type": "not_null", "column": "b", "severity": "warn"},
        {"type": "not_null", "column": "c", "action": "fail"},
        {"type": "row_count", "min": 1},
    ])}
    assert resolve_action(rules["not_null(a)"], "quarantine") == "quarantine"
    assert resolve_action(rules["not_null(b)"], "quarantine") == "warn"
    assert resolve_action(rules["not_null(c)"], "quarantine") == "fail"
    assert resolve_action(rules["row_count"], "quarantine") == "fail"  # no rows to set aside
    assert resolve_action(rules["not_null(a)"], "warn") == "warn"


def test_report_link_is_registered_with_the_provider() -> None:
    from airflow_etl_provider.get_provider_info import get_provider_info
    from airflow_etl_provider.operators.quality import DataQualityOperator, DataQualityReportLink

    assert "airflow_etl_provider.operators.quality.DataQualityReportLink" in get_provider_info()["extra-links"]
    assert any(isinstance(link, DataQualityReportLink) for link in DataQualityOperator.operator_extra_links)
    assert DataQualityReportLink().xcom_key == "_link_DataQualityReportLink"
