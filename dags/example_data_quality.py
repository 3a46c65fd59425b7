"""Data quality, then load: bad rows are quarantined to Kafka, the clean rows are upserted into PostgreSQL.

``prepare`` writes a day of orders to Parquet with a few planted problems: NULL and malformed e-mails, a
negative amount, an unknown status, a duplicated order id, a three-letter country code, an order shipped
before it was placed. ``check_orders`` evaluates the rules of ``rules/orders_quality.yaml`` in one pass
(one aggregation for every row-level rule), quarantines the failing rows to the Kafka topic
``example.orders.quality.dlq`` (each with the names of the rules it failed), writes the rows that pass
to Parquet for the next task, keeps per-run metrics in ``public.etl_dq_history`` (the baseline of the
``row_count_change`` rule) and writes an HTML report, linked from the task in the Airflow UI as "Data
quality report". ``load_clean_orders`` upserts what passed; every row is accounted for:
read = passed + quarantined, and passed = loaded.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task

from airflow_etl_provider.operators.load import ResilientSparkLoadOperator
from airflow_etl_provider.operators.quality import DataQualityOperator

DATA_DIR = os.environ.get("AIRFLOW_ETL_DEMO_DATA", os.path.join(os.getcwd(), ".local", "demo"))
REPORT_DIR = os.environ.get("AIRFLOW_ETL_REPORT_DIR", os.path.join(os.getcwd(), ".local", "reports"))
TABLE = "public.demo_orders_clean"
RUN = "{{ run_id | replace(':', '') | replace('+', '') }}"

# The planted problems: row index -> what is wrong with it.
PLANTED = {
    3: "email is NULL",
    5: "email is not an e-mail",
    8: "amount is negative",
    13: "status is unknown",
    21: "order_id repeats row 20",
    34: "country has three letters",
    55: "shipped before ordered",
}


@dag(
    dag_id="example_data_quality",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["airflow-etl-provider", "example"],
    default_args={"owner": "data-platform"},
    doc_md=__doc__,
)
def example_data_quality() -> None:
    @task
    def prepare(run_id: str | None = None, rows: int = 2000) -> str:
        from datetime import timedelta
        from decimal import Decimal

        import pyarrow as pa
        import pyarrow.parquet as pq

        now = datetime.now().replace(microsecond=0)
        statuses = ["new", "paid", "shipped", "delivered", "cancelled"]
        ids = list(range(1, rows + 1))
        ids[21] = ids[20]
        table = pa.table({
            "order_id": pa.array(ids, pa.int64()),
            "email": [None if i == 3 else ("not-an-email" if i == 5 else f"c{i}@shop.test") for i in range(rows)],
            "amount": pa.array([Decimal("-5.00") if i == 8 else Decimal(i % 500) + Decimal("0.99")
                                for i in range(rows)], pa.decimal128(10, 2)),
            "status": ["lost" if i == 13 else statuses[i % 5] for i in range(rows)],
            "country": ["FRA" if i == 34 else ("DE" if i % 2 else "FR") for i in range(rows)],
            "ordered_at": [now - timedelta(minutes=i) for i in range(rows)],
            "shipped_at": [now - timedelta(minutes=i + 5) if i == 55 else (now if i % 3 == 0 else None)
                           for i in range(rows)],
        })
        path = os.path.join(DATA_DIR, "quality", "raw", (run_id or "manual").replace(":", "").replace("+", ""))
        os.makedirs(path, exist_ok=True)
        pq.write_table(table, os.path.join(path, "part-0.parquet"))
        return path

    check = DataQualityOperator(
        task_id="check_orders",
        source={"format": "parquet", "path": "{{ ti.xcom_pull(task_ids='prepare') }}"},
        rules="rules/orders_quality.yaml",
        on_failure="quarantine",
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": "example.orders.quality.dlq"},
        output={"format": "parquet", "path": os.path.join(DATA_DIR, "quality", "clean", RUN)},
        key_columns=["order_id"],
        sample_size=5,
        profile=True,
        report_path=os.path.join(REPORT_DIR, "example_data_quality", f"{RUN}.html"),
        history={"conn_id": "postgres_default", "table": "public.etl_dq_history"},
    )

    load = ResilientSparkLoadOperator(
        task_id="load_clean_orders",
        source={"format": "parquet", "path": "{{ ti.xcom_pull(task_ids='check_orders')['output'] }}"},
        target={"type": "postgres", "conn_id": "postgres_default", "table": TABLE, "mode": "upsert",
                "keys": ["order_id"]},
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": "example.orders.load.dlq"},
    )

    @task
    def create_table() -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id="postgres_default").run(
            f"create table if not exists {TABLE} (order_id bigint primary key, email text not null, "
            "amount numeric(10,2) not null check (amount >= 0), status text not null, country char(2), "
            "ordered_at timestamp not null, shipped_at timestamp)")

    prepare() >> check >> create_table() >> load


example_data_quality()
