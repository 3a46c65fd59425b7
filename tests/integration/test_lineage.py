"""OpenLineage on real runs, extracted by the OpenLineage provider's own ExtractorManager (as its listener does
when a task completes): dataset names, the row-accounting run facet, the dataQualityAssertions facet."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.spark


def _extract(op):
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    ti = SimpleNamespace(
        dag_id=op.dag_id, task_id=op.task_id, run_id="lineage_run", try_number=1, map_index=-1
    )
    return ExtractorManager().extract_metadata(
        dagrun=SimpleNamespace(run_id="lineage_run"),
        task=op,
        task_instance_state=TaskInstanceState.SUCCESS,
        task_instance=ti,
    )


def test_load_into_postgres_with_a_kafka_dlq(spark, tmp_path, unique, kafka_bootstrap) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    pg = PostgresHook(postgres_conn_id="postgres_default")
    table = f"public.lineage_{unique}"
    pg.run(f"create table {table} (id int primary key, name varchar(5) not null)")
    src = tmp_path / "in.csv"
    src.write_text("id,name\n1,ok\n2,toolongname\n3,ok\n")
    op = ResilientSparkLoadOperator(
        task_id="load_lineage",
        source={
            "format": "csv",
            "path": str(src),
            "options": {"header": "true"},
            "schema": "id INT, name STRING",
        },
        target={"type": "postgres", "table": table, "mode": "upsert", "keys": ["id"]},
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": f"lineage.{unique}.dlq"},
        circuit_breaker=None,
        metrics=[],
    )
    try:
        result = op.execute(context={})
    finally:
        pg.run(f"drop table {table}")
    lineage = _extract(op)
    conn = json.loads(os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"])
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(src))]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        (f"postgres://{conn['host']}:{conn['port']}", f"{conn['schema']}.public.lineage_{unique}"),
        (f"kafka://{kafka_bootstrap.split(',')[0]}", f"lineage.{unique}.dlq"),
    ]
    facet = lineage.run_facets["etlRowAccounting"]
    assert (facet.rowsRead, facet.rowsLoaded, facet.rowsDeadLettered) == (
        result["records_read"],
        result["records_loaded"],
        result["records_dead_lettered"],
    )
    assert facet.outcome == "success" and facet.rowsDeadLettered == 1


def test_quality_check_carries_the_data_quality_assertions(spark, tmp_path) -> None:
    from airflow_etl_provider.operators.quality import DataQualityOperator

    path = tmp_path / "orders"
    spark.createDataFrame([(1, "a@x"), (2, None), (3, "c@x")], "id INT, email STRING").write.parquet(
        str(path)
    )
    op = DataQualityOperator(
        task_id="check_lineage",
        source={"format": "parquet", "path": str(path)},
        rules=[
            {"type": "not_null", "columns": ["email"], "action": "quarantine"},
            {"type": "unique", "columns": ["id"]},
        ],
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        output={"format": "parquet", "path": str(tmp_path / "clean")},
        metrics=[],
    )
    result = op.execute(context={})
    lineage = _extract(op)
    (source,) = lineage.inputs
    assert (source.namespace, source.name) == ("file", str(path))
    assertions = source.inputFacets["dataQualityAssertions"].assertions
    by_rule = {a.name: a for a in assertions}
    report = {r["name"]: r for r in result["report"]["rules"]}
    assert set(by_rule) == set(report)
    for name, entry in report.items():
        assert by_rule[name].success == (entry["status"] == "pass")
        assert by_rule[name].actual == str(entry["failing_rows"] or 0)
    assert sorted(a.success for a in assertions) == [False, True]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("file", str(tmp_path / "clean")),
        ("file", str(tmp_path / "dlq")),
    ]
    assert lineage.run_facets["etlRowAccounting"].rowsQuarantined == result["records_quarantined"] == 1
