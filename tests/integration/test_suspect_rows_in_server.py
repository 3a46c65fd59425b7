"""Suspect rows applied inside PostgreSQL (one PL/pgSQL call, a subtransaction per row) are rejected with
exactly the messages and error classes of the one-savepoint-per-row path, and the same rows load."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader

pytestmark = pytest.mark.spark


@pytest.fixture
def cur() -> Iterator[object]:
    conn = SparkPostgresHook(postgres_conn_id="postgres_default").get_conn()
    conn.autocommit = True
    yield conn.cursor()
    conn.close()


def _load(spark, table: str, in_server: bool) -> tuple[object, dict[int, tuple]]:
    rows = [(i, f"n{i}", 1 + i % 5, i % 3 + 1, "ab") for i in range(1, 301)]
    rows[10] = (11, None, 1, 1, "ab")        # NOT NULL
    rows[20] = (21, "n21", -4, 1, "ab")      # CHECK
    rows[30] = (31, "n31", 1, 99, "ab")      # foreign key
    rows[40] = (41, "n41", 1, 1, "abcdef")   # too long for varchar(4)
    rows[50] = (51, "n51", 0, 2, "abcd")     # CHECK again
    df = spark.createDataFrame(rows, "id INT, name STRING, qty INT, cat_id INT, code STRING")
    loader = PostgresLoader(SparkPostgresHook(postgres_conn_id="postgres_default"), table, "upsert", keys=["id"],
                            stage_method="copy")
    loader.apply_in_server = in_server  # the path to compare: both run against the real PostgreSQL
    out = loader.load(df)
    rejected = {r["id"]: (r["_etl_error"], r["_etl_error_class"]) for r in out.rejected.collect()}
    return out, rejected


def test_suspects_applied_in_the_server_match_the_savepoint_path(spark, cur) -> None:
    tag = uuid.uuid4().hex[:8]
    cats, table = f"lsc_{tag}", f"lss_{tag}"
    cur.execute(f"CREATE TABLE {cats} (id int PRIMARY KEY)")
    cur.execute(f"INSERT INTO {cats} VALUES (1), (2), (3)")
    cur.execute(f"""CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, qty int CHECK (qty > 0),
                    cat_id int REFERENCES {cats}, code varchar(4))""")
    try:
        per_row, per_row_rejected = _load(spark, table, False)
        cur.execute(f"SELECT * FROM {table} ORDER BY id")
        per_row_target = cur.fetchall()
        cur.execute(f"TRUNCATE {table}")
        in_server, in_server_rejected = _load(spark, table, True)
        cur.execute(f"SELECT * FROM {table} ORDER BY id")
        in_server_target = cur.fetchall()
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {table}, {cats}")

    assert sorted(per_row_rejected) == [11, 21, 31, 41, 51]
    assert in_server_rejected == per_row_rejected  # the same rows, messages and classes, byte for byte
    assert in_server_target == per_row_target and len(in_server_target) == 295
    assert (in_server.records_read, in_server.records_loaded, in_server.records_rejected) == (300, 295, 5)
    assert (per_row.records_read, per_row.records_loaded, per_row.records_rejected) == (300, 295, 5)
    assert in_server.isolated and per_row.isolated
    assert in_server.statements < per_row.statements  # one call instead of a savepoint round trip per suspect
    assert "DETAIL:  Failing row contains" in in_server_rejected[11][0]
    assert in_server_rejected[31][1] == "psycopg.errors.ForeignKeyViolation"
