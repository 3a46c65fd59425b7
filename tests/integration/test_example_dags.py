"""The example DAGs in dags/ import cleanly and run end to end with ``dag.test()`` on the local stack."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_example_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "example_etl_hello" in dagbag.dag_ids


@pytest.mark.spark
def test_example_etl_hello_runs(dagbag, spark) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    dag = dagbag.get_dag("example_etl_hello")
    run = dag.test()
    assert run.state == "success"
    assert PostgresHook().get_first("select count(*) from public.demo_hello_orders")[0] == 1000


def _topic_size(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "size-probe", "log_level": 0})
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions)
    finally:
        consumer.close()


@pytest.mark.spark
def test_example_etl_resilience_accounts_for_every_row(dagbag, spark, kafka_bootstrap) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    before = _topic_size(kafka_bootstrap, "example.orders.dlq")
    run = dagbag.get_dag("example_etl_resilience").test()
    assert run.state == "success"
    assert PostgresHook().get_first("select count(*) from public.example_orders")[0] == 980
    assert _topic_size(kafka_bootstrap, "example.orders.dlq") - before == 20  # read 1000 = 980 + 20
