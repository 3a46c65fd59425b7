"""Dead-letter queues against the real broker, S3 server and filesystem, published from Spark executors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_etl_provider.core.envelope import RunContext
from airflow_etl_provider.core.errors import DeadLetterUnavailableError
from tests.integration.conftest import consume_kafka

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "order_id INT, email STRING, amount DECIMAL(10,2), _etl_error STRING, _etl_failed_rules ARRAY<STRING>"


def _failed_rows(spark, n: int = 30, partitions: int = 3):
    rows = [(i, f"user{i}@example.com" if i % 2 else None, Decimal(f"{i}.50"),
             f'null value in column "email" violates not-null constraint (row {i})',
             ["email_not_null"] if i % 3 == 0 else None) for i in range(n)]
    return spark.createDataFrame(rows, SCHEMA).repartition(partitions)


def _hook(config: dict, try_number: int = 1, spool_dir: str | None = None):
    from airflow_etl_provider.hooks.dead_letter import DeadLetterHook

    rc = RunContext(dag_id="orders_dag", task_id="load_orders", run_id="manual__2026-11-25T10:00:00",
                    try_number=try_number, pipeline_id="orders-pipeline")
    return DeadLetterHook(config, pipeline_id="orders-pipeline", run_context=rc, spool_dir=spool_dir)


def test_kafka_dlq_envelopes_and_headers_read_by_an_independent_consumer(spark, kafka_bootstrap, unique) -> None:
    topic = f"orders.dlq.{unique}"
    hook = _hook({"type": "kafka", "conn_id": "kafka_default", "topic": topic})
    result = hook.publish_dataframe(_failed_rows(spark), stage="load", key_columns=["order_id"],
                                    source="parquet:/data/orders", target="postgres_default:public.orders")
    assert (result.delivered, result.spooled) == (30, 0)

    msgs = consume_kafka(kafka_bootstrap, topic, 30)
    assert len(msgs) == 30
    by_id = {}
    for msg in msgs:
        env = json.loads(msg.value())
        by_id[env["record"]["order_id"]] = (msg, env)
    assert sorted(by_id) == list(range(30))

    msg, env = by_id[3]
    assert msg.key() == b"3"  # the business key
    assert env["record"] == {"order_id": 3, "email": "user3@example.com", "amount": "3.50"}
    assert env["pipeline_id"] == "orders-pipeline" and env["stage"] == "load"
    assert env["error_message"].startswith('null value in column "email"')
    assert env["failed_rules"] == ["email_not_null"]
    assert (env["dag_id"], env["task_id"], env["run_id"], env["try_number"]) == (
        "orders_dag", "load_orders", "manual__2026-11-25T10:00:00", 1)
    assert env["source"] == "parquet:/data/orders" and env["target"] == "postgres_default:public.orders"
    for key in ("timestamp", "error_class", "attempt", "context", "envelope_id", "stack_trace"):
        assert key in env
    headers = {k: v.decode() for k, v in msg.headers()}
    assert headers["__etl.errors.stage"] == "load"
    assert headers["__etl.errors.pipeline.id"] == "orders-pipeline"
    assert headers["__etl.errors.exception.message"].startswith('null value in column "email"')
    assert headers["__etl.errors.rules"] == "email_not_null"
    assert headers["__etl.errors.envelope.id"] == env["envelope_id"]
    assert "__etl.errors.class.name" in headers


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_s3_dlq_objects_unique_per_try_and_partition(spark, unique, fmt) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket = f"dlq-{unique}"
    S3Hook(aws_conn_id="aws_default").create_bucket(bucket_name=bucket)
    config = {"type": "s3", "bucket": bucket, "prefix": "dead-letters", "format": fmt, "partition_by": "hour"}
    df = _failed_rows(spark, n=30, partitions=3)
    first = _hook(config, try_number=1).publish_dataframe(df, stage="load", key_columns=["order_id"])
    again = _hook(config, try_number=1).publish_dataframe(df, stage="load", key_columns=["order_id"])
    second = _hook(config, try_number=2).publish_dataframe(df, stage="load", key_columns=["order_id"])
    assert first.delivered == again.delivered == second.delivered == 30

    keys = S3Hook(aws_conn_id="aws_default").list_keys(bucket_name=bucket, prefix="dead-letters/")
    assert len(keys) == 6, keys  # 3 partitions x 2 tries; re-running try 1 rewrote the same 3 keys
    assert sorted(first.locations) == sorted(again.locations)
    assert not set(first.locations) & set(second.locations)
    for key in keys:
        assert "/dt=" in key and "/hour=" in key and "/try=" in key and "orders-pipeline" in key

    from airflow_etl_provider.hooks.redrive import read_dead_letters

    back = read_dead_letters(spark, _hook(config).config, schema="order_id INT, email STRING, amount DECIMAL(10,2)",
                             prefix="dead-letters")
    assert back.count() == 60
    assert sorted(r.order_id for r in back.where("_dlq_try_number = 1").collect()) == list(range(30))
    row = back.where("order_id = 5 and _dlq_try_number = 2").first()
    assert row.amount == Decimal("5.50") and row.email == "user5@example.com" and row._dlq_stage == "load"


def test_file_dlq_and_redrive_restores_columns(spark, tmp_path) -> None:
    from airflow_etl_provider.hooks.redrive import read_dead_letters

    config = {"type": "file", "path": str(tmp_path / "dlq")}
    res = _hook(config).publish_dataframe(_failed_rows(spark, n=12, partitions=2), stage="quality",
                                          key_columns=["order_id"])
    assert res.delivered == 12
    files = sorted((tmp_path / "dlq").rglob("*.jsonl.gz"))
    assert len(files) == 2
    lines = [json.loads(x) for f in files for x in gzip.decompress(f.read_bytes()).splitlines()]
    assert sorted(e["record"]["order_id"] for e in lines) == list(range(12))

    back = read_dead_letters(spark, config)  # schema inferred from a dead letter
    assert sorted(r.order_id for r in back.collect()) == list(range(12))
    assert set(back.columns) >= {"order_id", "email", "amount", "_dlq_error_message", "_dlq_failed_rules"}


def test_kafka_dlq_down_spools_everything_and_replay_delivers_it(spark, kafka_bootstrap, unique, tmp_path) -> None:
    topic = f"orders.dlq.down.{unique}"
    dead = {"type": "kafka", "topic": topic,
            "config": {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 2000}}
    hook = _hook(dead, spool_dir=str(tmp_path / "spool"))
    hook.sink.retry = hook.sink.retry.model_copy(update={"max_attempts": 2, "initial_delay_s": 0.1})
    with pytest.raises(DeadLetterUnavailableError) as info:
        hook.publish_dataframe(_failed_rows(spark, n=20, partitions=2), stage="load", key_columns=["order_id"])
    err = info.value
    assert err.rows == 20
    assert "airflow-etl dlq replay-spool" in err.replay_command and str(tmp_path / "spool") in str(err)
    spooled = [json.loads(x) for f in sorted((tmp_path / "spool").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert sorted(e["record"]["order_id"] for e in spooled) == list(range(20))

    # The broker is "back" (the real one): replay the spool with the CLI the error message names.
    out = subprocess.run(
        [sys.executable, "-m", "airflow_etl_provider.cli", "dlq", "replay-spool", str(tmp_path / "spool"),
         "--to", "kafka", "--topic", topic, "--bootstrap-servers", kafka_bootstrap],
        capture_output=True, text=True, env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    assert "replayed 20 dead letters" in out.stdout
    msgs = consume_kafka(kafka_bootstrap, topic, 20)
    assert sorted(json.loads(m.value())["record"]["order_id"] for m in msgs) == list(range(20))


def test_cli_dlq_read_prints_restored_rows(spark, unique, tmp_path) -> None:
    config = {"type": "file", "path": str(tmp_path / "dlq")}
    _hook(config).publish_dataframe(_failed_rows(spark, n=4, partitions=1), stage="load")
    out = subprocess.run(
        [sys.executable, "-m", "airflow_etl_provider.cli", "dlq", "read", "--from", "file",
         "--path", str(tmp_path / "dlq"), "--schema", "order_id INT, email STRING", "--limit", "10"],
        capture_output=True, text=True, env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert sorted(r["order_id"] for r in rows) == [0, 1, 2, 3]


def test_kafka_partial_delivery_spools_only_the_rejected_messages(kafka_bootstrap, unique, tmp_path) -> None:
    """The broker rejects some messages (too large for the topic): only those are retried and spooled;
    the others are delivered exactly once."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from airflow_etl_provider.hooks.dead_letter import envelopes_from_rows

    topic = f"orders.dlq.small.{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": "3000"})])[topic].result(30)
    import base64

    big = base64.b64encode(os.urandom(6000)).decode()  # incompressible: lz4 cannot shrink it under the limit
    rows = [{"order_id": i, "note": big if i % 10 == 0 else "ok"} for i in range(50)]
    envelopes = list(envelopes_from_rows(rows, "rejected by the target", stage="load", pipeline_id="p",
                                         key_columns=["order_id"]))
    hook = _hook({"type": "kafka", "topic": topic, "config": {"bootstrap.servers": kafka_bootstrap}},
                 spool_dir=str(tmp_path / "spool"))
    hook.sink.retry = hook.sink.retry.model_copy(update={"max_attempts": 2, "initial_delay_s": 0.05})
    with pytest.raises(DeadLetterUnavailableError) as info:
        hook.publish(envelopes, batch_size=20)
    assert info.value.rows == 5
    spooled = [json.loads(x) for f in (tmp_path / "spool").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert sorted(e["record"]["order_id"] for e in spooled) == list(range(0, 50, 10))
    msgs = consume_kafka(kafka_bootstrap, topic, 45)
    assert sorted(json.loads(m.value())["record"]["order_id"] for m in msgs) == [i for i in range(50) if i % 10]
