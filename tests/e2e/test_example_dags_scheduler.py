"""Every example DAG succeeds under the real scheduler and LocalExecutor, triggered through the REST API.

This is the permanent form of the real-worker check of issue #10: under ``airflow dags test`` all of them
passed while, under a real worker, every task that dead-letters rows from the Spark executors crashed (the
Task SDK supervisor blocks the metadata DB in the task process, and Spark's Python workers inherit that).
Each of these DAGs dead-letters rows from the executors, so each run proves the executor-side code needs no
Airflow where it runs.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import AirflowRestApi, wait_for

pytestmark = [pytest.mark.e2e]

#: dag_id -> (the task whose XCom accounts for the rows, its XCom key for the rows it sent to the DLQ from the
#: executors, how many: a number, or the XCom key under which the task counted the rows it planted on its input,
#: as one count or per error class)
EXAMPLES = {
    "example_resilient_load": ("load_orders", "records_dead_lettered", 3),
    "example_etl_resilience": ("load_with_dead_letters", "records_dead_lettered", "planted"),
    "example_data_quality": ("check_orders", "records_quarantined", 8),
    "example_etl_hello": ("spark_to_postgres", "records_dead_lettered", "planted_lost_orders"),
}


def _expected(result: dict, expected: int | str) -> int:
    if isinstance(expected, int):
        return expected
    planted = result[expected]
    return sum(planted.values()) if isinstance(planted, dict) else int(planted)


@pytest.mark.timeout(1500)
def test_every_example_dag_succeeds_under_the_scheduler(airflow_api: AirflowRestApi) -> None:
    runs = {}
    for dag_id in EXAMPLES:
        airflow_api.ensure_unpaused(dag_id)
        runs[dag_id] = airflow_api.trigger(dag_id, {})
    try:
        for dag_id, run_id in runs.items():
            state = wait_for(lambda d=dag_id, r=run_id: (s if (s := airflow_api.run_state(d, r)) in ("success", "failed")
                                                         else None),
                             timeout=1200, interval=3, what=f"{dag_id} run {run_id} to finish",
                             last=lambda d=dag_id, r=run_id: str(airflow_api.task_states(d, r)))
            assert state == "success", f"{dag_id}: {airflow_api.task_states(dag_id, run_id)}"
            assert {s for s, _try in airflow_api.task_states(dag_id, run_id).values()} == {"success"}
        for dag_id, (task_id, key, expected) in EXAMPLES.items():
            result = airflow_api.xcom(dag_id, runs[dag_id], task_id)
            assert result[key] == _expected(result, expected) > 0, (dag_id, result)
    finally:
        for dag_id, run_id in runs.items():
            airflow_api.fail_run_if_unfinished(dag_id, run_id)


@pytest.mark.timeout(1500)
def test_the_streaming_example_captures_exactly_the_late_orders_under_the_scheduler(airflow_api: AirflowRestApi) -> None:
    """Two runs of example_streaming: the second reads only what the second produced, and exactly its
    two-hour-old orders are late (the first run's watermark is then ~10 minutes behind its newest order)."""
    dag_id = "example_streaming"
    airflow_api.ensure_unpaused(dag_id)
    results = []
    for conf in ({"events": 1000, "late_share": 0.0}, {"events": 2000, "late_share": 0.05}):
        run_id = airflow_api.trigger(dag_id, conf)
        try:
            state = wait_for(lambda r=run_id: (s if (s := airflow_api.run_state(dag_id, r)) in ("success", "failed")
                                               else None),
                             timeout=900, interval=3, what=f"{dag_id} run {run_id} to finish",
                             last=lambda r=run_id: str(airflow_api.task_states(dag_id, r)))
        finally:
            airflow_api.fail_run_if_unfinished(dag_id, run_id)
        assert state == "success", airflow_api.task_states(dag_id, run_id)
        results.append((airflow_api.xcom(dag_id, run_id, "produce_orders"),
                        airflow_api.xcom(dag_id, run_id, "orders_per_5min")))
    (_, _), (produced, stream) = results
    assert stream["input_rows"] == produced["produced"] == 2000  # only the new orders
    assert produced["two_hours_old"] > 0
    assert stream["late_rows"] == produced["two_hours_old"]
    assert stream["window_pairs"] == stream["aggregated_rows"] + stream["late_rows"]
    assert stream["dead_letter_location"].startswith("kafka topic example.orders.late")
