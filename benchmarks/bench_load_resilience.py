"""P1: what the resilience layer costs when nothing goes wrong.

ResilientSparkLoadOperator upserts the same 1M realistic order rows (10 columns: ints, strings, decimals,
timestamps) from Parquet into a PostgreSQL table holding half the keys, twice per round:

* *ours*: retry (5 attempts, full jitter) + the circuit breaker shared through Airflow Variables (real
  metadata DB) + a Kafka dead-letter queue (idempotent producer, acks=all) -- all enabled;
* *peer*: the same operator with all three disabled (``retry`` 1 attempt, ``circuit_breaker=None``,
  ``dead_letter=None``): the bare load engine.

No faults are injected, so the difference is pure overhead (Variable reads, guard bookkeeping, the DLQ
producer start). Rounds alternate the order (ABBA...) on one shared SparkSession; the medians are compared.
Goal: ratio <= 1.03. Run::

    set -a; . .local/airflow.env; set +a
    .venv/bin/python benchmarks/bench_load_resilience.py [--rows 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path

from _common import peak_rss_mb, proc_peak_rss_mb, result_line

ROOT = Path(__file__).resolve().parents[1]
BENCH_ID = "load_resilience_enabled_vs_disabled"


def make_orders(rows: int) -> str:
    """1M realistic orders as Parquet under .local/bench (reused when present)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ROOT / ".local" / "bench" / f"p1_orders_{rows}"
    if (path / "_SUCCESS").exists():
        return str(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    ids = np.arange(rows, dtype=np.int64)
    base = datetime(2026, 1, 1)
    table = pa.table({
        "order_id": ids,
        "customer_id": rng.integers(1, 200_000, rows),
        "email": [f"customer{i % 200_000}@shop.test" for i in range(rows)],
        "status": rng.choice(["NEW", "PAID", "SHIPPED", "CANCELLED"], rows),
        "country": rng.choice(["FR", "DE", "ES", "IT", "NL", "BE"], rows),
        "sku": [f"SKU-{i % 5000:05d}" for i in range(rows)],
        "quantity": rng.integers(1, 10, rows).astype(np.int32),
        "amount": pa.array([f"{v:.2f}" for v in rng.uniform(1, 500, rows)]).cast(pa.decimal128(12, 2)),
        "created_at": pa.array([base + timedelta(seconds=int(s)) for s in rng.integers(0, 86400 * 300, rows)],
                               pa.timestamp("us", tz="UTC")),
        "note": rng.choice(["", "gift", "express", "fragile item, handle with care"], rows),
    })
    pq.write_table(table, path / "part-0.parquet", row_group_size=200_000)
    (path / "_SUCCESS").touch()
    return str(path)


def prepare_table(table: str, rows: int) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    pg = PostgresHook(postgres_conn_id="postgres_default")
    pg.run(f"drop table if exists {table}")
    pg.run(f"""create table {table} (order_id bigint primary key, customer_id bigint not null, email text not null,
               status text not null, country varchar(2), sku text, quantity int check (quantity > 0),
               amount numeric(12,2) not null check (amount >= 0), created_at timestamptz not null, note text)""")
    pg.run(f"""insert into {table} select g, 1, 'old@shop.test', 'NEW', 'FR', 'SKU', 1, 1, now(), ''
               from generate_series(0, {rows // 2 - 1}) g""")
    pg.run(f"analyze {table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import logging

    for noisy in ("airflow_etl_provider", "airflow.task.hooks", "airflow.task.operators"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pyspark.sql import SparkSession

    from airflow_etl_provider.hooks.spark import SparkSessionHook
    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    data = make_orders(args.rows)
    conf = SparkSessionHook("spark_default", {"spark.master": "local[2]", "spark.driver.memory": "2g"}).resolve_conf()
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()  # the operators reuse this active session
    table = "public.bench_p1_orders"
    target = {"type": "postgres", "conn_id": "postgres_default", "table": table, "mode": "upsert",
              "keys": ["order_id"]}
    topic = f"bench.p1.dlq.{int(time.time())}"
    variants = {
        "ours": dict(retry={"max_attempts": 5, "initial_delay_s": 1, "jitter": "full"},
                     circuit_breaker={"name": f"bench_p1_{int(time.time())}", "failure_threshold": 5},
                     dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": topic}),
        "peer": dict(retry={"max_attempts": 1}, circuit_breaker=None, dead_letter=None),
    }
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    order = ["ours", "peer", "peer", "ours"] * args.rounds
    print(f"{args.rows:,} rows from {data}; {len(order) // 2} runs each, alternating; warm-up first")
    for i, name in enumerate(["peer", *order]):
        prepare_table(table, args.rows)
        op = ResilientSparkLoadOperator(task_id=f"p1_{name}", source={"format": "parquet", "path": data},
                                        target=target, spark_conn_id="spark_default", **variants[name])
        t0 = time.perf_counter()
        result = op.execute(context={})
        elapsed = time.perf_counter() - t0
        assert result["records_read"] == args.rows == result["records_loaded"], result
        if i == 0:
            print(f"  warm-up (not counted): {elapsed:.2f} s")
            continue
        times[name].append(elapsed)
        print(f"  {name:<4} {elapsed:.2f} s")
    ours, peer = statistics.median(times["ours"]), statistics.median(times["peer"])
    jvm_pid = spark.sparkContext._gateway.proc.pid if spark.sparkContext._gateway.proc else None  # type: ignore[union-attr]
    jvm = proc_peak_rss_mb(jvm_pid) if jvm_pid else None
    print(f"median ours {ours:.2f} s vs peer {peer:.2f} s: overhead {100 * (ours / peer - 1):+.1f}% "
          f"(goal <= +3%: {'met' if ours / peer <= 1.03 else 'NOT met'})")
    print(f"peak RSS: driver {peak_rss_mb():.0f} MiB, Spark JVM {jvm:.0f} MiB" if jvm else
          f"peak RSS: driver {peak_rss_mb():.0f} MiB")
    spark.stop()
    print(result_line(BENCH_ID, ours, peer))


if __name__ == "__main__":
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    main()
