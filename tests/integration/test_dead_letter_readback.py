"""Dead letters read back from the real Kafka broker (with offsets), replayed into PostgreSQL by the CLI, and
spooled into the default folder when the DLQ is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from airflow_etl_provider.core.errors import DeadLetterUnavailableError
from tests.integration.conftest import consume_kafka
from tests.integration.test_dead_letter import _failed_rows, _hook

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = "order_id INT, email STRING, amount DECIMAL(10,2)"


def _one_partition_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)


def test_read_dead_letters_from_kafka_between_offsets(spark, kafka_bootstrap, unique) -> None:
    from airflow_etl_provider.hooks.redrive import read_dead_letters

    topic = f"orders.dlq.read.{unique}"
    _one_partition_topic(kafka_bootstrap, topic)
    config = {"type": "kafka", "topic": topic, "config": {"bootstrap.servers": kafka_bootstrap}}
    published = _hook(config).publish_dataframe(
        _failed_rows(spark, n=12, partitions=1), stage="load", key_columns=["order_id"]
    )
    assert published.delivered == 12
    # what an independent consumer sees at each offset: the oracle for the offset range
    by_offset = {m.offset(): json.loads(m.value()) for m in consume_kafka(kafka_bootstrap, topic, 12)}
    assert sorted(by_offset) == list(range(12))

    start, end = 3, 8  # Spark's endingOffsets is exclusive
    back = read_dead_letters(
        spark,
        config,
        schema=ORIGINAL,
        starting_offsets=json.dumps({topic: {"0": start}}),
        ending_offsets=json.dumps({topic: {"0": end}}),
    )
    rows = back.collect()
    assert sorted(r["_dlq_location"] for r in rows) == sorted(f"{topic}:0:{o}" for o in range(start, end))
    for r in rows:
        envelope = by_offset[int(r["_dlq_location"].rsplit(":", 1)[1])]
        assert r["order_id"] == envelope["record"]["order_id"]
        assert r["email"] == envelope["record"]["email"]
        assert r["amount"] == Decimal(str(envelope["record"]["amount"]))
        assert r["_dlq_envelope_id"] == envelope["envelope_id"]
        assert r["_dlq_error_message"] == envelope["error_message"]

    everything = read_dead_letters(spark, config)  # default: earliest to latest, schema inferred
    assert sorted(r["order_id"] for r in everything.collect()) == sorted(
        e["record"]["order_id"] for e in by_offset.values()
    )


def test_cli_dlq_replay_from_kafka_into_postgres(spark, kafka_bootstrap, unique) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    topic, table = f"orders.dlq.replay.{unique}", f"public.replay_{unique}"
    pg = PostgresHook()
    pg.run(f"create table {table} (order_id int primary key, email text, amount numeric(10,2))")
    config = {"type": "kafka", "topic": topic, "config": {"bootstrap.servers": kafka_bootstrap}}
    try:
        published = _hook(config).publish_dataframe(
            _failed_rows(spark, n=9, partitions=3), stage="load", key_columns=["order_id"]
        )
        sent = {
            json.loads(m.value())["record"]["order_id"]: json.loads(m.value())["record"]
            for m in consume_kafka(kafka_bootstrap, topic, published.delivered)
        }
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "airflow_etl_provider.cli",
                "dlq",
                "replay",
                "--from",
                "kafka",
                "--topic",
                topic,
                "--bootstrap-servers",
                kafka_bootstrap,
                "--to-postgres",
                table,
            ],
            capture_output=True,
            text=True,
            env=os.environ,
            timeout=600,
            cwd=str(ROOT),
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"replayed {len(sent)} dead letters into {table}" in out.stdout
        loaded = {r[0]: r for r in pg.get_records(f"select order_id, email, amount from {table}")}
        assert sorted(loaded) == sorted(sent)
        for order_id, record in sent.items():
            assert loaded[order_id][1] == record["email"]
            assert loaded[order_id][2] == Decimal(str(record["amount"]))
    finally:
        pg.run(f"drop table if exists {table}")


def _down_kafka_hook(**kwargs):
    dead = {
        "type": "kafka",
        "topic": "never.delivered",
        "config": {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 1500},
    }
    hook = _hook(dead, **kwargs)
    hook.sink.retry = hook.sink.retry.model_copy(update={"max_attempts": 1, "initial_delay_s": 0.05})
    return hook


def _envelopes(n: int):
    from airflow_etl_provider.hooks.dead_letter import envelopes_from_rows

    return list(
        envelopes_from_rows(
            [{"order_id": i} for i in range(n)],
            "refused",
            stage="load",
            pipeline_id="p",
            key_columns=["order_id"],
        )
    )


def _spooled_ids(folder: Path) -> list[int]:
    return sorted(
        json.loads(x)["record"]["order_id"]
        for f in folder.glob("*.jsonl")
        for x in f.read_text().splitlines()
    )


def test_default_spool_folder_follows_the_environment(spark, tmp_path, monkeypatch) -> None:
    """No spool_dir: ``$AIRFLOW_ETL_DLQ_SPOOL``, else ``$AIRFLOW_HOME/dlq-spool``, else ``./.local/dlq-spool``;
    the executors spool where the driver resolved it."""
    monkeypatch.delenv("AIRFLOW_ETL_DLQ_SPOOL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    with pytest.raises(DeadLetterUnavailableError) as home:
        _down_kafka_hook().publish(_envelopes(4))
    assert home.value.rows == 4 and str(tmp_path / "home" / "dlq-spool") in str(home.value)
    assert _spooled_ids(tmp_path / "home" / "dlq-spool") == [0, 1, 2, 3]

    monkeypatch.setenv("AIRFLOW_ETL_DLQ_SPOOL", str(tmp_path / "explicit"))  # wins over AIRFLOW_HOME
    with pytest.raises(DeadLetterUnavailableError):
        _down_kafka_hook().publish_dataframe(
            _failed_rows(spark, n=6, partitions=2), stage="load", key_columns=["order_id"]
        )  # spooled by the executors
    assert _spooled_ids(tmp_path / "explicit") == list(range(6))

    monkeypatch.delenv("AIRFLOW_ETL_DLQ_SPOOL")
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.chdir(tmp_path / "home")
    with pytest.raises(DeadLetterUnavailableError):
        _down_kafka_hook().publish(_envelopes(2))
    assert _spooled_ids(tmp_path / "home" / ".local" / "dlq-spool") == [0, 1]
