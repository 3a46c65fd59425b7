"""The example DAGs in dags/ import cleanly and run end to end with ``dag.test()`` on the local stack."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_example_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "example_etl_hello" in dagbag.dag_ids


@pytest.mark.spark
def test_example_etl_hello_runs(dagbag, spark) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    dag = dagbag.get_dag("example_etl_hello")
    run = dag.test()
    assert run.state == "success"
    assert PostgresHook().get_first("select count(*) from public.demo_hello_orders")[0] == 1000
