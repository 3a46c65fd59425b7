"""Run by test_streaming_clusters.py in its own process (one SparkContext per JVM): StreamingWatermarkOperator
.execute() on a given Spark connection (standalone cluster or Spark Connect), ``runs`` times, like consecutive
task runs: each run builds its own SparkSession (and stops it) and starts the query again from the checkpoint.

argv: spark_conn_id topic table workdir window_json runs. The checkpoint is ``<workdir>/checkpoint``, the file
DLQ ``<workdir>/dlq``. After each run the operator's result is printed as ``RESULT <json>``; before each run
after the first the driver waits for a line on stdin (the test produces the next events meanwhile)."""

from __future__ import annotations

import json
import sys

from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

SCHEMA = "order_id STRING, customer STRING, amount DECIMAL(12,2), event_time TIMESTAMP"


def main(conn_id: str, topic: str, table: str, workdir: str, window: str, runs: str) -> None:
    for run in range(int(runs)):
        if run and not sys.stdin.readline():
            return  # the test is gone
        op = StreamingWatermarkOperator(
            task_id="orders_per_5min",
            source={"type": "kafka", "conn_id": "kafka_default", "topic": topic, "starting_offsets": "earliest",
                    "format": "json", "schema": SCHEMA},
            event_time_column="event_time", watermark="10 minutes", window=json.loads(window),
            group_by=["customer"],
            aggregations={"amount": ["sum", "avg", "min", "max"], "*": ["count"],
                          "order_id": ["approx_count_distinct"]},
            sink={"type": "postgres", "conn_id": "postgres_default", "table": table},
            checkpoint_location=f"{workdir}/checkpoint",
            late_data={"dead_letter": {"type": "file", "path": f"{workdir}/dlq"}},
            pipeline_id=f"cluster.{table}",
            spark_conn_id=conn_id,
            spark_conf={"spark.sql.shuffle.partitions": "4"},
        )
        print("RESULT " + json.dumps(op.execute(context={}), default=str), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:7])
