"""Regression tests for the real-worker crash (issue #10): under an Airflow worker the Task SDK supervisor sets
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///`` for the task and everything it starts, so
``import airflow`` fails in Spark's Python workers. Every task that dead-lettered rows from the executors
crashed there, while ``airflow dags test`` (which blocks nothing) passed.

The shared ``spark`` fixture gives its Python workers exactly that environment. The first test proves it
does; the others run the three paths that ship code to the executors: the load with rejected rows, the quality
quarantine, and the redrive of S3/file dead letters. (The standalone-cluster and Spark Connect variants, whose
workers run a Python without Airflow, are in ``test_spark_clusters.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import BLOCKED_DB_ENV

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _kafka_count(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "real-worker-count"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def test_the_python_workers_run_with_the_blocked_metadata_db(spark) -> None:
    """The harness: a Python UDF sees the supervisor's setting, and ``import airflow`` fails in it exactly as
    it did in the crash the issue reports (``Could not parse SQLAlchemy URL``)."""
    from pyspark.sql import functions as F

    def probe(_):  # type: ignore[no-untyped-def]  # no hints: PySpark would try to infer a pandas UDF from them
        import os

        try:
            import airflow  # noqa: F401
        except Exception as err:  # the probe reports what happened; the assertion below judges it
            outcome = f"{type(err).__name__}: {err}"
        else:
            outcome = "imported"
        return json.dumps({"env": os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"), "import": outcome})

    seen = json.loads(spark.range(1).select(F.udf(probe, "string")("id")).first()[0])
    assert seen["env"] == BLOCKED_DB_ENV["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "Could not parse SQLAlchemy URL" in seen["import"]


def test_load_with_rejected_rows_dead_letters_them_to_kafka(spark, kafka_bootstrap, unique) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    pg = PostgresHook(postgres_conn_id="postgres_default")
    table, topic = f"public.rw_{unique}", f"rw.load.{unique}"
    pg.run(f"create table {table} (id int primary key, qty int not null check (qty >= 0))")
    rows = [(i, -1 if i % 10 == 0 else i) for i in range(1, 101)]  # 10 rows break the check constraint
    spark.createDataFrame(rows, "id INT, qty INT").repartition(3).createOrReplaceTempView(f"rw_src_{unique}")
    op = ResilientSparkLoadOperator(
        task_id="load", source={"format": "table", "table": f"rw_src_{unique}"},
        target={"type": "postgres", "table": table, "mode": "upsert", "keys": ["id"]},
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": topic}, circuit_breaker=None,
    )
    try:
        result = op.execute(context={})
        assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (100, 90, 10)
        assert pg.get_first(f"select count(*) from {table}")[0] == 90
        assert _kafka_count(kafka_bootstrap, topic) == 10
    finally:
        pg.run(f"drop table if exists {table}")


def test_quality_quarantine_publishes_from_the_executors(spark, tmp_path: Path, kafka_bootstrap, unique) -> None:
    from airflow_etl_provider.operators.quality import DataQualityOperator

    src = tmp_path / "orders"
    rows = [(i, None if i % 7 == 0 else f"u{i}@x.test") for i in range(1, 71)]  # 10 null emails
    spark.createDataFrame(rows, "id BIGINT, email STRING").repartition(3).write.parquet(str(src))
    topic = f"rw.quality.{unique}"
    op = DataQualityOperator(
        task_id="check", source={"format": "parquet", "path": str(src)},
        rules=[{"type": "not_null", "column": "email"}], on_failure="quarantine",
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": topic},
        output={"format": "parquet", "path": str(tmp_path / "clean")},
    )
    result = op.execute(context={})
    assert (result["records_read"], result["records_passed"], result["records_quarantined"]) == (70, 60, 10)
    assert _kafka_count(kafka_bootstrap, topic) == 10


def test_redrive_reads_s3_dead_letters_on_the_executors(spark, unique) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_etl_provider.core.envelope import RunContext
    from airflow_etl_provider.hooks.dead_letter import ERROR_COLUMN, DeadLetterHook
    from airflow_etl_provider.hooks.redrive import read_dead_letters

    bucket = f"rw-{unique}"

    S3Hook(aws_conn_id="aws_default").create_bucket(bucket_name=bucket)
    config = {"type": "s3", "conn_id": "aws_default", "bucket": bucket, "prefix": "dlq"}
    hook = DeadLetterHook(config, pipeline_id="rw", run_context=RunContext("d", "t", "r", 1, "rw"))
    failed = spark.createDataFrame([(i, f"bad {i}") for i in range(25)], f"id INT, {ERROR_COLUMN} STRING")
    assert hook.publish_dataframe(failed.repartition(3), stage="load", key_columns=["id"]).delivered == 25
    back = read_dead_letters(spark, config, schema="id INT")  # the objects are read by mapInArrow on the executors
    assert sorted(r["id"] for r in back.select("id").collect()) == list(range(25))
    assert {r["_dlq_error_message"] for r in back.select("_dlq_error_message").collect()} == {
        f"bad {i}" for i in range(25)}
