"""The same provider code on the ways users scale out: a Spark Connect server and a standalone cluster
(master + worker), both started from the pyspark install by scripts/stack.sh.

Their Python workers run ``.local/executor-venv`` (``make executor-venv``): ``requirements-executor.txt`` and
this package installed with ``--no-deps``, no Airflow, as on a real cluster. So these tests also prove that
the dead-letter publisher, the COPY writer, the quality quarantine and the redrive need no Airflow on the
executors (issue #10)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("spark_cluster_job.py")

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def orders_topic(kafka_bootstrap: str) -> str:
    import uuid

    from confluent_kafka import Producer

    topic = f"cluster-orders-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(50):
        producer.produce(topic, key=str(i), value=json.dumps({"order_id": i, "qty": i % 5}))
    assert producer.flush(30) == 0
    return topic


def _start(service: str) -> None:
    subprocess.run([str(ROOT / "scripts/stack.sh"), "up", service], check=True, timeout=240)


def _run_job(conn_id: str, topic: str, dlq_dir: Path) -> dict:
    out = subprocess.run([sys.executable, str(JOB), conn_id, topic, str(dlq_dir)], capture_output=True,
                         text=True, env=os.environ, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])


def _dead_letters(dlq_dir: Path) -> list[dict]:
    return [json.loads(x) for f in dlq_dir.rglob("*.jsonl.gz") for x in gzip.decompress(f.read_bytes()).splitlines()]


@pytest.mark.parametrize(("service", "conn_id"), [("spark-standalone", "spark_standalone"),
                                                  ("spark-connect", "spark_connect_default")])
def test_provider_code_runs_on_a_cluster(service: str, conn_id: str, orders_topic: str, tmp_path: Path) -> None:
    _start(service)
    summary = _run_job(conn_id, orders_topic, tmp_path / "dlq")
    assert summary["total"] == 50
    assert summary["qty3_sum"] == 3 * sum(i % 5 for i in range(50))  # the Python UDF ran on the cluster
    assert summary["dead_lettered"] == 10  # qty == 0 rows, published from the executors
    letters = _dead_letters(tmp_path / "dlq")
    assert sorted(e["record"]["order_id"] for e in letters) == [i for i in range(50) if i % 5 == 0]
    assert summary["redriven"] == 10  # the dead letters read back by mapInArrow on the executors
    # the Kafka DLQ: the JVM publisher on the standalone cluster's executors (writer "jvm": it would have raised
    # if it could not run there), the Python workers' publisher from a Spark Connect client
    assert (summary["kafka_dead_lettered"], summary["kafka_writer"]) == (
        10, "jvm" if service == "spark-standalone" else "python")
    # the executors ran the Python without Airflow
    assert summary["executor"] == {"python": str(ROOT / ".local/executor-venv/bin/python"), "airflow": False}
    if service == "spark-standalone":
        assert summary["master"].startswith("spark://127.0.0.1:")


@pytest.mark.parametrize(("service", "conn_id"), [("spark-standalone", "spark_standalone"),
                                                  ("spark-connect", "spark_connect_default")])
def test_load_operator_on_a_cluster(service: str, conn_id: str, tmp_path: Path) -> None:
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    _start(service)
    table = f"public.cluster_{uuid.uuid4().hex[:8]}"
    pg = PostgresHook(postgres_conn_id="postgres_default")
    pg.run(f"create table {table} (id int primary key, name text not null)")
    pg.run(f"insert into {table} select g, 'old' from generate_series(0, 49) g")
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": list(range(100)), "name": [None if i in (3, 60) else f"n{i}" for i in range(100)]}),
                   src / "part-0.parquet")
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("spark_cluster_load.py")), conn_id, str(src),
                          table, str(tmp_path / "dlq")], capture_output=True, text=True, env=os.environ, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    try:
        assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (100, 98, 2)
        assert pg.get_first(f"select count(*), count(*) filter (where name = 'old') from {table}") == (99, 1)
        assert sorted(e["record"]["id"] for e in _dead_letters(tmp_path / "dlq")) == [3, 60]
    finally:
        pg.run(f"drop table {table}")


@pytest.mark.parametrize(("service", "conn_id"), [("spark-standalone", "spark_standalone"),
                                                  ("spark-connect", "spark_connect_default")])
def test_quality_operator_on_a_cluster(service: str, conn_id: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _start(service)
    src = tmp_path / "src"
    src.mkdir()
    names = [None if i == 3 else ("bad name" if i == 7 else f"n{i}") for i in range(100)]
    ids = [41 if i == 42 else i for i in range(100)]  # 41 twice
    pq.write_table(pa.table({"id": ids, "name": names}), src / "part-0.parquet")
    out, report = tmp_path / "clean", tmp_path / "report.html"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("spark_cluster_quality.py")), conn_id, str(src),
                           str(out), str(tmp_path / "dlq"), str(report)], capture_output=True, text=True,
                          env=os.environ, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    assert (result["records_read"], result["records_passed"], result["records_quarantined"]) == (100, 96, 4)
    assert sorted(e["record"]["id"] for e in _dead_letters(tmp_path / "dlq")) == [3, 7, 41, 41]
    assert pq.read_table(out).num_rows == 96
    assert "Summary" in report.read_text()
    # samples: observed (min_by) in the aggregation's scan, on the cluster's executors
    samples = {r["name"]: r["samples"] for r in result["report"]["rules"]}
    assert samples["not_null(name)"] == [{"id": 3, "name": None}]
    assert [s["id"] for s in samples["regex(name)"]] == [7]
    assert samples["unique(id)"] == [{"id": 41, "occurrences": 2}]
    assert 94 <= result["report"]["profile"]["columns"]["id"]["approx_distinct"] <= 104  # HLL++, 5 % error
