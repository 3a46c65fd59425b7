"""The resilience layer end to end: retry + a shared circuit breaker + a dead-letter queue.

1. ``check_target`` runs a query on ``postgres_default`` through a guard: transient errors are retried
   with full-jitter backoff, and every attempt passes through the circuit breaker shared by all tasks
   on that connection (Airflow Variable ``etl_circuit_breaker__postgres_default``). While it is open
   the task is rescheduled to the moment it turns half-open instead of hammering the database.
2. ``load_with_dead_letters`` builds an orders DataFrame in which some rows break the table's rules (a
   missing email: NOT NULL; a negative amount: CHECK; a quantity beyond ``int``: out of range) and loads
   *every* row with the provider's ``PostgresLoader``: PostgreSQL itself refuses the bad rows, the loader
   isolates them (savepoints, bisection) and loads the others in one transaction, and the refused rows go,
   each with PostgreSQL's own message and error class, to the Kafka DLQ ``example.orders.dlq`` (published from
   the Spark executors, delivery confirmed and recorded in ``etl_load_log``). The task checks
   ``read == loaded + dead_lettered`` and returns what it planted next to what the database refused.

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
                                 "check (amount >= 0), quantity int)")
            guard.call(hook.run, f"alter table {TABLE} add column if not exists quantity int")
        except CircuitOpenError as err:
            # rescheduled to the half-open moment plus the policy's bounded jitter (rescheduleJitterSeconds)
            raise_for_open_circuit(err, on_open="reschedule", policy=guard.breaker.policy if guard.breaker else None)
        return {"attempts": guard.stats.attempts, "retries": guard.stats.retries,
                "circuit_state": guard.breaker.state().state.value if guard.breaker else "disabled"}

    @task
    def load_with_dead_letters(rows: int = 1000) -> dict:
        from pyspark.sql import functions as F

        from airflow_etl_provider.core.errors import RowAccountingError
        from airflow_etl_provider.hooks.dead_letter import DeadLetterHook
        from airflow_etl_provider.hooks.postgres import SparkPostgresHook
        from airflow_etl_provider.hooks.postgres_load import PostgresLoader
        from airflow_etl_provider.hooks.spark import SparkSessionHook
        from airflow_etl_provider.operators.resilience import run_context

        context = get_current_context()
        rc = run_context(context)
        dlq = DeadLetterHook(DLQ, pipeline_id="example_orders", run_context=rc)
        with SparkSessionHook(spark_conn_id="spark_default", app_name="example_etl_resilience").session() as spark:
            id_ = F.col("order_id")
            # one planted flaw per bad row (a row breaking two rules would be refused for the first only)
            flaw = (F.when(id_ % 97 == 1, "email").when(id_ % 101 == 2, "amount").when(id_ % 89 == 3, "quantity"))
            orders = (
                spark.range(rows).withColumnRenamed("id", "order_id")
                .withColumn("order_id", id_.cast("int"))
                .withColumn("flaw", flaw)
                .withColumn("email", F.when(F.col("flaw") == "email", F.lit(None))  # NOT NULL
                            .otherwise(F.concat(F.lit("c"), id_.cast("string"), F.lit("@shop.test"))))
                .withColumn("amount", F.when(F.col("flaw") == "amount", F.lit(-1))  # CHECK (amount >= 0)
                            .otherwise(id_ % 500 + 0.99).cast("decimal(10,2)"))
                .withColumn("quantity", F.when(F.col("flaw") == "quantity", F.lit(3_000_000_000))  # beyond int
                            .otherwise(id_ % 7 + 1).cast("bigint"))
            )
            # what was planted, counted on the input (the database is not asked)
            planted = {cls: n for flawed, cls in (("email", "NotNullViolation"), ("amount", "CheckViolation"),
                                                  ("quantity", "NumericValueOutOfRange"))
                       if (n := orders.where(F.col("flaw") == flawed).count())}
            orders = orders.drop("flaw").cache()
            loader = PostgresLoader(SparkPostgresHook(postgres_conn_id="postgres_default"), TABLE, "overwrite",
                                    load_id=f"{rc.dag_id}.{rc.task_id}.{rc.run_id}")  # a retry loads once
            outcome = loader.load(orders)
            dead, refused = 0, {}
            if outcome.rejected is not None:
                refused = {r["_etl_error_class"].rsplit(".", 1)[-1]: r["n"] for r in
                           outcome.rejected.groupBy("_etl_error_class").agg(F.count("*").alias("n")).collect()}
                published = dlq.publish_dataframe(outcome.rejected, stage="load", key_columns=["order_id"],
                                                  source="generated:orders", target=f"postgres_default:{TABLE}")
                loader.record_dead_letters(delivered=True, location=dlq.location)
                dead = published.delivered
        read, loaded = outcome.records_read, outcome.records_loaded
        if read != loaded + dead:
            raise RowAccountingError(f"read={read} != loaded={loaded} + dead_lettered={dead}")
        return {"records_read": read, "records_loaded": loaded, "records_dead_lettered": dead,
                "planted": planted, "refused_by_postgres": refused,
                "dead_letter_location": dlq.location if dead else None, "target": f"postgres_default:{TABLE}"}

    check_target() >> load_with_dead_letters()


example_etl_resilience()
