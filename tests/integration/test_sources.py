"""The ``jdbc``, ``table`` and ``orc`` source forms (hooks/sources.py), read for real and loaded by the operator."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_etl_provider.hooks.sources import read_source
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = pytest.mark.spark

ROWS = [(i, f"customer-{i}", Decimal(f"{i}.25")) for i in range(1, 41)]
DDL = "id INT, name STRING, amount DECIMAL(10,2)"


def _pg():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id="postgres_default")


def _tuples(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


@pytest.fixture
def pg_source(unique):
    table = f"public.src_{unique}"
    pg = _pg()
    pg.run(f"create table {table} (id int primary key, name text not null, amount numeric(10,2))")
    pg.insert_rows(table, ROWS, target_fields=["id", "name", "amount"])
    yield table
    pg.run(f"drop table if exists {table}")


def test_jdbc_source_reads_a_table_and_a_query(spark, pg_source) -> None:
    frames = read_source(spark, {"format": "jdbc", "conn_id": "postgres_default", "table": pg_source})
    assert frames.corrupt is None and frames.description == f"jdbc:postgres_default:{pg_source}"
    assert _tuples(frames.data) == sorted(ROWS)
    query = read_source(
        spark, {"format": "jdbc", "query": f"select id, amount from {pg_source} where id % 4 = 0"}
    )
    assert _tuples(query.data) == sorted((i, a) for i, _, a in ROWS if i % 4 == 0)
    assert query.description == "jdbc:postgres_default:query"


def test_table_source_reads_the_spark_catalog(spark, unique) -> None:
    name = f"catalog_orders_{unique}"
    spark.createDataFrame(ROWS, DDL).createOrReplaceTempView(name)
    try:
        frames = read_source(spark, {"format": "table", "table": name})
        assert frames.description == f"table:{name}" and frames.corrupt is None
        assert _tuples(frames.data) == sorted(ROWS)
    finally:
        spark.catalog.dropTempView(name)


def test_orc_source_round_trips(spark, tmp_path) -> None:
    path = tmp_path / "orders.orc"
    spark.createDataFrame(ROWS, DDL).repartition(3).write.orc(str(path))
    frames = read_source(spark, {"format": "orc", "path": str(path)})
    assert frames.corrupt is None
    assert frames.data.schema.simpleString() == "struct<id:int,name:string,amount:decimal(10,2)>"
    assert _tuples(frames.data) == sorted(ROWS)


@pytest.mark.parametrize("form", ["jdbc", "orc"])
def test_the_operator_loads_from_jdbc_and_orc_sources(spark, pg_source, tmp_path, unique, form) -> None:
    target = f"public.dst_{form}_{unique}"
    pg = _pg()
    # the target refuses amounts over 30: those rows are dead-lettered by the database itself
    pg.run(
        f"create table {target} (id int primary key, name text not null, amount numeric(10,2) "
        "check (amount <= 30))"
    )
    if form == "orc":
        spark.createDataFrame(ROWS, DDL).write.orc(str(tmp_path / "src.orc"))
        source = {"format": "orc", "path": str(tmp_path / "src.orc")}
    else:
        source = {"format": "jdbc", "table": pg_source}
    op = ResilientSparkLoadOperator(
        task_id="load",
        source=source,
        target={"type": "postgres", "table": target, "mode": "upsert", "keys": ["id"]},
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        circuit_breaker=None,
    )
    try:
        result = op.execute(context={})
        refused = [r for r in ROWS if r[2] > 30]
        assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (
            len(ROWS),
            len(ROWS) - len(refused),
            len(refused),
        )
        assert set(result["errors"]) == {"psycopg.errors.CheckViolation"}
        assert sorted(pg.get_records(f"select id, name, amount from {target}")) == sorted(
            r for r in ROWS if r[2] <= 30
        )
    finally:
        pg.run(f"drop table if exists {target}")
