"""The smallest end-to-end job through the provider's code.

Builds a small orders DataFrame on the Spark connection ``spark_default`` (embedded ``local[*]``
unless the connection says otherwise), derives a status with a Python UDF, and loads it into PostgreSQL
(``postgres_default``) with the provider's ``PostgresLoader``. The table only allows the statuses ``NEW``,
``PAID`` and ``SHIPPED`` (a CHECK constraint) and the UDF says ``LOST`` for every 250th order: PostgreSQL
refuses those rows, the loader keeps the others, and the refused rows land with PostgreSQL's message in a file
dead-letter queue (``$AIRFLOW_ETL_DEMO_DATA/hello/dead-letters``, else ``$AIRFLOW_HOME/dead-letters/hello``).
The XCom has the row accounting, read = loaded + dead-lettered, and how many ``LOST`` orders the input held.

Run it against the local stack: ``make demo``, or
``set -a; . .local/airflow.env; set +a; airflow dags test example_etl_hello``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context, task


@dag(
    dag_id="example_etl_hello",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["airflow-etl-provider", "example"],
    default_args={"owner": "data-platform"},
    doc_md=__doc__,
)
def example_etl_hello() -> None:
    @task
    def spark_to_postgres(table: str = "public.demo_hello_orders", rows: int = 1000) -> dict:
        import os

        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType

        from airflow_etl_provider.core.errors import RowAccountingError
        from airflow_etl_provider.hooks.dead_letter import DeadLetterHook
        from airflow_etl_provider.hooks.postgres import SparkPostgresHook
        from airflow_etl_provider.hooks.postgres_load import PostgresLoader
        from airflow_etl_provider.hooks.spark import SparkSessionHook
        from airflow_etl_provider.operators.resilience import run_context

        PostgresHook(postgres_conn_id="postgres_default").run([
            f"drop table if exists {table}",  # the demo's own table, recreated with its constraint every run
            f"create table {table} (order_id bigint primary key, amount numeric(10,2) not null, "
            "status text not null check (status in ('NEW', 'PAID', 'SHIPPED')))",
        ])
        base = os.environ.get("AIRFLOW_ETL_DEMO_DATA")
        folder = os.path.join(base, "hello", "dead-letters") if base else os.path.join(
            os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "dead-letters", "hello")
        dlq = DeadLetterHook({"type": "file", "path": folder}, pipeline_id="example_etl_hello",
                             run_context=run_context(get_current_context()))
        with SparkSessionHook(spark_conn_id="spark_default", app_name="example_etl_hello").session() as spark:
            status = F.udf(lambda i: "LOST" if i % 250 == 0 else ["NEW", "PAID", "SHIPPED"][i % 3], StringType())
            df = (
                spark.range(rows)
                .withColumnRenamed("id", "order_id")
                .withColumn("amount", (F.col("order_id") % 97 + 0.5).cast("decimal(10,2)"))
                .withColumn("status", status(F.col("order_id")))
            ).cache()
            lost = df.where(F.col("status") == "LOST").count()  # planted, counted on the input
            loader = PostgresLoader(SparkPostgresHook(postgres_conn_id="postgres_default"), table, "append")
            outcome = loader.load(df)
            dead = 0
            if outcome.rejected is not None:
                dead = dlq.publish_dataframe(outcome.rejected, stage="load", key_columns=["order_id"],
                                             target=f"postgres_default:{table}").delivered
                loader.record_dead_letters(delivered=True, location=dlq.location)  # the DLQ confirmed them all
        if outcome.records_read != outcome.records_loaded + dead:
            raise RowAccountingError(f"read={outcome.records_read} != loaded={outcome.records_loaded} + "
                                     f"dead_lettered={dead}")
        return {
            "records_read": outcome.records_read,
            "records_loaded": outcome.records_loaded,
            "records_dead_lettered": dead,
            "planted_lost_orders": lost,
            "dead_letter_location": dlq.location if dead else None,
            "target": f"postgres_default:{table}",
        }

    spark_to_postgres()


example_etl_hello()
