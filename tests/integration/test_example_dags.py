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


def test_demo_summary_reads_the_runs_back(dagbag) -> None:
    """What `make demo` prints after its runs (this module's DAG runs are in the metadata DB by now)."""
    import os
    import subprocess
    import sys

    root = DAGS_DIR.parent
    out = subprocess.run([sys.executable, str(root / "scripts/demo_summary.py"), "example_etl_hello",
                          "example_etl_resilience"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rows: read=1000  loaded=1000  dead_lettered=0" in out.stdout
    assert "rows: read=1000  loaded=980  dead_lettered=20" in out.stdout
    assert "dead_letter_location: kafka topic example.orders.dlq" in out.stdout


def _xcom(dag_id: str, run_id: str, task_id: str, key: str):
    import json
    import os

    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as db:
        row = db.execute(text("select value from xcom where dag_id=:d and run_id=:r and task_id=:t and key=:k"),
                         {"d": dag_id, "r": run_id, "t": task_id, "k": key}).first()
    engine.dispose()
    if row is None:
        return None
    value = row.value
    if isinstance(value, str | bytes):  # a JSON document, or an already-decoded string value
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@pytest.mark.spark
def test_example_data_quality_quarantines_then_loads_the_clean_rows(dagbag, spark, kafka_bootstrap) -> None:
    from pathlib import Path
    from urllib.parse import urlparse

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    before = _topic_size(kafka_bootstrap, "example.orders.quality.dlq")
    run = dagbag.get_dag("example_data_quality").test()
    assert run.state == "success"
    result = _xcom("example_data_quality", run.run_id, "check_orders", "return_value")
    # 2000 rows: 8 fail a quarantine rule (the duplicated id fails on both of its rows), 1992 go on
    assert (result["records_read"], result["records_passed"], result["records_quarantined"]) == (2000, 1992, 8)
    assert _topic_size(kafka_bootstrap, "example.orders.quality.dlq") - before == 8
    assert PostgresHook().get_first("select count(*) from public.demo_orders_clean where order_id in "
                                    "(4, 6, 9, 14, 21, 35, 56)")[0] == 0
    load = _xcom("example_data_quality", run.run_id, "load_clean_orders", "return_value")
    assert load["records_read"] == load["records_loaded"] == 1992
    # the extra link: pushed at the end of the task, pointing at the HTML page that was written
    link = _xcom("example_data_quality", run.run_id, "check_orders", "_link_DataQualityReportLink")
    assert link and link.startswith("file://") and Path(urlparse(link).path).read_text().count("Summary") >= 1
    assert result["report"]["profile"]["columns"]["status"]["approx_distinct"] == 6
    # what `make demo` prints for it
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(DAGS_DIR.parent / "scripts/demo_summary.py"), "example_data_quality"],
                         capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "quality: warn  rows: read=2000  passed=1992  quarantined=8" in out.stdout
    assert "report_path: " in out.stdout and "unique(order_id)" in out.stdout
    # where the metrics went (the stack's env sets [etl_provider] metrics_backends) and a few read back
    assert os.environ["AIRFLOW__ETL_PROVIDER__METRICS_BACKENDS"] == "airflow_stats,pushgateway"
    gateway = os.environ["AIRFLOW_ETL_PUSHGATEWAY_URL"]
    assert f"metrics -> pushgateway: {gateway}/metrics/job/airflow_etl/dag_id/example_data_quality/" in out.stdout
    assert "metrics -> airflow_stats: airflow Stats" in out.stdout
    assert f"Metrics read back from the Pushgateway ({gateway}/api/v1/metrics):" in out.stdout
    assert (f"example_data_quality.check_orders: etl_rows_read={result['records_read']}  "
            f"etl_rows_dead_lettered={result['records_quarantined']}  "
            f"etl_rows_quarantined={result['records_quarantined']}") in out.stdout
    assert (f"example_data_quality.load_clean_orders: etl_rows_read={load['records_read']}  "
            f"etl_rows_loaded={load['records_loaded']}  etl_rows_dead_lettered=0") in out.stdout
