"""The smallest end-to-end job through the provider's code.

Builds a small orders DataFrame on the Spark connection ``spark_default`` (embedded ``local[*]``
unless the connection says otherwise), normalises a column with a Python UDF, writes it to
PostgreSQL (``postgres_default``) over JDBC, reads it back and returns the row accounting as XCom.

Run it against the local stack: ``make demo``, or
``set -a; . .local/airflow.env; set +a; airflow dags test example_etl_hello``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


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
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType

        from airflow_etl_provider.hooks.postgres import SparkPostgresHook
        from airflow_etl_provider.hooks.spark import SparkSessionHook

        pg = SparkPostgresHook(postgres_conn_id="postgres_default")
        with SparkSessionHook(spark_conn_id="spark_default", app_name="example_etl_hello").session() as spark:
            status = F.udf(lambda i: ["NEW", "PAID", "SHIPPED"][i % 3], StringType())
            df = (
                spark.range(rows)
                .withColumnRenamed("id", "order_id")
                .withColumn("amount", (F.col("order_id") % 97 + 0.5).cast("decimal(10,2)"))
                .withColumn("status", status(F.col("order_id")))
            )
            read = df.count()
            df.write.format("jdbc").options(**pg.jdbc_options(dbtable=table, truncate="true")).mode(
                "overwrite"
            ).save()
            loaded = spark.read.format("jdbc").options(**pg.jdbc_options(dbtable=table)).load().count()
        return {
            "records_read": read,
            "records_loaded": loaded,
            "records_dead_lettered": 0,
            "target": f"postgres_default:{table}",
        }

    spark_to_postgres()


example_etl_hello()
