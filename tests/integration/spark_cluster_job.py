"""A small job run by test_spark_clusters.py in its own process (one SparkContext per JVM): it reads
Kafka with the Kafka source, applies a Python UDF, publishes failed rows to the file DLQ from the
executors and to a Kafka DLQ (from the executors' JVM on the standalone cluster), reads the file DLQ back
(redrive, on the executors too), probes what Python the executors run and whether it
has Airflow, and prints a JSON summary. argv: spark_conn_id topic dlq_dir."""

from __future__ import annotations

import json
import os
import sys

from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType

from airflow_etl_provider.core.envelope import RunContext
from airflow_etl_provider.hooks.dead_letter import ERROR_COLUMN, DeadLetterHook
from airflow_etl_provider.hooks.redrive import read_dead_letters
from airflow_etl_provider.hooks.spark import SparkSessionHook


def main(conn_id: str, topic: str, dlq_dir: str) -> None:
    bootstrap = f"127.0.0.1:{os.environ['ETL_STACK_KAFKA_PORT']}"
    with SparkSessionHook(spark_conn_id=conn_id, app_name=f"cluster-test-{conn_id}").session() as spark:
        from pyspark.sql.utils import is_remote

        master = "connect" if is_remote() else spark.sparkContext.master
        raw = (spark.read.format("kafka").option("kafka.bootstrap.servers", bootstrap).option("subscribe", topic)
               .option("startingOffsets", "earliest").option("endingOffsets", "latest").load())
        rows = raw.select(F.from_json(F.col("value").cast("string"), "order_id INT, qty INT").alias("o")).select("o.*")
        triple = F.udf(lambda q: q * 3, IntegerType())
        out = rows.withColumn("qty3", triple("qty")).withColumn(
            ERROR_COLUMN, F.when(F.col("qty") == 0, F.lit("qty must be > 0")))
        total = out.count()
        bad = out.where(F.col(ERROR_COLUMN).isNotNull())
        dlq = DeadLetterHook({"type": "file", "path": dlq_dir}, pipeline_id="cluster-test",
                             run_context=RunContext(pipeline_id="cluster-test", run_id=conn_id, try_number=1))
        res = dlq.publish_dataframe(bad, stage="load", key_columns=["order_id"])
        # the same rows to a Kafka DLQ: from the executors' JVM on the standalone cluster (writer "jvm" fails
        # if it cannot run there), from their Python workers on Spark Connect (no JVM in the client)
        writer = "python" if master == "connect" else "jvm"
        kafka_dlq = DeadLetterHook({"type": "kafka", "topic": f"{topic}-dlq", "writer": "auto" if writer == "python"
                                    else "jvm", "config": {"bootstrap.servers": bootstrap}},
                                   pipeline_id="cluster-test",
                                   run_context=RunContext(pipeline_id="cluster-test", run_id=conn_id, try_number=1))
        kafka_res = kafka_dlq.publish_dataframe(bad, stage="load", key_columns=["order_id"])
        redriven = read_dead_letters(spark, dlq.config, schema="order_id INT, qty INT").count()

        @F.udf("string")
        def probe(_: int) -> str:  # runs in the executors' Python
            import importlib.util
            import sys

            return json.dumps({"python": sys.executable, "airflow": importlib.util.find_spec("airflow") is not None})

        executor = json.loads(spark.range(1).select(probe("id")).first()[0])
        print("RESULT " + json.dumps({"master": master, "total": total, "qty3_sum": out.agg(F.sum("qty3")).first()[0],
                          "dead_lettered": res.delivered, "redriven": redriven, "executor": executor,
                          "kafka_dead_lettered": kafka_res.delivered, "kafka_writer": writer}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
