"""The data-quality engine (hooks/quality.py) on real Spark, cross-checked against PostgreSQL.

The same small dataset goes into a Spark DataFrame and a PostgreSQL table; every rule's count from the
engine must equal the count an independent SQL query computes in PostgreSQL (regexes are chosen valid
in both Java and POSIX). The date format, whose parsing differs between the engines, uses a Python oracle.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.rules import FORMAT_REGEXES, parse_rules
from airflow_etl_provider.hooks.quality import ERROR_COLUMN, FAILED_RULES_COLUMN, evaluate, split_rows

pytestmark = [pytest.mark.integration, pytest.mark.spark]

BASE = datetime(2024, 5, 1, tzinfo=UTC)
COLUMNS = ("id", "email", "region", "age", "code", "status", "name", "amount", "ordered_at", "shipped_at", "d",
           "uid", "num")
SPARK_SCHEMA = (
    "id INT, email STRING, region STRING, age INT, code STRING, status STRING, name STRING, amount DOUBLE, "
    "ordered_at TIMESTAMP, shipped_at TIMESTAMP, d STRING, uid STRING, num STRING"
)
PG_DDL = (
    "(id int, email text, region text, age int, code text, status text, name text, amount double precision, "
    "ordered_at timestamptz, shipped_at timestamptz, d text, uid text, num text)"
)
BAD_DATES = {10: "2024-02-30", 20: "2024/03/05", 30: "hello", 40: "2024-13-01", 50: None}
CODE_RE = "^[A-Z]{2}-[0-9]{3}$"


def make_rows() -> list[tuple[Any, ...]]:
    rows = []
    for i in range(1, 61):
        amount = round(i * 1.5 - 10, 2)
        ordered_at = BASE + timedelta(hours=i)
        rows.append((
            i - 1 if i % 17 == 0 else i,  # ids 16, 33, 50 appear twice
            None if i % 11 == 0 else ("bad-email" if i % 7 == 0 else f"user{i}@example.com"),
            None if i % 13 == 0 else ("eu", "us", "apac")[i % 3],
            None if i % 19 == 0 else i * 3 - 20,
            None if i % 23 == 0 else (f"AB-{i:03d}" if i % 5 else f"ab-{i}"),
            ("new", "paid", "shipped", "lost")[i % 4] if i % 29 else None,
            "x" * (i % 13),
            amount,
            ordered_at,
            None if i % 9 == 0 else ordered_at + timedelta(hours=5 - i % 8),
            BAD_DATES.get(i, f"2024-03-{i % 28 + 1:02d}"),
            "not-a-uuid" if i % 12 == 0 else str(uuid.UUID(int=i * 7919)),
            "1.2.3" if i % 8 == 0 else str(amount),
        ))
    return rows


ROWS = make_rows()

RULES: list[dict[str, Any]] = [
    {"type": "not_null", "column": "email"},
    {"type": "not_null", "columns": ["email", "region"], "name": "email_and_region"},
    {"type": "unique", "column": "id"},
    {"type": "unique", "columns": ["region", "status"], "name": "region_status_unique", "severity": "warn"},
    {"type": "unique", "columns": ["status", "region"], "name": "same_key_set"},
    {"type": "range", "column": "age", "min": 0, "max": 120, "max_inclusive": False},
    {"type": "range", "column": "amount", "min": 0, "min_inclusive": False, "mostly": 0.5},
    {"type": "regex", "column": "code", "pattern": CODE_RE},
    {"type": "format", "column": "email", "format": "email"},
    {"type": "format", "column": "uid", "format": "uuid"},
    {"type": "format", "column": "num", "format": "numeric"},
    {"type": "format", "column": "d", "format": "date", "pattern": "yyyy-MM-dd"},
    {"type": "allowed_values", "column": "status", "values": ["new", "paid", "shipped"]},
    {"type": "length", "column": "name", "min": 2, "max": 10},
    {"type": "expression", "expression": "shipped_at >= ordered_at", "name": "shipped_after_order",
     "columns": ["ordered_at", "shipped_at"]},
]

# rule name -> SQL over the PostgreSQL table {t}: the number of failing rows.
ORACLE = {
    "not_null(email)": "SELECT count(*) FROM {t} WHERE email IS NULL",
    "email_and_region": "SELECT count(*) FROM {t} WHERE email IS NULL OR region IS NULL",
    "unique(id)": "SELECT coalesce(sum(n), 0) FROM (SELECT count(*) n FROM {t} WHERE id IS NOT NULL "
                  "GROUP BY id HAVING count(*) > 1) g",
    "region_status_unique": "SELECT coalesce(sum(n), 0) FROM (SELECT count(*) n FROM {t} WHERE region IS NOT NULL "
                            "AND status IS NOT NULL GROUP BY region, status HAVING count(*) > 1) g",
    "range(age)": "SELECT count(*) FROM {t} WHERE age IS NOT NULL AND NOT (age >= 0 AND age < 120)",
    "range(amount)": "SELECT count(*) FROM {t} WHERE amount IS NOT NULL AND NOT (amount > 0)",
    "regex(code)": f"SELECT count(*) FROM {{t}} WHERE code IS NOT NULL AND code !~ '{CODE_RE}'",
    "format(email)": f"SELECT count(*) FROM {{t}} WHERE email IS NOT NULL AND email !~ '{FORMAT_REGEXES['email']}'",
    "format(uid)": f"SELECT count(*) FROM {{t}} WHERE uid IS NOT NULL AND uid !~ '{FORMAT_REGEXES['uuid']}'",
    "format(num)": f"SELECT count(*) FROM {{t}} WHERE num IS NOT NULL AND num !~ '{FORMAT_REGEXES['numeric']}'",
    "allowed_values(status)": "SELECT count(*) FROM {t} WHERE status IS NOT NULL "
                              "AND status NOT IN ('new', 'paid', 'shipped')",
    "length(name)": "SELECT count(*) FROM {t} WHERE name IS NOT NULL AND NOT char_length(name) BETWEEN 2 AND 10",
    "shipped_after_order": "SELECT count(*) FROM {t} WHERE NOT (shipped_at >= ordered_at)",  # NULL -> not counted
}
ORACLE["same_key_set"] = ORACLE["region_status_unique"]


def python_date_oracle(value: str | None) -> bool:
    """Whether the ``format(d)`` rule fails for ``value`` (strict yyyy-MM-dd; NULL passes)."""
    if value is None:
        return False
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return True
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return True
    return False


@pytest.fixture(scope="module")
def data(spark):  # type: ignore[no-untyped-def]
    df = spark.createDataFrame(ROWS, SPARK_SCHEMA).cache()
    df.count()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def pg_table() -> Iterator[tuple[Any, str]]:
    """The dataset in a PostgreSQL table; yields (cursor, table name)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id="postgres_default").get_conn()
    conn.autocommit = True
    cur = conn.cursor()
    table = f"dq_oracle_{uuid.uuid4().hex[:10]}"
    cur.execute(f"CREATE TABLE {table} {PG_DDL}")
    cur.executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(COLUMNS))})", ROWS)
    yield cur, table
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()


def scalar(cur: Any, sql: str) -> Any:
    cur.execute(sql)
    return cur.fetchone()[0]


# ---------------------------------------------------------------------------- counts vs PostgreSQL


def test_every_rule_type_matches_the_postgres_oracle(data, pg_table) -> None:  # type: ignore[no-untyped-def]
    cur, table = pg_table
    reference = BASE + timedelta(hours=61)  # newest ordered_at is BASE + 60 h
    rules = [
        *RULES,
        {"type": "row_count", "min": 10, "max": 59},
        {"type": "freshness", "column": "ordered_at", "max_age": "2h"},
        {"type": "freshness", "column": "ordered_at", "max_age": "30m", "name": "stale"},
        {"type": "schema", "columns": {"id": "int", "email": "string", "amount": "double", "missing_col": "int"}},
        {"type": "schema", "columns": {"id": "integer", "ordered_at": "timestamp"}, "name": "schema_ok"},
        {"type": "sql", "query": "SELECT COUNT(*) FROM data WHERE amount < 0", "equal_to": 0, "name": "no_negative"},
        {"type": "sql", "query": "SELECT COUNT(DISTINCT region) FROM q", "view": "q", "geq_to": 3, "name": "regions"},
        {"type": "row_count_change", "max_change": 0.1, "history": [50]},
    ]
    report = evaluate(
        data, {"rules": rules, "column_mapping": {
            "age": {"null_check": {"equal_to": 0}, "max": {"leq_to": 200}},
            "id": {"unique_check": {"equal_to": 0}},
            "region": {"distinct_check": {"equal_to": 3}},
            "amount": {"min": {"geq_to": -10}},
        }, "checks": {"has_rows": {"check_statement": "COUNT(*) > 0"},
                      "code_upper": {"check_statement": "code = upper(code)"}}},
        key_columns=["id"], reference_time=reference,
    )
    total = scalar(cur, f"SELECT count(*) FROM {table}")
    assert report.row_count == total == 60

    # counted rules: identical counts
    for name, sql in ORACLE.items():
        expected = int(scalar(cur, sql.replace("{t}", table)))
        assert report[name].failing_rows == expected, name
        assert report[name].failure_ratio == pytest.approx(expected / total)
    assert report["format(d)"].failing_rows == sum(python_date_oracle(r[10]) for r in ROWS) == 4

    # every counted rule has failures in this dataset, so every status is known
    assert report["region_status_unique"].status == "warn"  # severity warn
    assert report["range(amount)"].status == "pass"  # mostly 0.5
    assert report["range(age)"].status == "fail"

    # dataset rules
    assert report["row_count"].status == "fail" and report["row_count"].observed == 60
    newest = scalar(cur, f"SELECT max(ordered_at) FROM {table}")
    assert report["freshness(ordered_at)"].observed == newest and report["freshness(ordered_at)"].passed
    assert report["stale"].status == "fail"
    assert report["stale"].observed == newest and "1:00:00 before the reference time" in report["stale"].message
    assert report["schema"].observed == {"missing": ["missing_col"], "extra": [], "wrong_type": {}}
    assert report["schema_ok"].passed
    negative = scalar(cur, f"SELECT COUNT(*) FROM {table} WHERE amount < 0")
    assert report["no_negative"].observed == negative > 0 and report["no_negative"].status == "fail"
    assert report["regions"].observed == 3 and report["regions"].passed
    assert report["row_count_change"].observed["change"] == pytest.approx(0.2)
    assert report["row_count_change"].status == "fail"

    # common-sql column_mapping and checks, against the same aggregates in PostgreSQL
    assert report["null_check(age)"].observed == scalar(cur, f"SELECT count(*) - count(age) FROM {table}") == 3
    assert report["null_check(age)"].status == "fail"
    assert report["max(age)"].observed == scalar(cur, f"SELECT max(age) FROM {table}") and report["max(age)"].passed
    assert report["unique_check(id)"].observed == scalar(cur, f"SELECT count(id) - count(DISTINCT id) FROM {table}")
    assert report["distinct_check(region)"].observed == scalar(cur, f"SELECT count(DISTINCT region) FROM {table}")
    assert report["min(amount)"].observed == scalar(cur, f"SELECT min(amount) FROM {table}")
    assert report["has_rows"].passed
    code_upper = scalar(cur, f"SELECT min(CASE WHEN code = upper(code) THEN 1 ELSE 0 END) FROM {table}")
    assert report["code_upper"].observed == code_upper == 0 and report["code_upper"].status == "fail"

    assert report.status == "fail"
    # one aggregation + 2 unique key sets (count and samples in one query each) + 4 sql + 1 samples query
    # (samples share the aggregation's scan unless, as here, a DISTINCT aggregate is among the metrics)
    assert report.spark_queries == 1 + 2 + 4 + 1
    assert json.loads(json.dumps(report.to_dict()))["row_count"] == 60


def test_samples_hold_keys_and_rule_columns_of_failing_rows(data) -> None:  # type: ignore[no-untyped-def]
    report = evaluate(data, RULES, sample_size=3, key_columns=["id"])
    emails_by_id: dict[int, list[Any]] = {}
    for r in ROWS:
        emails_by_id.setdefault(r[0], []).append(r[1])
    age = report.samples["range(age)"]
    assert len(age) == 3 and all(set(s) == {"id", "age"} for s in age)
    assert all(not 0 <= s["age"] < 120 for s in age)
    assert {s["id"] for s in age} == {1, 2, 3}  # ordered by the key columns: deterministic
    nulls = report.samples["not_null(email)"]
    assert len(nulls) == 3 and all(s["email"] is None and None in emails_by_id[s["id"]] for s in nulls)
    shipped = report.samples["shipped_after_order"]
    assert set(shipped[0]) == {"id", "ordered_at", "shipped_at"}
    assert all(s["shipped_at"] < s["ordered_at"] for s in shipped)
    dups = report.samples["unique(id)"]
    assert sorted(s["id"] for s in dups) == [16, 33, 50] and all(s["occurrences"] == 2 for s in dups)
    assert report.samples["same_key_set"] == report.samples["region_status_unique"]
    assert "range(amount)" in report.samples  # it failed rows (though it passed its threshold)
    assert all(len(v) <= 3 for v in report.samples.values())
    no_samples = evaluate(data, RULES, sample_size=0)
    assert no_samples.samples == {} and no_samples.spark_queries == 1 + 2
    assert [r.failing_rows for r in no_samples.results] == [r.failing_rows for r in report.results]


def _oracle_samples(rules: list[dict[str, Any]], k: int) -> dict[str, list[int]]:
    """The ids of the k failing rows with the smallest ids, per rule, computed in Python from ROWS."""
    at = {c: i for i, c in enumerate(COLUMNS)}
    failing: dict[str, Any] = {
        "not_null(email)": lambda r: r[at["email"]] is None,
        "range(age)": lambda r: r[at["age"]] is not None and not 0 <= r[at["age"]] < 120,
        "shipped_after_order": lambda r: None not in (r[at["shipped_at"]], r[at["ordered_at"]])
        and r[at["shipped_at"]] < r[at["ordered_at"]],
    }
    return {name: sorted(r[0] for r in ROWS if fails(r))[:k] for name, fails in failing.items()}


# sample_size above min_by's 100,000 limit takes the second-query shape (also Spark < 4.2's), for real
@pytest.mark.parametrize(("shape", "k"), [("one scan", 4), ("second query", 100_001)])
@pytest.mark.parametrize("partitions", [1, 7])
def test_samples_are_the_smallest_failing_keys_whatever_the_partitioning(data, partitions: int, shape: str,  # type: ignore[no-untyped-def]
                                                                         k: int) -> None:
    """Samples come out of the aggregation's scan (observed min_by(k), Spark 4.2+), or out of a second
    query: the same rows as a global ORDER BY key LIMIT k either way, on one partition or many; the counts
    are the same as without samples, and the observed aggregates are those of the plain aggregation."""
    rules = [r for r in RULES if r.get("name") == "shipped_after_order" or r["type"] in ("not_null", "range")]
    df = data.repartition(partitions)
    report = evaluate(df, rules, sample_size=k, key_columns=["id"])
    plain = evaluate(df, rules, sample_size=0)
    assert [r.to_dict() for r in report.results] == [r.to_dict() for r in plain.results]
    assert report.spark_queries == plain.spark_queries + (0 if shape == "one scan" else 1)
    for name, ids in _oracle_samples(rules, k).items():
        assert [s["id"] for s in report.samples[name]] == ids, name


def test_samples_with_a_distinct_metric_take_their_own_query(data) -> None:  # type: ignore[no-untyped-def]
    """DISTINCT aggregates cannot be observed: with a distinct_count metric the samples run as a second
    query, and give the same rows; without bottom-k min_by (Spark < 4.2, or k over its 100,000 limit)
    unique keys are sampled in a window query, giving the same keys."""
    rules = [r for r in RULES if r.get("name") == "shipped_after_order" or r["type"] in ("not_null", "range")]
    one_scan = evaluate(data, rules, sample_size=4, key_columns=["id"])
    with_distinct = {"rules": rules, "column_mapping": {"region": {"distinct_check": {"geq_to": 1}}}}
    two = evaluate(data, with_distinct, sample_size=4, key_columns=["id"])
    assert two.spark_queries == one_scan.spark_queries + 1
    assert {k: v for k, v in two.samples.items() if k in one_scan.samples} == one_scan.samples
    unique = [{"type": "unique", "columns": ["id"]}]
    new = evaluate(data, unique, sample_size=3)
    old = evaluate(data, unique, sample_size=100_001)  # the window shape; 3 duplicated keys in the data
    assert old["unique(id)"].failing_rows == new["unique(id)"].failing_rows == 6
    assert sorted(s["id"] for s in old.samples["unique(id)"]) == [s["id"] for s in new.samples["unique(id)"]]


def test_samples_without_columns_or_keys_hold_whole_rows(data) -> None:  # type: ignore[no-untyped-def]
    report = evaluate(data, [{"type": "expression", "expression": "age < 100"}], sample_size=2)
    (sample, _) = report.samples["expression(age < 100)"]
    assert set(sample) == set(COLUMNS)


# ------------------------------------------------------------------------------------- job counts

ROW_LEVEL_12: list[dict[str, Any]] = [
    {"type": "not_null", "column": "email"},
    {"type": "not_null", "column": "region"},
    {"type": "range", "column": "age", "min": 0, "max": 100},
    {"type": "not_null", "column": "age"},
    {"type": "range", "column": "amount", "min": 0},
    {"type": "regex", "column": "code", "pattern": CODE_RE},
    {"type": "format", "column": "email", "format": "email"},
    {"type": "format", "column": "uid", "format": "uuid"},
    {"type": "format", "column": "d", "format": "date"},
    {"type": "allowed_values", "column": "status", "values": ["new", "paid"]},
    {"type": "length", "column": "name", "max": 5},
    {"type": "expression", "expression": "shipped_at >= ordered_at"},
]


def _jobs(spark, df, rules, group: str) -> tuple[int, Any]:  # type: ignore[no-untyped-def]
    sc = spark.sparkContext
    sc.setJobGroup(group, f"quality job count {group}")
    try:
        report = evaluate(df, rules, key_columns=["id"])
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return len(sc.statusTracker().getJobIdsForGroup(group)), report


def test_job_count_does_not_grow_with_row_level_rules(spark, data, unique) -> None:  # type: ignore[no-untyped-def]
    jobs_3, report_3 = _jobs(spark, data, ROW_LEVEL_12[:3], f"dq3-{unique}")
    jobs_12, report_12 = _jobs(spark, data, ROW_LEVEL_12, f"dq12-{unique}")
    assert all(r.failing_rows for r in report_12.results)  # every rule fails: samples for all of them
    assert report_3.spark_queries == report_12.spark_queries == 1  # one scan: aggregates + samples
    assert jobs_3 == jobs_12, (jobs_3, jobs_12)
    assert 1 <= jobs_12 <= 3
    print(f"\nSpark jobs: 3 row-level rules -> {jobs_3}, 12 row-level rules -> {jobs_12}")


# ------------------------------------------------------------------------------------------- split


def test_split_rows_marks_every_failing_rule(data) -> None:  # type: ignore[no-untyped-def]
    rules = parse_rules(RULES + [{"type": "row_count", "min": 1000}])  # dataset rules are ignored
    passing, failing = split_rows(data, rules)
    assert FAILED_RULES_COLUMN not in passing.columns and passing.columns == data.columns
    assert failing.columns == [*data.columns, FAILED_RULES_COLUMN, ERROR_COLUMN]
    report = evaluate(data, rules, sample_size=0)
    n_pass, n_fail = passing.count(), failing.count()
    assert n_pass + n_fail == report.row_count == 60
    got = {
        (r["id"], r["name"]): (list(r[FAILED_RULES_COLUMN]), r[ERROR_COLUMN])
        for r in failing.select("id", "name", FAILED_RULES_COLUMN, ERROR_COLUMN).collect()
    }
    assert len(got) == n_fail
    # each rule's rows in the split equal its failing_rows in the report
    for result in report.results:
        if result.failing_rows is not None:
            assert sum(result.name in names for names, _ in got.values()) == result.failing_rows, result.name
    # a Python oracle, row by row, for a few rules
    for row in ROWS:
        rec = dict(zip(COLUMNS, row, strict=True))
        names, error = got.get((rec["id"], rec["name"]), ([], None))
        assert ("not_null(email)" in names) is (rec["email"] is None)
        assert ("format(d)" in names) is python_date_oracle(rec["d"])
        assert ("unique(id)" in names) is (rec["id"] in (16, 33, 50))
        shipped_bad = rec["shipped_at"] is not None and rec["shipped_at"] < rec["ordered_at"]
        assert ("shipped_after_order" in names) is shipped_bad
        if names:
            assert error == "failed quality rules: " + ", ".join(names)
            row_level_first = [r.name for r in rules if r.row_level] + [r.name for r in rules if r.type == "unique"]
            assert names == [n for n in row_level_first if n in names]
    assert passing.where("email IS NULL OR age < 0").count() == 0


def test_split_rows_without_row_rules(data) -> None:  # type: ignore[no-untyped-def]
    passing, failing = split_rows(data, [{"type": "row_count", "min": 1}])
    assert passing.count() == 60 and failing.count() == 0
    assert failing.columns == [*data.columns, FAILED_RULES_COLUMN, ERROR_COLUMN]


# -------------------------------------------------------------------------------- config errors


def test_missing_columns_and_bad_expressions_raise_config_errors(data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"rule 'not_null\(emial\)' references column 'emial'"):
        evaluate(data, [{"type": "not_null", "column": "emial"}, {"type": "unique", "column": "ID"}])
    with pytest.raises(ConfigError, match=r"rule 'bad'.expression: is not a valid Spark SQL expression"):
        evaluate(data, [{"type": "expression", "expression": "nope > 1", "name": "bad"}])
    with pytest.raises(ConfigError, match="must be a boolean expression, but it is int"):
        evaluate(data, [{"type": "expression", "expression": "age + 1"}])
    with pytest.raises(ConfigError, match="single SELECT"):
        evaluate(data, [{"type": "sql", "query": "DROP TABLE data"}])
    with pytest.raises(ConfigError, match="key_columns"):
        evaluate(data, [], key_columns=["nope"])


def test_empty_data_and_no_rules(spark) -> None:  # type: ignore[no-untyped-def]
    empty = spark.createDataFrame([], SPARK_SCHEMA)
    report = evaluate(empty, [
        {"type": "not_null", "column": "email"},
        {"type": "unique", "column": "id"},
        {"type": "freshness", "column": "ordered_at", "max_age": "1d"},
        {"type": "row_count", "min": 1, "severity": "warn"},
    ])
    assert report.row_count == 0
    assert report["not_null(email)"].passed and report["unique(id)"].passed
    assert report["freshness(ordered_at)"].status == "fail"
    assert report["row_count"].status == "warn"
    assert evaluate(empty, []).status == "pass"


def test_samples_of_many_failing_rules_plan_quickly(spark) -> None:
    """20 failing rules: their OR-ed conditions made Spark's constraint propagation plan the samples query
    for minutes and then run out of heap (14 rules: 30 s); it is now off for that one query, and restored."""
    from pyspark.sql import functions as F

    df = spark.range(2000).withColumns({f"c{i}": F.col("id") % (i + 3) for i in range(20)})
    rules = [{"type": "range", "column": f"c{i}", "max": i} for i in range(20)]
    before = spark.conf.get("spark.sql.constraintPropagation.enabled", None)
    report = evaluate(df, rules, sample_size=2, key_columns=["id"])
    assert all(r.failing_rows for r in report.results) and all(len(v) == 2 for v in report.samples.values())
    assert spark.conf.get("spark.sql.constraintPropagation.enabled", None) == before


_NO_PYARROW = '''
import os, sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.executorEnv.PYTHONPATH", sys.argv[1])
         .config("spark.ui.enabled", "false").getOrCreate())
from airflow_etl_provider.hooks import quality
df = spark.createDataFrame([(1, None), (2, "x"), (3, None)], "id int, name string")
report = quality.evaluate(df, [{"type": "not_null", "column": "name"}], key_columns=["id"])
print("RESULT", report.spark_queries, report["not_null(name)"].failing_rows, report.samples["not_null(name)"])
spark.stop()
'''


def test_one_scan_samples_need_no_python_on_the_executors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Executors whose Python cannot even import pyarrow (a shadowing package on their PYTHONPATH raises
    ModuleNotFoundError): the one-scan samples run in the JVM (observed min_by, noop sink), so one query
    gives the counts and the samples."""
    import subprocess
    import sys

    shadow = tmp_path / "shadow"
    (shadow / "pyarrow").mkdir(parents=True)
    (shadow / "pyarrow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyarrow'\", name='pyarrow')\n")
    script = tmp_path / "no_pyarrow.py"
    script.write_text(_NO_PYARROW)
    proc = subprocess.run([sys.executable, str(script), str(shadow)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    assert result == "RESULT 1 2 [{'id': 1, 'name': None}, {'id': 3, 'name': None}]"


def test_samples_and_unique_on_dotted_and_nested_column_names(spark) -> None:  # type: ignore[no-untyped-def]
    """A top-level column whose name holds a dot, and a nested field path: both shapes give the same
    counts and samples, and unique rules group by them."""
    from pyspark.sql import functions as F

    df = spark.createDataFrame(
        [(1, "a", 10), (2, None, 20), (3, "a", None), (4, "b", 20), (5, None, 30)], "id int, `cust.name` string, v int"
    ).withColumn("info", F.struct(F.col("v").alias("amount")))
    rules = [{"type": "not_null", "column": "cust.name"}, {"type": "not_null", "column": "info.amount"},
             {"type": "unique", "column": "cust.name"}, {"type": "unique", "column": "info.amount"}]
    report = evaluate(df, rules, sample_size=5, key_columns=["id"])
    assert report.spark_queries == 1 + 2
    assert [r.failing_rows for r in report.results] == [2, 1, 2, 2]
    assert report.samples["not_null(cust.name)"] == [{"id": 2, "cust.name": None}, {"id": 5, "cust.name": None}]
    assert report.samples["not_null(info.amount)"] == [{"id": 3, "info.amount": None}]
    assert report.samples["unique(cust.name)"] == [{"cust.name": "a", "occurrences": 2}]
    assert report.samples["unique(info.amount)"] == [{"info.amount": 20, "occurrences": 2}]
    with_distinct = {"rules": rules, "column_mapping": {"id": {"distinct_check": {"geq_to": 1}}}}
    two = evaluate(df, with_distinct, sample_size=5, key_columns=["id"])
    assert {k: v for k, v in two.samples.items() if k in report.samples} == report.samples
