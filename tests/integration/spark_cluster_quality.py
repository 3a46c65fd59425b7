"""Run by test_spark_clusters.py in its own process: DataQualityOperator.execute() on a given Spark
connection (standalone cluster or Spark Connect). argv: spark_conn_id parquet_dir out_dir dlq_dir report."""

from __future__ import annotations

import json
import sys

from airflow_etl_provider.operators.quality import DataQualityOperator


def main(conn_id: str, path: str, out: str, dlq_dir: str, report: str) -> None:
    op = DataQualityOperator(
        task_id="cluster_quality",
        source={"format": "parquet", "path": path},
        rules=[{"type": "not_null", "column": "name"}, {"type": "unique", "columns": ["id"]},
               {"type": "regex", "column": "name", "pattern": "^n[0-9]+$"}, {"type": "row_count", "min": 10},
               {"name": "sql_ids", "type": "sql", "query": "SELECT min(id) FROM data", "geq_to": 0}],
        on_failure="quarantine",
        dead_letter={"type": "file", "path": dlq_dir},
        output={"format": "parquet", "path": out},
        key_columns=["id"], profile=True, report_path=report,
        spark_conn_id=conn_id,
    )
    print("RESULT " + json.dumps(op.execute(context={}), default=str), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
