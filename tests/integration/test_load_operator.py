"""ResilientSparkLoadOperator against the real stack: accounting, poison rows, corrupt input, open breaker."""

from __future__ import annotations

import gzip
import json

import pytest

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore, breaker_for
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = pytest.mark.spark


def _pg():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id="postgres_default")


def test_example_dag_upserts_and_dead_letters_the_poison_rows(spark, kafka_bootstrap) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tests.integration.test_example_dags import DAGS_DIR, _topic_size

    before = _topic_size(kafka_bootstrap, "example.orders.load.dlq")
    run = DagBag(dag_folder=str(DAGS_DIR)).get_dag("example_resilient_load").test()
    assert run.state == "success"
    ti = next(t for t in run.get_task_instances() if t.task_id == "load_orders")
    result = ti.xcom_pull(task_ids="load_orders") if hasattr(ti, "xcom_pull") else None
    pg = _pg()
    # 1000 keys existed; 2000 rows upserted, of which keys 7, 11 and 13 were rejected: they keep old values
    assert pg.get_first("select count(*) from public.demo_orders")[0] == 2000
    assert pg.get_first("select array_agg(order_id order by order_id) from public.demo_orders "
                        "where email like 'old%'")[0] == [7, 11, 13]
    assert _topic_size(kafka_bootstrap, "example.orders.load.dlq") - before == 3
    if result is not None:
        assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"]


def test_csv_corrupt_rows_and_rejected_rows_go_to_the_dlq(spark, tmp_path, unique) -> None:
    table = f"public.op_{unique}"
    _pg().run(f"create table {table} (id int primary key, name varchar(5) not null, qty int check (qty >= 0))")
    src = tmp_path / "in.csv"
    src.write_text("id,name,qty\n1,ok,1\n2,toolongname,2\n3,ok,-1\nnot-a-number,x,1\n4,ok,4\n5,,5\n")
    op = ResilientSparkLoadOperator(
        task_id="load_csv",
        source={"format": "csv", "path": str(src), "options": {"header": "true"},
                "schema": "id INT, name STRING, qty INT"},
        target={"type": "postgres", "table": table, "mode": "append", "load_id": f"t-{unique}"},
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        circuit_breaker=None,
    )
    result = op.execute(context={})
    assert result["records_read"] == 6
    assert result["records_loaded"] == 2  # ids 1 and 4
    assert result["records_dead_lettered"] == 4
    assert set(result["errors"]) >= {"CorruptRecord", "psycopg.errors.StringDataRightTruncation",
                                     "psycopg.errors.CheckViolation"}
    assert sorted(r[0] for r in _pg().get_records(f"select id from {table}")) == [1, 4]
    letters = [json.loads(x) for f in (tmp_path / "dlq").rglob("*.jsonl.gz")
               for x in gzip.decompress(f.read_bytes()).splitlines()]
    assert {e["stage"] for e in letters} == {"load", "parse"}
    assert any("not-a-number" in json.dumps(e["record"]) for e in letters)
    again = op.execute(context={})  # same load_id: idempotent, nothing loaded twice
    assert again["skipped"] is True
    assert _pg().get_first(f"select count(*) from {table}")[0] == 2
    _pg().run(f"drop table {table}")


def test_schema_mismatches_are_listed_before_loading(spark, tmp_path, unique) -> None:
    src = tmp_path / "in.json"
    src.write_text('{"id": 1, "tags": ["a"]}\n')
    op = ResilientSparkLoadOperator(
        task_id="load_json", source={"format": "json", "path": str(src)},
        target={"type": "postgres", "table": f"public.never_{unique}", "mode": "append"},
        schema="id INT, tags INT, price DECIMAL(10,2)", circuit_breaker=None,
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
    )
    with pytest.raises(ConfigError) as info:
        op.execute(context={})
    msg = str(info.value)
    assert "missing column price" in msg and "cannot cast array<string> to int" in msg


def test_open_breaker_reschedules_without_touching_postgres(unique) -> None:
    from airflow.sdk.exceptions import AirflowRescheduleException

    conn = f"pg_breaker_{unique}"
    breaker = breaker_for(CircuitBreakerPolicy(failure_threshold=1, reset_timeout_s=120), conn)
    breaker.force_open("down for the test")
    op = ResilientSparkLoadOperator(
        task_id="load", source={"format": "parquet", "path": "/nonexistent"},
        target={"type": "postgres", "conn_id": conn, "table": "public.x", "mode": "append"},
        circuit_breaker={"failure_threshold": 1, "reset_timeout_s": 120},
    )
    with pytest.raises(AirflowRescheduleException) as info:
        op.execute(context={})  # raised before Spark starts or the (nonexistent) connection is used
    assert info.value.reschedule_date.timestamp() == pytest.approx(breaker.state().opened_at + 120, abs=1)
    AirflowVariableBreakerStore().delete(conn)
