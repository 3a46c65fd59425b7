"""The load operator's ``quality_rules`` gate: failing rows go to the DLQ, dataset failures stop the load."""

from __future__ import annotations

import gzip
import json

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _pg():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id="postgres_default")


def _source(spark, tmp_path):
    rows = [(i, None if i == 3 else f"u{i}@x.test", -1 if i == 5 else i) for i in range(1, 21)]
    path = tmp_path / "src"
    spark.createDataFrame(rows, "id INT, email STRING, qty INT").coalesce(1).write.parquet(str(path))
    return {"format": "parquet", "path": str(path)}


def test_gate_quarantines_failing_rows_and_loads_the_rest(spark, tmp_path, unique) -> None:
    table = f"public.gate_{unique}"
    _pg().run(f"create table {table} (id int primary key, email text, qty int check (qty <> 7))")
    op = ResilientSparkLoadOperator(
        task_id="load", source=_source(spark, tmp_path),
        target={"type": "postgres", "table": table, "mode": "upsert", "keys": ["id"]},
        quality_rules=[{"type": "not_null", "column": "email"}, {"type": "range", "column": "qty", "min": 0},
                       {"type": "row_count", "min": 10}],
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")}, circuit_breaker=None,
    )
    result = op.execute(context={})
    # 20 read: 2 fail a quality rule, 1 is rejected by the table's CHECK, 17 loaded
    assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (20, 17, 3)
    assert result["errors"]["QualityRuleFailed"]["count"] == 2
    assert result["quality"]["failed_rules"] == {"not_null(email)": 1, "range(qty)": 1}
    assert sorted(r[0] for r in _pg().get_records(f"select id from {table}")) == [
        i for i in range(1, 21) if i not in (3, 5, 7)]
    letters = [json.loads(x) for f in (tmp_path / "dlq").rglob("*.jsonl.gz")
               for x in gzip.decompress(f.read_bytes()).splitlines()]
    assert sorted((e["stage"], e["record"]["id"]) for e in letters) == [("load", 7), ("quality", 3), ("quality", 5)]
    _pg().run(f"drop table {table}")


def test_gate_failing_dataset_rule_stops_before_the_target_is_touched(spark, tmp_path, unique) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    table = f"public.gate_{unique}"
    _pg().run(f"create table {table} (id int primary key, email text, qty int)")
    op = ResilientSparkLoadOperator(
        task_id="load", source=_source(spark, tmp_path),
        target={"type": "postgres", "table": table, "mode": "append", "load_id": f"gate-{unique}"},
        quality_rules=[{"type": "row_count", "min": 1000}], circuit_breaker=None,
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
    )
    with pytest.raises(AirflowFailException, match=r"row_count.*nothing was loaded|nothing was loaded"):
        op.execute(context={})
    assert _pg().get_first(f"select count(*) from {table}")[0] == 0
    _pg().run(f"drop table {table}")


def test_gate_definitions_are_checked_at_parse_time() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        ResilientSparkLoadOperator(task_id="x", source={"format": "parquet", "path": "/x"},
                                   target={"type": "postgres", "table": "t", "mode": "append"},
                                   quality_rules=[{"type": "not_null"}])
    with pytest.raises(ConfigError, match="dead_letter: is required to quarantine"):
        ResilientSparkLoadOperator(task_id="x", source={"format": "parquet", "path": "/x"},
                                   target={"type": "postgres", "table": "t", "mode": "append"},
                                   quality_rules=[{"type": "not_null", "column": "a"}], dead_letter=None)
