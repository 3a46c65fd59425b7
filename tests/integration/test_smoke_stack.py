"""Each service of the local stack is the real thing, reached through the clients users use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_kafka_produce_consume_round_trip(kafka_bootstrap: str, unique: str) -> None:
    from confluent_kafka import Consumer, Producer

    topic = f"smoke-{unique}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    delivered: list[str] = []
    for i in range(10):
        producer.produce(topic, key=str(i), value=json.dumps({"i": i}),
                         on_delivery=lambda err, msg: delivered.append("ok" if err is None else str(err)))
    assert producer.flush(30) == 0
    assert delivered == ["ok"] * 10

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{unique}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = []
    try:
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                seen.append(json.loads(msg.value())["i"])
            if len(seen) == 10:
                break
    finally:
        consumer.close()
    assert sorted(seen) == list(range(10))


def test_s3_put_get_through_s3hook(unique: str) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="aws_default")
    bucket = f"smoke-{unique}"
    hook.create_bucket(bucket_name=bucket)
    hook.load_string("hello s3", key="a/b.txt", bucket_name=bucket)
    assert hook.read_key("a/b.txt", bucket_name=bucket) == "hello s3"
    assert hook.list_keys(bucket_name=bucket, prefix="a/") == ["a/b.txt"]


def test_sql_through_postgreshook(unique: str) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id="postgres_default")
    table = f"smoke_{unique}"
    hook.run(f"create table {table} (id int primary key, name text)")
    try:
        hook.insert_rows(table, [(1, "a"), (2, "b")], target_fields=["id", "name"])
        assert hook.get_first(f"select count(*), max(name) from {table}") == (2, "b")
        assert hook.get_first("select current_database()")[0] == "etl"
    finally:
        hook.run(f"drop table {table}")


def test_pushgateway_push_read_back(unique: str) -> None:
    from prometheus_client import CollectorRegistry, Gauge, delete_from_gateway, push_to_gateway

    url = os.environ["AIRFLOW_ETL_PUSHGATEWAY_URL"]
    registry = CollectorRegistry()
    Gauge("etl_smoke_rows", "rows in the smoke test", registry=registry).set(42)
    job = f"smoke_{unique}"
    push_to_gateway(url, job=job, registry=registry)
    try:
        body = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        lines = [ln for ln in body.splitlines() if ln.startswith("etl_smoke_rows{") and f'job="{job}"' in ln]
        assert len(lines) == 1 and lines[0].endswith(" 42")
    finally:
        delete_from_gateway(url, job=job)


@pytest.mark.spark
def test_spark_reads_kafka_writes_postgres_with_a_python_udf(spark, kafka_bootstrap: str, unique: str) -> None:
    from confluent_kafka import Producer
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegerType

    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

    topic = f"smoke-spark-{unique}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(100):
        producer.produce(topic, key=str(i), value=json.dumps({"order_id": i, "qty": i % 7}))
    assert producer.flush(30) == 0

    raw = (spark.read.format("kafka").option("kafka.bootstrap.servers", kafka_bootstrap)
           .option("subscribe", topic).option("startingOffsets", "earliest").option("endingOffsets", "latest").load())
    parsed = raw.select(F.from_json(F.col("value").cast("string"), "order_id INT, qty INT").alias("o")).select("o.*")
    double_it = F.udf(lambda q: q * 2, IntegerType())  # a real Python UDF: catches a pyspark/pyspark-client mix
    out = parsed.withColumn("qty2", double_it("qty"))

    pg = SparkPostgresHook(postgres_conn_id="postgres_default")
    table = f"smoke_spark_{unique}"
    out.write.format("jdbc").options(**pg.jdbc_options(dbtable=table)).mode("overwrite").save()
    try:
        expected = 2 * sum(i % 7 for i in range(100))
        assert pg.get_first(f"select count(*), sum(qty2), sum(qty) * 2 from {table}") == (100, expected, expected)
    finally:
        pg.run(f"drop table {table}")


def test_airflow_providers_list_shows_the_provider() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "providers", "list", "-o", "json"],
                         capture_output=True, text=True, check=True, env=os.environ)
    rows = json.loads(out.stdout[out.stdout.index("["):])
    assert any(r["package_name"] == "airflow-etl-provider" for r in rows)
