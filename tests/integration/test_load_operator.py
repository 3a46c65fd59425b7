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

    from tests.integration.test_example_dags import DAGS_DIR, _topic_size, _xcom

    before = _topic_size(kafka_bootstrap, "example.orders.load.dlq")
    run = DagBag(dag_folder=str(DAGS_DIR)).get_dag("example_resilient_load").test()
    assert run.state == "success"
    result = _xcom("example_resilient_load", run.run_id, "load_orders", "return_value")  # the metadata DB's copy
    pg = _pg()
    # 1000 keys existed; 2000 rows upserted, of which keys 7, 11 and 13 were rejected: they keep old values
    assert pg.get_first("select count(*) from public.demo_orders")[0] == 2000
    assert pg.get_first("select array_agg(order_id order by order_id) from public.demo_orders "
                        "where email like 'old%'")[0] == [7, 11, 13]
    dead_lettered = _topic_size(kafka_bootstrap, "example.orders.load.dlq") - before
    assert dead_lettered == 3
    assert result["records_dead_lettered"] == dead_lettered
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


@pytest.mark.parametrize("fmt", ["binary", "csv"])
def test_copy_format_reaches_the_jvm_writer_and_poison_rows_are_still_isolated(spark, tmp_path, unique, caplog,
                                                                                fmt) -> None:
    """``target.copy_format`` is what the JVM COPY writer sends; either way a value the target refuses is
    isolated and dead-lettered, and the rest loads."""
    import logging

    table = f"public.opf_{unique}_{fmt}"
    _pg().run(f"create table {table} (id int primary key, name varchar(5) not null, at timestamptz, amount numeric(8,2))")
    src = tmp_path / "in.csv"
    src.write_text("id,name,at,amount\n1,ok,2024-01-02T03:04:05Z,12.50\n2,toolongname,,1\n3,fine,,-0.01\n")
    op = ResilientSparkLoadOperator(
        task_id="load_fmt",
        source={"format": "csv", "path": str(src), "options": {"header": "true"},
                "schema": "id INT, name STRING, at TIMESTAMP, amount DECIMAL(8,2)"},
        target={"type": "postgres", "table": table, "mode": "upsert", "keys": ["id"], "stage_method": "copy",
                "copy_writer": "jvm", "copy_format": fmt},
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")},
        circuit_breaker=None,
    )
    with caplog.at_level(logging.INFO, logger="airflow_etl_provider"):
        result = op.execute(context={})
    assert f"with COPY (jvm writer) from 1 partition(s), {fmt} format" in caplog.text
    assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (3, 2, 1)
    assert _pg().get_records(f"select id, name, at::text, amount::text from {table} order by id") == [
        (1, "ok", "2024-01-02 03:04:05+00", "12.50"), (3, "fine", None, "-0.01")]
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
    # the half-open moment plus the policy's bounded jitter (default: a fifth of the reset timeout)
    retry_at = breaker.state().opened_at + 120
    jitter = CircuitBreakerPolicy(reset_timeout_s=120).jitter_bound_s()
    assert retry_at - 0.001 <= info.value.reschedule_date.timestamp() <= retry_at + jitter + 0.001
    AirflowVariableBreakerStore().delete(conn)


# ------------------------------------------------------------------------------- parquet overwrite


def _rows_at(spark, path) -> list[tuple]:
    return sorted(tuple(r) for r in spark.read.parquet(str(path)).collect())


def _leftovers(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f"_{path.name}.etl-"))


def _poisoned(spark, poison: int):
    """200 new rows over 4 partitions; a Python UDF raises on row ``poison``: the write fails half-way."""
    from pyspark.sql import functions as F

    def value(i: int) -> str:
        if i == poison:
            raise ValueError(f"poison row {i}")
        return "new"

    check = F.udf(lambda i: value(i), "string")  # a lambda: pyspark infers nothing from type hints
    return spark.range(0, 200, 1, 4).select(F.col("id").cast("int").alias("id"), check("id").alias("v"))


def test_parquet_overwrite_that_fails_half_way_keeps_the_old_data(spark, tmp_path) -> None:
    from airflow_etl_provider.operators.load import overwrite_parquet

    old = spark.createDataFrame([(i, "old") for i in range(100)], "id INT, v STRING")
    target, control = tmp_path / "out", tmp_path / "control"
    old.write.parquet(str(target))
    old.write.parquet(str(control))
    expected_old = _rows_at(spark, target)

    # why: Spark's own overwrite deletes the old files first, so the same failure leaves nothing behind
    with pytest.raises(Exception, match="poison row 150"):
        _poisoned(spark, 150).write.mode("overwrite").parquet(str(control))
    assert not list(control.glob("*.parquet"))

    # a Python UDF raising on one row of the third partition: the other partitions were written by then
    with pytest.raises(Exception, match="poison row 150"):
        overwrite_parquet(_poisoned(spark, 150), str(target))
    assert _rows_at(spark, target) == expected_old and _leftovers(target) == []

    # a cast that fails under ANSI mode (Spark 4's default), partitioned output
    assert spark.conf.get("spark.sql.ansi.enabled").lower() == "true"
    bad_cast = (spark.createDataFrame([(str(i),) for i in range(50)] + [("12x",)], "s STRING").repartition(3)
                .selectExpr("CAST(s AS INT) AS id", "'new' AS v"))
    with pytest.raises(Exception, match="CAST_INVALID_INPUT"):
        overwrite_parquet(bad_cast, str(target), partition_by=["v"])
    assert _rows_at(spark, target) == expected_old and _leftovers(target) == []

    # a successful overwrite replaces the data completely
    overwrite_parquet(spark.createDataFrame([(i, "new") for i in range(7)], "id INT, v STRING"), str(target))
    assert _rows_at(spark, target) == [(i, "new") for i in range(7)] and _leftovers(target) == []
    assert not list(tmp_path.glob("_out.etl-*"))

    # a filesystem root is refused, naming the operator argument it came from
    for field in ("target.path", "output.path"):
        with pytest.raises(ConfigError, match=f"^{field}: must not be a filesystem root"):
            overwrite_parquet(old, "file:///", field=field)


def test_parquet_overwrite_with_the_operator_and_after_an_interrupted_swap(spark, tmp_path) -> None:
    src, target = tmp_path / "src", tmp_path / "out"
    spark.createDataFrame([(i, "new", i % 3) for i in range(60)], "id INT, v STRING, part INT").write.parquet(str(src))
    spark.createDataFrame([(i, "old", 0) for i in range(10)], "id INT, v STRING, part INT").write.parquet(str(target))

    def operator(source: dict) -> ResilientSparkLoadOperator:
        return ResilientSparkLoadOperator(
            task_id="to_parquet", source=source, circuit_breaker=None, dead_letter=None,
            target={"type": "parquet", "path": str(target), "mode": "overwrite", "partition_by": ["part"]})

    # a task killed between the swap's two renames: no data at the path, the old data in the hidden sibling
    target.rename(tmp_path / "_out.etl-previous-0123456789ab")
    with pytest.raises(Exception, match="(?i)path does not exist"):  # what readers see meanwhile
        spark.read.parquet(str(target)).collect()
    # the next overwrite first puts the old data back; this one then fails half-way: the old data stays
    from airflow_etl_provider.operators.load import overwrite_parquet

    with pytest.raises(Exception, match="poison row 150"):
        overwrite_parquet(_poisoned(spark, 150).selectExpr("*", "0 AS part"), str(target), partition_by=["part"])
    assert _rows_at(spark, target) == [(i, "old", 0) for i in range(10)] and _leftovers(target) == []

    # the operator: a source that cannot be cast to the expected schema fails, the old data stays
    (tmp_path / "in.json").write_text('{"id": "1", "v": "x", "part": 1}\n{"id": "oops", "v": "y", "part": 2}\n')
    failing = operator({"format": "json", "path": str(tmp_path / "in.json")})
    failing.schema = "id INT, v STRING, part INT"
    with pytest.raises(Exception, match="CAST_INVALID_INPUT"):
        failing.execute(context={})
    assert _rows_at(spark, target) == [(i, "old", 0) for i in range(10)] and _leftovers(target) == []

    # and a good one replaces the data
    result = operator({"format": "parquet", "path": str(src)}).execute(context={})
    assert (result["records_read"], result["records_loaded"]) == (60, 60)
    assert _rows_at(spark, target) == sorted((i, "new", i % 3) for i in range(60))
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == ["part=0", "part=1", "part=2"]
    assert _leftovers(target) == []


#: On Spark Connect there is no JVM in this process: the swap uses Python on the (shared, local) filesystem.
CONNECT_OVERWRITE = """
import sys
from pyspark.sql import functions as F
from airflow_etl_provider.hooks.spark import SparkSessionHook
from airflow_etl_provider.operators.load import overwrite_parquet

def value(i):
    if i == 150:
        raise ValueError(f"poison row {i}")
    return "new"

target = sys.argv[1]
with SparkSessionHook("spark_connect_default").session() as spark:
    rows = lambda: sorted(tuple(r) for r in spark.read.parquet(target).collect())
    spark.createDataFrame([(i, "old") for i in range(100)], "id INT, v STRING").write.parquet(target)
    old = rows()
    bad = spark.range(0, 200, 1, 4).select(F.col("id").cast("int").alias("id"),
                                           F.udf(lambda i: value(i), "string")("id").alias("v"))
    try:
        overwrite_parquet(bad, target)
        raise SystemExit("the poisoned write did not fail")
    except Exception as err:
        assert "poison row 150" in str(err), err
    assert rows() == old, "old data changed"
    print("KEPT", len(rows()))
    overwrite_parquet(spark.createDataFrame([(i, "new") for i in range(7)], "id INT, v STRING"), target)
    assert rows() == [(i, "new") for i in range(7)]
    print("REPLACED", len(rows()))
"""


@pytest.mark.slow
def test_parquet_overwrite_on_spark_connect_swaps_local_paths(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([str(root / "scripts/stack.sh"), "up", "spark-connect"], check=True, timeout=240)
    target = tmp_path / "out"
    out = subprocess.run([sys.executable, "-c", CONNECT_OVERWRITE, str(target)], capture_output=True, text=True,
                         env=os.environ, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "KEPT 100" in out.stdout and "REPLACED 7" in out.stdout
    assert "Overwriting" not in out.stdout + out.stderr  # swapped, not the in-place fallback
    assert _leftovers(target) == []
