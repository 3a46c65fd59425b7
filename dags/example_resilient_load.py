"""ResilientSparkLoadOperator end to end: an idempotent upsert with poison rows sent to a Kafka DLQ.

``prepare`` writes a day of orders to Parquet (3 rows break the target's rules: a NULL email, a negative
amount, a country code that is too long) and makes sure ``public.demo_orders`` exists and already holds
half of the keys. ``load_orders`` upserts the day, staged with COPY from the executors (``stage_method:
copy``): the good rows are applied atomically in one transaction, the three bad ones go to the Kafka topic
``example.orders.load.dlq`` with PostgreSQL's own error message, and the result (XCom) accounts for every
row: read = loaded + dead-lettered.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task

from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

DATA_DIR = os.environ.get("AIRFLOW_ETL_DEMO_DATA", os.path.join(os.getcwd(), ".local", "demo"))
TABLE = "public.demo_orders"


@dag(
    dag_id="example_resilient_load",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["airflow-etl-provider", "example"],
    default_args={"owner": "data-platform"},
    doc_md=__doc__,
)
def example_resilient_load() -> None:
    @task
    def prepare(ds: str | None = None, rows: int = 2000) -> str:
        from decimal import Decimal

        import pyarrow as pa
        import pyarrow.parquet as pq
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        pg = PostgresHook(postgres_conn_id="postgres_default")
        pg.run(f"create table if not exists {TABLE} (order_id int primary key, email text not null, "
               "amount numeric(10,2) not null check (amount >= 0), country varchar(2), "
               "updated_at timestamptz not null)")
        pg.run(f"truncate {TABLE}")
        pg.run(f"insert into {TABLE} select g, 'old' || g || '@shop.test', 1, 'FR', now() "
               f"from generate_series(0, {rows // 2 - 1}) g")
        now = datetime.now()
        table = pa.table({
            "order_id": list(range(rows)),
            "email": [None if i == 7 else f"c{i}@shop.test" for i in range(rows)],
            "amount": [Decimal("-5.00") if i == 11 else Decimal(i % 300) + Decimal("0.99") for i in range(rows)],
            "country": ["FRANCE" if i == 13 else ("DE" if i % 2 else "FR") for i in range(rows)],
            "updated_at": [now] * rows,
        })
        path = os.path.join(DATA_DIR, "orders", ds or "manual")
        os.makedirs(path, exist_ok=True)
        pq.write_table(table, os.path.join(path, "part-0.parquet"))
        return path

    load = ResilientSparkLoadOperator(
        task_id="load_orders",
        source={"format": "parquet", "path": "{{ ti.xcom_pull(task_ids='prepare') }}"},
        # stage_method copy: COPY from the executors (they need psycopg and pyarrow), about half the staging cost
        target={"type": "postgres", "conn_id": "postgres_default", "table": TABLE, "mode": "upsert",
                "keys": ["order_id"], "stage_method": "copy"},
        retry={"maxAttempts": 5, "initialDelayMs": 500, "maxDelayMs": 10000, "jitter": True},
        circuit_breaker={"enabled": True, "failureThreshold": 5, "resetTimeoutSeconds": 60},
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": "example.orders.load.dlq"},
    )
    prepare() >> load


example_resilient_load()
