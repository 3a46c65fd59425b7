"""The whole pipeline, as you would trigger it from the UI: quality check with quarantine, then a resilient load.

1. ``prepare`` writes a batch of orders to Parquet. ``bad_share`` of them carry a planted problem, in turn:
   a NULL e-mail, a negative amount, an unknown status (the quality rules catch these three), and an
   amount over 9,999.99 that the rules allow but the target table's ``CHECK`` refuses.
2. ``check_orders`` (**DataQualityOperator**) evaluates the rules in one pass, quarantines the failing
   rows to the Kafka topic ``example.pipeline.quality.dlq`` (each with the rules it failed), writes the
   rows that pass to Parquet and an HTML report to S3 (``s3://etl-reports``), linked from the task as
   **Data quality report** (a pre-signed URL: the Airflow UI shows only http(s) links, not ``file://`` ones).
3. ``load_orders`` (**ResilientSparkLoadOperator**) upserts the passing rows into ``public.pipeline_orders``
   in one transaction; rows PostgreSQL refuses go to ``example.pipeline.load.dlq`` with its error
   message. Its XCom accounts for every row: read = loaded + dead-lettered.

**Params** (the Trigger form): ``rows``, ``bad_share``, and ``inject_outage``. With ``inject_outage`` the load
targets the connection ``postgres_outage`` (127.0.0.1, a port where nothing listens by default): the
connection attempts fail, the retries back off, the circuit breaker shared through the Airflow Variable
``etl_circuit_breaker__postgres_outage`` opens, and the task goes **up_for_reschedule** until the breaker's
half-open moment (no retry spent, no worker slot held). It then tries once more; when a PostgreSQL is back on
that port (with the table), the run finishes green.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import Param, dag, task

from airflow_etl_provider.operators.load import ResilientSparkLoadOperator
from airflow_etl_provider.operators.quality import DataQualityOperator

DATA_DIR = os.environ.get("AIRFLOW_ETL_DEMO_DATA", os.path.join(os.getcwd(), ".local", "demo"))
REPORT_BUCKET = "etl-reports"
TABLE = "public.pipeline_orders"
RUN = "{{ run_id | replace(':', '') | replace('+', '') }}"
#: The planted problems, in turn; the last one passes the rules and is refused by the table's CHECK.
PROBLEMS = ("email is NULL", "amount is negative", "status is unknown", "amount over the table's limit")
TABLE_DDL = (f"create table if not exists {TABLE} (order_id bigint primary key, email text not null, "
             "amount numeric(10,2) not null check (amount >= 0 and amount < 10000), status text not null, "
             "country char(2), ordered_at timestamp not null)")

RULES = [
    {"type": "not_null", "columns": ["order_id", "email", "amount", "ordered_at"]},
    {"type": "unique", "columns": ["order_id"]},
    {"type": "range", "column": "amount", "min": 0},
    {"type": "allowed_values", "column": "status", "values": ["new", "paid", "shipped", "delivered", "cancelled"]},
    {"type": "length", "column": "country", "min": 2, "max": 2},
    {"type": "row_count", "min": 1},
]


def planted(rows: int, bad_share: float) -> dict[int, str]:
    """Row index -> planted problem: ``round(rows * bad_share)`` rows spread evenly, problems in turn."""
    bad = round(rows * bad_share)
    if bad == 0:
        return {}
    step = rows / bad
    return {int(i * step): PROBLEMS[i % len(PROBLEMS)] for i in range(bad)}


@dag(
    dag_id="example_etl_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["airflow-etl-provider", "example", "pipeline"],
    default_args={"owner": "data-platform"},
    doc_md=__doc__,
    params={
        "rows": Param(20000, type="integer", minimum=10, maximum=2_000_000, title="Rows",
                      description="How many orders to generate and push through the pipeline."),
        "bad_share": Param(0.02, type="number", minimum=0, maximum=0.5, title="Share of bad rows",
                           description="Share of rows with a planted problem: 3 of 4 are caught by the quality "
                                       "rules (quarantined), 1 of 4 is refused by PostgreSQL (dead-lettered)."),
        "inject_outage": Param(False, type="boolean", title="Inject a PostgreSQL outage",
                               description="Load into the connection postgres_outage, where nothing listens: the "
                                           "circuit breaker opens and the load task waits up_for_reschedule."),
    },
)
def example_etl_pipeline() -> None:
    @task
    def prepare(params: dict | None = None, run_id: str | None = None) -> dict:
        from datetime import timedelta
        from decimal import Decimal

        import pyarrow as pa
        import pyarrow.parquet as pq
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        params = params or {}
        rows, share = int(params.get("rows", 20000)), float(params.get("bad_share", 0.02))
        bad = planted(rows, share)
        now = datetime.now().replace(microsecond=0)
        statuses = ["new", "paid", "shipped", "delivered", "cancelled"]
        table = pa.table({
            "order_id": pa.array(range(1, rows + 1), pa.int64()),
            "email": [None if bad.get(i) == PROBLEMS[0] else f"c{i}@shop.test" for i in range(rows)],
            "amount": pa.array([Decimal("-5.00") if bad.get(i) == PROBLEMS[1]
                                else Decimal("12345.00") if bad.get(i) == PROBLEMS[3]
                                else Decimal(i % 500) + Decimal("0.99") for i in range(rows)], pa.decimal128(10, 2)),
            "status": ["lost" if bad.get(i) == PROBLEMS[2] else statuses[i % 5] for i in range(rows)],
            "country": ["DE" if i % 2 else "FR" for i in range(rows)],
            "ordered_at": [now - timedelta(seconds=i) for i in range(rows)],
        })
        path = os.path.join(DATA_DIR, "pipeline", "raw", (run_id or "manual").replace(":", "").replace("+", ""))
        os.makedirs(path, exist_ok=True)
        pq.write_table(table, os.path.join(path, "part-0.parquet"))
        PostgresHook(postgres_conn_id="postgres_default").run(TABLE_DDL)
        s3 = S3Hook(aws_conn_id="aws_default")
        if not s3.check_for_bucket(REPORT_BUCKET):
            s3.create_bucket(bucket_name=REPORT_BUCKET)
        expected = {p: sum(1 for v in bad.values() if v == p) for p in PROBLEMS}
        return {"path": path, "rows": rows, "planted": expected}

    prepared = prepare()

    check = DataQualityOperator(
        task_id="check_orders",
        source={"format": "parquet", "path": "{{ ti.xcom_pull(task_ids='prepare')['path'] }}"},
        rules=RULES,
        on_failure="quarantine",
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": "example.pipeline.quality.dlq"},
        output={"format": "parquet", "path": os.path.join(DATA_DIR, "pipeline", "clean", RUN)},
        key_columns=["order_id"],
        sample_size=5,
        report_path=f"s3://{REPORT_BUCKET}/example_etl_pipeline/{RUN}.html",
    )

    load = ResilientSparkLoadOperator(
        task_id="load_orders",
        source={"format": "parquet", "path": "{{ ti.xcom_pull(task_ids='check_orders')['output'] }}"},
        target={"type": "postgres", "table": TABLE, "mode": "upsert", "keys": ["order_id"],
                "conn_id": "{{ 'postgres_outage' if params.inject_outage else 'postgres_default' }}"},
        retry={"maxAttempts": 3, "initialDelayMs": 200, "maxDelayMs": 2000, "jitter": True},
        circuit_breaker={"enabled": True, "failureThreshold": 3, "resetTimeoutSeconds": 30},
        dead_letter={"type": "kafka", "conn_id": "kafka_default", "topic": "example.pipeline.load.dlq"},
    )

    prepared >> check >> load


example_etl_pipeline()
