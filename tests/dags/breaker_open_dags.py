"""Test-only DAGs (run by tests/integration/test_breaker_reschedule.py with this folder as DAGS_FOLDER).

Each task calls a protected system through a guard whose breaker another process opened beforehand.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, get_current_context, task


def _guarded(on_open: str) -> str:
    from airflow_etl_provider.core.errors import CircuitOpenError
    from airflow_etl_provider.operators.resilience import guard_for, raise_for_open_circuit

    guard = guard_for(
        os.environ.get("ETL_TEST_BREAKER", "test_breaker"),
        retry={"max_attempts": 2, "initial_delay_s": 0.1},
        circuit_breaker={"failure_threshold": 1, "reset_timeout_s": float(os.environ.get("ETL_TEST_RESET_S", "12")),
                         "on_open": on_open},
        context=get_current_context(),
    )
    try:
        return guard.call(lambda: "touched the protected system")
    except CircuitOpenError as err:
        raise_for_open_circuit(err, on_open, policy=guard.breaker.policy if guard.breaker else None)


def _make(mode: str) -> None:
    @dag(dag_id=f"test_breaker_open_{mode}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
    def _d() -> None:
        @task(retries=2)
        def protected_call() -> str:
            return _guarded(mode)

        protected_call()

    _d()


_make("reschedule")
_make("fail")
