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
def test_example_etl_hello_runs_and_postgres_refuses_the_planted_rows(dagbag, spark) -> None:
    import gzip
    import json

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    run = dagbag.get_dag("example_etl_hello").test()
    assert run.state == "success"
    result = _xcom("example_etl_hello", run.run_id, "spark_to_postgres", "return_value")
    pg = PostgresHook()
    in_table = pg.get_first("select count(*) from public.demo_hello_orders")[0]
    assert result["records_read"] == 1000 and result["records_loaded"] == in_table
    assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"]
    # the rows the input planted (counted by the task on its DataFrame) are exactly the rows PostgreSQL refused
    assert result["records_dead_lettered"] == result["planted_lost_orders"] > 0
    assert pg.get_first("select count(*) from public.demo_hello_orders where status not in "
                        "('NEW', 'PAID', 'SHIPPED')")[0] == 0
    folder = Path(result["dead_letter_location"].removeprefix("file://"))
    letters = [json.loads(x) for f in folder.rglob("*.jsonl.gz") for x in gzip.decompress(f.read_bytes()).splitlines()]
    mine = [e for e in letters if e["run_id"] == run.run_id]  # the folder keeps earlier runs' letters too
    assert len(mine) == result["records_dead_lettered"]
    assert {e["record"]["status"] for e in mine} == {"LOST"}
    assert {e["error_class"] for e in mine} == {"psycopg.errors.CheckViolation"}
    assert all("demo_hello_orders_status_check" in e["error_message"] for e in mine)


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
def test_example_etl_resilience_dead_letters_what_postgres_refused(dagbag, spark, kafka_bootstrap) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    before = _topic_size(kafka_bootstrap, "example.orders.dlq")
    run = dagbag.get_dag("example_etl_resilience").test()
    assert run.state == "success"
    result = _xcom("example_etl_resilience", run.run_id, "load_with_dead_letters", "return_value")
    planted = result["planted"]  # counted by the task on its input, per constraint the row breaks
    assert set(planted) == {"NotNullViolation", "CheckViolation", "NumericValueOutOfRange"}
    assert all(n > 0 for n in planted.values())
    assert result["refused_by_postgres"] == planted  # PostgreSQL's own error classes, one per planted row
    assert result["records_dead_lettered"] == sum(planted.values())
    assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"]
    assert PostgresHook().get_first("select count(*) from public.example_orders")[0] == result["records_loaded"]
    assert _topic_size(kafka_bootstrap, "example.orders.dlq") - before == result["records_dead_lettered"]


def _latest_result(dag_id: str, task_id: str) -> dict:
    import os

    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as db:
        run_id = db.execute(text("select run_id from dag_run where dag_id = :d and state = 'success' "
                                 "order by end_date desc limit 1"), {"d": dag_id}).scalar_one()
    engine.dispose()
    return _xcom(dag_id, run_id, task_id, "return_value")


def test_demo_summary_reads_the_runs_back(dagbag) -> None:
    """What `make demo` prints after its runs (this module's DAG runs are in the metadata DB by now)."""
    import os
    import subprocess
    import sys

    root = DAGS_DIR.parent
    out = subprocess.run([sys.executable, str(root / "scripts/demo_summary.py"), "example_etl_hello",
                          "example_etl_resilience"], capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for dag_id, task_id in (("example_etl_hello", "spark_to_postgres"),
                            ("example_etl_resilience", "load_with_dead_letters")):
        r = _latest_result(dag_id, task_id)
        assert (f"rows: read={r['records_read']}  loaded={r['records_loaded']}  "
                f"dead_lettered={r['records_dead_lettered']}") in out.stdout
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
