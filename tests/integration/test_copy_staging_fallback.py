"""COPY staging (the load operator's default) on executors whose Python has no ``psycopg``: the rows are
staged with Spark's JDBC writer instead, and a warning names the fix.

The executors' Python is the project venv's, with a directory first on its ``PYTHONPATH`` (through
``spark.executorEnv.PYTHONPATH``, as a cluster's executor environment would set it) whose ``psycopg`` raises
exactly what a missing module raises. It runs in its own process: a SparkContext's executor environment is
fixed when it starts, and the test session's shared one must keep psycopg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

SCRIPT = r"""
import json, logging, sys
from pyspark.sql import SparkSession
from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.hooks.spark import SparkSessionHook

table, shadow = sys.argv[1], sys.argv[2]
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("airflow_etl_provider").addHandler(handler)
conf = SparkSessionHook(spark_conn_id="spark_default", app_name="pytest-copy-fallback").resolve_conf()
conf["spark.master"] = "local[2]"
conf["spark.executorEnv.PYTHONPATH"] = shadow
builder = SparkSession.builder
for key, value in conf.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
try:
    df = spark.range(0, 3000, numPartitions=3).selectExpr("CAST(id AS INT) AS id", "CONCAT('v', id) AS val")
    out = PostgresLoader(SparkPostgresHook(postgres_conn_id="postgres_default"), table, "upsert", keys=["id"],
                         stage_method="copy").load(df)
finally:
    spark.stop()
print("RESULT " + json.dumps({"stage_method": out.stage_method, "read": out.records_read, "loaded": out.records_loaded,
                  "rejected": out.records_rejected, "warnings": [m for m in records if "Staging" in m]}), flush=True)
"""


def test_executors_without_psycopg_stage_with_jdbc(tmp_path: Path) -> None:
    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

    shadow = tmp_path / "shadow"
    (shadow / "psycopg").mkdir(parents=True)
    (shadow / "psycopg" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    table = f"lcf_{uuid.uuid4().hex[:8]}"
    conn = SparkPostgresHook(postgres_conn_id="postgres_default").get_conn()
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, val text NOT NULL)")
    cur.execute(f"INSERT INTO {table} VALUES (1, 'old'), (5000, 'kept')")
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT, table, str(shadow)], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-3000:]
        [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(line.removeprefix("RESULT "))
        assert result["stage_method"] == "jdbc"
        assert (result["read"], result["loaded"], result["rejected"]) == (3000, 3000, 0)
        assert any("no psycopg module" in m and "requirements-executor.txt" in m for m in result["warnings"]), result
        cur.execute(f"SELECT count(*), count(*) FILTER (WHERE val = 'v' || id), max(val) FILTER (WHERE id = 5000) "
                    f"FROM {table}")
        assert cur.fetchone() == (3001, 3000, "kept")
        cur.execute("SELECT count(*) FROM pg_class WHERE relname LIKE %s", (f"\\_etl\\_stg\\_{table}%",))
        assert cur.fetchone()[0] == 0
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
