"""Seed success metric: the time from the end of a task to its metrics being readable from the Pushgateway's API.

Each round runs a real ``ResilientSparkLoadOperator`` (a small CSV into Parquet, embedded Spark, one row that
cannot be parsed, so it dead-letters too) with ``metrics=["pushgateway"]``, while a poller thread reads
``GET /api/v1/metrics`` every 20 ms until the round's group (a fresh task id) shows its ``etl_rows_read``.

* **export latency** = first moment the group was readable - the moment the task's work ended (the run
  summary's ``finished_at``, taken when the operator's work returned or raised, before any metric is sent);
* **task overhead** = when ``execute()`` returned - ``finished_at``: what emitting the metrics added to the task.

Goal (seed): export latency < 10 s. Under a real scheduler the metrics are pushed before ``execute()`` returns,
so they are readable before Airflow even records the task's end.

Run: ``make services-up; set -a; . .local/airflow.env; set +a; .venv/bin/python benchmarks/bench_metrics_latency.py``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

from _common import percentile


def _readable(url: str, task_id: str) -> bool:
    with urlopen(f"{url}/api/v1/metrics", timeout=5) as resp:
        groups = json.load(resp)["data"]
    return any(g["labels"].get("task_id") == task_id and "etl_rows_read" in g for g in groups)


def one_round(url: str, workdir: Path) -> tuple[float, float]:
    from prometheus_client import delete_from_gateway

    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    task_id = f"bench_latency_{uuid.uuid4().hex[:10]}"
    src = workdir / f"{task_id}.csv"
    src.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(1000)) + "not-a-number,x\n")
    op = ResilientSparkLoadOperator(
        task_id=task_id,
        source={
            "format": "csv",
            "path": str(src),
            "options": {"header": "true"},
            "schema": "id INT, name STRING",
        },
        target={"type": "parquet", "path": str(workdir / task_id), "mode": "overwrite"},
        dead_letter={"type": "file", "path": str(workdir / "dlq")},
        circuit_breaker=None,
        metrics=[{"type": "pushgateway", "url": url}],
    )
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            if _readable(url, task_id):
                seen["at"] = time.time()
                return
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    op.execute(context={})
    returned = time.time()
    poller.join(30)
    stop.set()
    summary = op.etl_run_summary
    if "at" not in seen:
        raise SystemExit(
            f"round {task_id}: metrics not readable within 30 s; deliveries: {summary['metrics']}"
        )
    delete_from_gateway(
        url, job="airflow_etl", grouping_key={"dag_id": summary["dag_id"], "task_id": task_id}
    )
    return seen["at"] - summary["finished_at"], returned - summary["finished_at"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--url", default=os.environ.get("AIRFLOW_ETL_PUSHGATEWAY_URL"))
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("no Pushgateway: load .local/airflow.env or pass --url")
    latencies, overheads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        one_round(args.url, Path(tmp))  # warm-up: Spark's first session
        for _ in range(args.rounds):
            latency, overhead = one_round(args.url, Path(tmp))
            latencies.append(latency)
            overheads.append(overhead)
    print(f"rounds={args.rounds}")
    print(
        f"export latency (task end -> readable from {args.url}/api/v1/metrics): median "
        f"{statistics.median(latencies) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms (goal < 10 s)"
    )
    print(
        f"task overhead (task end -> execute() returned): median {statistics.median(overheads) * 1000:.0f} ms, "
        f"max {max(overheads) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
