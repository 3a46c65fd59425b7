"""With the shared breaker open, a real Airflow task is rescheduled to the half-open moment (no worker slot
held, no try spent) or fails fast, and never touches the protected system before that."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore, breaker_for

TEST_DAGS = Path(__file__).resolve().parents[1] / "dags"


def _dags_test(dag_id: str, breaker: str, reset_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS), "ETL_TEST_BREAKER": breaker,
           "ETL_TEST_RESET_S": str(reset_s)}
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "test", dag_id],
                          capture_output=True, text=True, env=env, timeout=300)


def _ti(dag_id: str) -> tuple[str, int]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as db:
        row = db.execute(text("select state, try_number from task_instance where dag_id=:d "
                              "order by start_date desc limit 1"), {"d": dag_id}).one()
    del PostgresHook
    return row.state, row.try_number


def _reschedule_dates(dag_id: str) -> list[float]:
    """The reschedule dates (epoch seconds) of the latest task instance of ``dag_id``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as db:
        rows = db.execute(text("select r.reschedule_date from task_reschedule r join task_instance t on t.id = r.ti_id "
                               "where t.id = (select id from task_instance where dag_id = :d order by start_date desc "
                               "limit 1) order by r.id"), {"d": dag_id}).all()
    engine.dispose()
    return [r.reschedule_date.timestamp() for r in rows]


def test_open_breaker_reschedules_the_task_until_half_open(unique) -> None:
    # the reset timeout must outlast ``airflow dags test``'s start up to the task's first try (~7 s here, over 15 s
    # on a slow CI machine, which then found the breaker already half-open and never rescheduled)
    name, reset_s = f"resched_{unique}", 30.0
    breaker = breaker_for(CircuitBreakerPolicy(failure_threshold=1, reset_timeout_s=reset_s), name)
    opened = breaker.force_open("the database is down (test)")
    opened_at = time.time()
    out = _dags_test("test_breaker_open_reschedule", name, reset_s)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "marking task as UP_FOR_RESCHEDULE" in log, "\n".join(
        ln[:300] for ln in log.splitlines() if "Task started" in ln or "Circuit breaker" in ln or "Created dag run" in ln)
    assert "open -> half_open" in log and "half_open -> closed" in log
    assert time.time() - opened_at >= reset_s  # it waited for the breaker, not for a retry delay
    # the reschedule date Airflow stored: the half-open moment plus at most the policy's jitter, never before
    half_open = opened.opened_at + reset_s
    jitter = CircuitBreakerPolicy(failure_threshold=1, reset_timeout_s=reset_s).jitter_bound_s()
    dates = _reschedule_dates("test_breaker_open_reschedule")
    assert dates and all(half_open - 0.001 <= d <= half_open + jitter + 0.001 for d in dates), (dates, half_open)
    assert _ti("test_breaker_open_reschedule") == ("success", 1)  # no Airflow retry was spent
    AirflowVariableBreakerStore().delete(name)


def test_open_breaker_with_on_open_fail_fails_fast_without_retries(unique) -> None:
    name = f"failfast_{unique}"
    breaker = breaker_for(CircuitBreakerPolicy(failure_threshold=1, reset_timeout_s=600), name)
    breaker.force_open("the database is down (test)")
    out = _dags_test("test_breaker_open_fail", name, 600)
    log = out.stdout + out.stderr
    assert f"Circuit breaker '{name}' is open" in log
    assert f"etl_circuit_breaker__{name}" in log  # the message tells a person how to reset it
    assert "Returned value was: touched" not in log
    assert _ti("test_breaker_open_fail") == ("failed", 1)  # AirflowFailException: retries=2 not used
    AirflowVariableBreakerStore().delete(name)
