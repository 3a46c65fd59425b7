"""DataQualityOperator on the real stack: actions, quarantine accounting, corrupt input, history and
``row_count_change``, the HTML report (rendered by headless Chromium; also on S3) and its extra link."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_etl_provider.core.errors import ConfigError, DataQualityError
from airflow_etl_provider.operators.quality import REPORT_URL_XCOM_KEY, REPORT_XCOM_KEY, DataQualityOperator

pytestmark = [pytest.mark.integration, pytest.mark.spark]

SCHEMA = "id BIGINT, email STRING, amount DOUBLE, status STRING"
BAD = {4: "email", 9: "amount", 15: "status", 22: "email+amount"}  # row id -> what is wrong
RULES = [
    {"type": "not_null", "column": "email"},
    {"type": "range", "column": "amount", "min": 0},
    {"type": "allowed_values", "column": "status", "values": ["new", "paid"]},
    {"type": "unique", "columns": ["id"]},
    {"type": "row_count", "min": 10},
]


@dataclass
class RunStub:
    """The identity of a task run and its XCom pushes: what the operator reads from ``context['ti']``."""

    run_id: str
    dag_id: str = "dq_tests"
    task_id: str = "check"
    try_number: int = 1
    pushed: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _rows(n: int = 40) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(1, n + 1):
        rows.append((i, None if i in (4, 22) else f"u{i}@x.test", -1.0 if i in (9, 22) else float(i),
                     "lost" if i == 15 else ("new" if i % 2 else "paid")))
    return rows


@pytest.fixture
def orders(spark, tmp_path) -> Path:
    path = tmp_path / "orders"
    spark.createDataFrame(_rows(), SCHEMA).coalesce(1).write.parquet(str(path))
    return path


def _letters(root: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for f in sorted(root.rglob("*.jsonl.gz")) for x in gzip.decompress(f.read_bytes()).splitlines()]


def test_quarantine_sends_failing_rows_to_the_dlq_and_the_rest_to_output(spark, orders, tmp_path) -> None:
    out, dlq = tmp_path / "clean", tmp_path / "dlq"
    op = DataQualityOperator(task_id="check", source={"format": "parquet", "path": str(orders)}, rules=RULES,
                             on_failure="quarantine", dead_letter={"type": "file", "path": str(dlq)},
                             output={"format": "parquet", "path": str(out)}, key_columns=["id"])
    result = op.execute(context={})
    assert result["records_read"] == 40
    assert result["records_quarantined"] == 4
    assert result["records_passed"] == 36
    assert result["records_read"] == result["records_passed"] + result["records_quarantined"]
    assert result["status"] == "warn"  # rules failed, their rows were set aside: the task succeeds
    assert sorted(r.id for r in spark.read.parquet(str(out)).collect()) == [i for i in range(1, 41) if i not in BAD]
    letters = _letters(dlq)
    by_id = {e["record"]["id"]: e for e in letters}
    assert set(by_id) == set(BAD)
    assert set(by_id[22]["failed_rules"]) == {"not_null(email)", "range(amount)"}  # every rule the row failed
    assert by_id[15]["failed_rules"] == ["allowed_values(status)"]
    assert {e["stage"] for e in letters} == {"quality"}
    taken = {r["name"]: r.get("action_taken") for r in result["report"]["rules"]}
    assert taken["not_null(email)"] == "quarantined 2 row(s)"


def test_fail_is_the_default_and_rejects_the_batch_whole(spark, orders, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    out = tmp_path / "clean"
    ti = RunStub("fail_run")
    op = DataQualityOperator(task_id="check", source={"format": "parquet", "path": str(orders)}, rules=RULES,
                             output={"format": "parquet", "path": str(out)}, key_columns=["id"])
    with pytest.raises(AirflowFailException) as info:
        op.execute(context={"ti": ti})
    message = str(info.value)
    assert "3 data-quality rule(s) failed on 40 row(s)" in message
    assert "allowed_values(status)" in message and "failed the task" in message
    assert isinstance(info.value.__cause__, DataQualityError)
    assert not out.exists()  # nothing written for the next task
    report = ti.pushed[REPORT_XCOM_KEY]  # the report is in XCom even though the task failed
    assert report["status"] == "fail"
    assert report["accounting"] == {"records_read": 40, "records_passed": 0, "records_quarantined": 0,
                                    "records_failed": 40, "dead_letter_location": None}
    samples = {r["name"]: r["samples"] for r in report["rules"]}
    assert samples["range(amount)"] == [{"id": 9, "amount": -1.0}, {"id": 22, "amount": -1.0}]


def test_warn_logs_and_passes_every_row_on(spark, orders, tmp_path) -> None:
    out = tmp_path / "clean"
    op = DataQualityOperator(task_id="check", source={"format": "parquet", "path": str(orders)}, rules=RULES,
                             on_failure="warn", output={"format": "parquet", "path": str(out)})
    result = op.execute(context={})
    assert result["status"] == "warn" and result["records_passed"] == 40 and result["records_quarantined"] == 0
    assert spark.read.parquet(str(out)).count() == 40


def test_rule_actions_mix_and_a_flood_over_the_threshold_fails(spark, orders, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    rules = [
        {"type": "not_null", "column": "email", "action": "quarantine", "max_failures": 1},  # 2 > 1: fails
        {"type": "allowed_values", "column": "status", "values": ["new", "paid"], "severity": "warn"},
    ]
    op = DataQualityOperator(task_id="check", source={"format": "parquet", "path": str(orders)}, rules=rules,
                             dead_letter={"type": "file", "path": str(tmp_path / "dlq")})
    with pytest.raises(AirflowFailException, match=r"not_null\(email\)"):
        op.execute(context={})
    assert _letters(tmp_path / "dlq") == []  # a rejected batch quarantines nothing


def test_corrupt_csv_rows_are_quarantined_or_fail_the_task(spark, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    src = tmp_path / "in.csv"
    src.write_text("id,email,amount,status\n1,a@x.test,1.0,new\nnot-a-number,b@x.test,2.0,new\n3,c@x.test,3.0,paid\n")
    source = {"format": "csv", "path": str(src), "options": {"header": "true"}, "schema": SCHEMA}
    rules = [{"type": "not_null", "column": "email"}]
    op = DataQualityOperator(task_id="check", source=source, rules=rules,
                             dead_letter={"type": "file", "path": str(tmp_path / "dlq")})
    result = op.execute(context={})
    assert (result["records_read"], result["records_passed"], result["records_quarantined"]) == (3, 2, 1)
    letters = _letters(tmp_path / "dlq")
    assert [e["stage"] for e in letters] == ["parse"] and "not-a-number" in json.dumps(letters[0]["record"])
    no_dlq = DataQualityOperator(task_id="check", source=source, rules=rules)
    with pytest.raises(AirflowFailException, match="could not be parsed"):
        no_dlq.execute(context={})


def test_bad_definitions_fail_at_parse_time_or_before_any_spark_job(spark, orders, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"dead_letter: is required to quarantine rows"):
        DataQualityOperator(task_id="c", source={"format": "parquet", "path": "/x"}, rules=RULES,
                            on_failure="quarantine")
    with pytest.raises(ConfigError, match=r"rules\[0\].*regex|pattern"):
        DataQualityOperator(task_id="c", source={"format": "parquet", "path": "/x"},
                            rules=[{"type": "regex", "column": "email", "pattern": "([a-z"}])
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules:\n  - {type: not_null, column: no_such_column}\n")
    # with a declared schema Spark does not even read a Parquet footer: no job at all may start
    op = DataQualityOperator(task_id="c", source={"format": "parquet", "path": str(orders), "schema": SCHEMA},
                             rules=str(rules_file))
    jobs_before = spark.sparkContext.statusTracker().getJobIdsForGroup()
    with pytest.raises(ConfigError, match="no_such_column"):
        op.execute(context={})
    assert spark.sparkContext.statusTracker().getJobIdsForGroup() == jobs_before


def _history_run(spark, tmp_path: Path, table: str, run_id: str, rows: int, day: int,
                 ti: RunStub | None = None) -> tuple[RunStub, Any]:
    """Run the history-checking operator on ``rows`` rows as ``run_id`` on ``day``: (its ti, its result)."""
    path = tmp_path / f"day{day}"
    spark.createDataFrame(_rows(rows), SCHEMA).coalesce(1).write.mode("overwrite").parquet(str(path))
    op = DataQualityOperator(
        task_id="check", source={"format": "parquet", "path": str(path)},
        rules=[{"type": "row_count_change", "max_change": 0.3, "baseline": "median"},
               {"type": "not_null", "column": "email", "severity": "warn"}],
        history={"conn_id": "postgres_default", "table": table, "window": 3},
    )
    ti = ti or RunStub(run_id)
    logical = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)
    return ti, op.execute(context={"ti": ti, "logical_date": logical})


def test_row_count_change_detects_an_anomaly_from_history(spark, tmp_path, unique) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk.exceptions import AirflowFailException

    table = f"public.dq_hist_{unique}"
    counts = [100, 110, 105, 40, 108]  # day 4 drops by ~62 %
    results, failing_ti = {}, RunStub("run3")
    for day, n in enumerate(counts):
        if day == 3:
            with pytest.raises(AirflowFailException):
                _history_run(spark, tmp_path, table, f"run{day}", n, day, ti=failing_ti)
            continue
        results[day] = _history_run(spark, tmp_path, table, f"run{day}", n, day)
    assert [results[d][1]["status"] for d in (0, 1, 2, 4)] == ["warn"] * 4  # warn: the not_null rule (rows 4, 22)
    pg = PostgresHook()
    day3 = failing_ti.pushed[REPORT_XCOM_KEY]
    change = next(r for r in day3["rules"] if r["type"] == "row_count_change")
    assert change["observed"]["baseline"] == 105 and change["status"] == "fail"  # median of 100, 110, 105
    day4 = next(r for r in results[4][1]["report"]["rules"] if r["type"] == "row_count_change")
    assert day4["observed"]["baseline"] == 105  # window 3: median of 110, 105, 40
    assert pg.get_first(f"select count(distinct run_id) from {table}")[0] == 5
    rows_per_run = pg.get_first(f"select count(*) from {table} where run_id = 'run4'")[0]
    assert rows_per_run == 3  # the run row and one per rule

    # re-running a day with other data replaces its rows instead of adding a sixth run
    ti, again = _history_run(spark, tmp_path, table, "run4", 120, 4)
    assert again["status"] == "warn" and again["records_read"] == 120
    assert pg.get_first(f"select count(*) from {table} where rule_name = '__run__'")[0] == 5
    assert pg.get_first(f"select count(*) from {table} where run_id = 'run4'")[0] == rows_per_run
    assert pg.get_first(f"select row_count from {table} where run_id = 'run4' and rule_name = '__run__'")[0] == 120
    assert pg.get_first(f"select failing_rows from {table} where run_id = 'run0' and rule_name = 'not_null(email)'")[0] == 2
    pg.run(f"drop table {table}")


def test_html_report_renders_in_headless_chromium(spark, orders, tmp_path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert chromium, "chromium is installed by `make system-deps` (apt package chromium)"
    page = tmp_path / "reports" / "orders.html"
    ti = RunStub("html_run")
    rules = [*RULES, {"name": "evil<script>alert(1)</script>", "type": "expression", "expression": "id > 0"}]
    op = DataQualityOperator(task_id="check", source={"format": "parquet", "path": str(orders)}, rules=rules,
                             on_failure="warn", profile=True, report_path=str(page), key_columns=["id"])
    result = op.execute(context={"ti": ti})
    assert result["report_path"] == str(page)
    assert ti.pushed[REPORT_URL_XCOM_KEY] == page.as_uri()
    assert result["report"]["profile"]["columns"]["status"]["top_values"][:2] == [{"value": "paid", "count": 20}, {"value": "new", "count": 19}]
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert '<h2 id="summary">Summary</h2>' in dom
    assert "rows passed" in dom and "allowed_values(status)" in dom
    assert "Column profiles" in dom and "Failing rows per rule" in dom and "<svg" in dom
    assert "<script>alert(1)</script>" not in dom and "evil&lt;script&gt;" in dom  # escaped, not executed
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_html_report_on_s3_is_served_as_html(spark, orders, unique) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket = f"dq-reports-{unique}"
    S3Hook(aws_conn_id="aws_default").create_bucket(bucket_name=bucket)
    ti = RunStub("s3_run")
    op = DataQualityOperator(task_id="check", source={"format": "parquet", "path": str(orders)}, rules=RULES,
                             on_failure="warn", report_path=f"s3://{bucket}/dq/orders.html")
    op.execute(context={"ti": ti})
    url = ti.pushed[REPORT_URL_XCOM_KEY]
    assert f"/{bucket}/dq/orders.html?" in url  # a pre-signed GET: the endpoint has no console
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert "Summary" in response.read().decode()
