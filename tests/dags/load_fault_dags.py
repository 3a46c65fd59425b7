"""Test-only DAG (run by tests/integration/test_load_faults.py with this folder as DAGS_FOLDER).

One ResilientSparkLoadOperator task that appends a Parquet source into a PostgreSQL table with the
operator's *default* load id (``<dag>.<task>.<run_id>``), so that a retry of the same task instance (same
run id) is idempotent while a new run is not. The test kills the process mid-load and runs the task again.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag

from airflow_etl_provider.operators.load import ResilientSparkLoadOperator


@dag(dag_id="test_load_fault_kill", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def _kill_dag() -> None:
    ResilientSparkLoadOperator(
        task_id="load",
        source={"format": "parquet", "path": os.environ.get("ETL_TEST_SOURCE", "/nonexistent")},
        target={"type": "postgres", "conn_id": os.environ.get("ETL_TEST_CONN", "postgres_default"),
                "table": os.environ.get("ETL_TEST_TABLE", "public.never_loaded"), "mode": "append"},
        retry={"max_attempts": 2, "initial_delay_s": 0.2},
        circuit_breaker=None,
        dead_letter={"type": "file", "path": os.environ.get("ETL_TEST_DLQ", "/tmp/etl-test-dlq")},
        spark_conf={"spark.master": "local[2]", "spark.ui.enabled": "false"},
    )


_kill_dag()
