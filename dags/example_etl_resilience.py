"""The resilience layer end to end: retry + a shared circuit breaker + a dead-letter queue.

1. ``check_target`` runs a query on ``postgres_default`` through a guard: transient errors are retried
   with full-jitter backoff, and every attempt passes through the circuit breaker shared by all tasks
   on that connection (Airflow Variable ``etl_circuit_breaker__postgres_default``). While it is open
   the task is rescheduled to the moment it turns half-open instead of hammering the database.
2. ``load_with_dead_letters`` builds an orders DataFrame in which some rows break the table's rules,
   writes the good rows to PostgreSQL over JDBC and sends the bad ones, each with its error, to the
   Kafka DLQ ``example.orders.dlq`` (published from the Spark executors, delivery confirmed), then checks
   ``read == loaded + dead_lettered``.

Read the dead letters back with ``airflow-etl dlq read --from kafka --topic example.orders.dlq``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, get_current_context, task

DLQ = {"type": "kafka", "conn_id": "kafka_default", "topic": "example.orders.dlq"}
TABLE = "public.example_orders"


@dag(
    dag_id="example_etl_resilience",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["airflow-etl-provider", "example"],
    default_args={"owner": "data-platform"},
    doc_md=__doc__,
)
def example_etl_resilience() -> None:
    @task
    def check_target() -> dict:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from airflow_etl_provider.core.errors import CircuitOpenError, classify_postgres
        from airflow_etl_provider.operators.resilience import guard_for, raise_for_open_circuit

        guard = guard_for(
            "postgres_default",
            retry={"maxAttempts": 5, "initialDelayMs": 500, "maxDelayMs": 10000, "jitter": True},
            circuit_breaker={"enabled": True, "failureThreshold": 5, "resetTimeoutSeconds": 60},
            classifier=classify_postgres,
            context=get_current_context(),
        )
        hook = PostgresHook(postgres_conn_id="postgres_default")
        try:
            guard.call(hook.run, f"create table if not exists {TABLE} "
                                 "(order_id int primary key, email text not null, amount numeric(10,2) "
                                 "check (amount >= 0))")
        except CircuitOpenError as err:
            raise_for_open_circuit(err, on_open="reschedule")
        return {"attempts": guard.stats.attempts, "retries": guard.stats.retries,
                "circuit_state": guard.breaker.state().state.value if guard.breaker else "disabled"}

    @task
    def load_with_dead_letters(rows: int = 1000) -> dict:
        from pyspark.sql import functions as F

        from airflow_etl_provider.core.errors import RowAccountingError
        from airflow_etl_provider.hooks.dead_letter import ERROR_COLUMN, DeadLetterHook
        from airflow_etl_provider.hooks.postgres import SparkPostgresHook
        from airflow_etl_provider.hooks.spark import SparkSessionHook
        from airflow_etl_provider.operators.resilience import run_context

        context = get_current_context()
        pg = SparkPostgresHook(postgres_conn_id="postgres_default")
        dlq = DeadLetterHook(DLQ, pipeline_id="example_orders", run_context=run_context(context))
        with SparkSessionHook(spark_conn_id="spark_default", app_name="example_etl_resilience").session() as spark:
            orders = (
                spark.range(rows).withColumnRenamed("id", "order_id")
                .withColumn("order_id", F.col("order_id").cast("int"))
                .withColumn("email", F.when(F.col("order_id") % 97 == 0, F.lit(None))
                            .otherwise(F.concat(F.lit("c"), F.col("order_id").cast("string"), F.lit("@shop.test"))))
                .withColumn("amount", F.when(F.col("order_id") % 101 == 0, F.lit(-1))
                            .otherwise(F.col("order_id") % 500 + 0.99).cast("decimal(10,2)"))
            ).cache()
            error = (F.when(F.col("email").isNull(), F.lit('null value in column "email" violates not-null constraint'))
                     .when(F.col("amount") < 0, F.lit('new row violates check constraint "example_orders_amount_check"')))
            tagged = orders.withColumn(ERROR_COLUMN, error)
            good = tagged.where(F.col(ERROR_COLUMN).isNull()).drop(ERROR_COLUMN)
            bad = tagged.where(F.col(ERROR_COLUMN).isNotNull())
            read = orders.count()
            good.write.format("jdbc").options(**pg.jdbc_options(dbtable=TABLE, truncate="true")).mode("overwrite").save()
            loaded = pg.get_first(f"select count(*) from {TABLE}")[0]
            published = dlq.publish_dataframe(bad, stage="load", key_columns=["order_id"],
                                              source="generated:orders", target=f"postgres_default:{TABLE}")
        if read != loaded + published.delivered:
            raise RowAccountingError(f"read={read} != loaded={loaded} + dead_lettered={published.delivered}")
        return {"records_read": read, "records_loaded": loaded, "records_dead_lettered": published.delivered,
                "dead_letter_location": dlq.location, "target": f"postgres_default:{TABLE}"}

    check_target() >> load_with_dead_letters()


example_etl_resilience()
