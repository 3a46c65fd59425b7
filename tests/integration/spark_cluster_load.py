"""Run by test_spark_clusters.py in its own process: ResilientSparkLoadOperator.execute() on a given Spark
connection (standalone cluster or Spark Connect). argv: spark_conn_id parquet_dir table dlq_dir."""

from __future__ import annotations

import json
import sys

from airflow_etl_provider.operators.load import ResilientSparkLoadOperator


def main(conn_id: str, path: str, table: str, dlq_dir: str) -> None:
    op = ResilientSparkLoadOperator(
        task_id="cluster_load",
        source={"format": "parquet", "path": path},
        target={"type": "postgres", "conn_id": "postgres_default", "table": table, "mode": "upsert",
                "keys": ["id"]},
        dead_letter={"type": "file", "path": dlq_dir},
        circuit_breaker=None,
        spark_conn_id=conn_id,
    )
    print("RESULT " + json.dumps(op.execute(context={}), default=str), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
