"""The load operator's spans on a real run (embedded Spark, PostgreSQL, file DLQ), captured in memory: the stage
tree, row counts and outcomes as attributes, and not one attribute carrying the connection's credentials."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def exporter():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
    return memory


def test_load_operator_spans(spark, tmp_path, unique, exporter, monkeypatch) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    pg = PostgresHook(postgres_conn_id="postgres_default")
    table, role, password = f"public.trace_{unique}", f"trace_{unique}", f"Tr4ce-{unique}-s3cret"
    pg.run(f"create table {table} (id int primary key, name varchar(5) not null)")
    pg.run(f"create role {role} login password '{password}' superuser")  # a disposable role: a unique secret
    conn = json.loads(os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_PG_TRACE", json.dumps({**conn, "login": role, "password": password}))
    src = tmp_path / "in.csv"
    src.write_text("id,name\n1,ok\n2,toolongname\n3,ok\nnot-a-number,x\n")
    exporter.clear()
    op = ResilientSparkLoadOperator(
        task_id="load_traced",
        source={
            "format": "csv",
            "path": str(src),
            "options": {"header": "true"},
            "schema": "id INT, name STRING",
        },
        target={"type": "postgres", "conn_id": "pg_trace", "table": table, "mode": "upsert", "keys": ["id"]},
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        circuit_breaker=None,
        metrics=[],
    )
    try:
        result = op.execute(context={})
    finally:
        pg.run(f"drop table {table}")
        pg.run(f"drop role {role}")
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    task = by_name["etl.task"]
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == task.context.span_id}
    assert {"etl.read", "etl.load", "etl.dead_letter"} <= children
    load = by_name["etl.load"]
    phases = {s.name for s in spans if s.parent is not None and s.parent.span_id == load.context.span_id}
    assert {"etl.stage", "etl.merge"} <= phases
    assert load.attributes["etl.rows_loaded"] == result["records_loaded"]
    assert by_name["etl.read"].attributes["etl.corrupt_rows"] == 1
    assert by_name["etl.dead_letter"].attributes["etl.rows"] == result["records_dead_lettered"]
    assert task.attributes["etl.rows_read"] == result["records_read"]
    assert task.attributes["etl.outcome"] == "success"

    values = [str(v) for s in spans for v in list(s.attributes.values()) + [e.attributes for e in s.events]]
    assert len(values) > 20
    assert not [v for v in values if password in v]
