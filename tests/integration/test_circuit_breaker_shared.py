"""The circuit breaker's state is shared through the real Airflow metadata DB (Airflow Variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy, CircuitState, variable_key
from airflow_etl_provider.core.errors import CircuitOpenError
from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore, breaker_for

ROOT = Path(__file__).resolve().parents[2]

OTHER_PROCESS = """
import json, sys
from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.errors import CircuitOpenError
from airflow_etl_provider.hooks.circuit_breaker import breaker_for
b = breaker_for(CircuitBreakerPolicy(failure_threshold=2, reset_timeout_s=300), sys.argv[1])
try:
    b.before_call()
    print(json.dumps({"admitted": True}))
except CircuitOpenError as e:
    print(json.dumps({"admitted": False, "retry_at": e.retry_at.isoformat(), "message": str(e)}))
"""

IMPATIENT_PROCESS = """
import json, sys, time
from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.errors import CircuitOpenError
from airflow_etl_provider.hooks.circuit_breaker import breaker_for
b = breaker_for(CircuitBreakerPolicy(failure_threshold=9, reset_timeout_s=float(sys.argv[2])), sys.argv[1])
try:
    b.before_call()
    print(json.dumps({"admitted": True, "now": time.time()}))
except CircuitOpenError as e:
    print(json.dumps({"admitted": False, "retry_at": e.retry_at.timestamp(), "now": time.time()}))
"""


def _other_process(name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", OTHER_PROCESS, name], capture_output=True, text=True,
                         env=os.environ, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _impatient_process(name: str, reset_timeout_s: float) -> dict:
    out = subprocess.run([sys.executable, "-c", IMPATIENT_PROCESS, name, str(reset_timeout_s)],
                         capture_output=True, text=True, env=os.environ, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_process_honours_the_openers_policy_stored_in_the_variable(unique) -> None:
    """Another process configured with a 1 s reset timeout still waits for the opener's 300 s."""
    from airflow.models import Variable

    name = f"pg_policy_{unique}"
    opener = breaker_for(CircuitBreakerPolicy(failure_threshold=2, reset_timeout_s=300), name)
    try:
        for _ in range(2):
            opener.record_failure(ConnectionRefusedError("connection refused"))
        stored = json.loads(Variable.get(variable_key(name)))
        assert stored["opened_with"] == {"reset_timeout_s": 300.0, "failure_threshold": 2,
                                         "half_open_max_attempts": 1}
        time.sleep(1.5)  # longer than the other process's own reset timeout
        seen = _impatient_process(name, 1.0)
        assert seen["admitted"] is False
        assert seen["retry_at"] == pytest.approx(stored["opened_at"] + 300, abs=0.001)
        assert json.loads(Variable.get(variable_key(name)))["state"] == "open"  # no trial was taken
    finally:
        AirflowVariableBreakerStore().delete(name)


def test_an_old_document_without_a_policy_is_read_with_the_readers_own(unique) -> None:
    from airflow.models import Variable

    name = f"pg_oldpolicy_{unique}"
    opened_at = time.time() - 10
    old = {"state": "open", "consecutive_failures": 5, "opened_at": opened_at, "failure_ids": [],
           "trial_ids": [], "success_ids": [], "last_error": "OperationalError: down", "updated_at": opened_at,
           "updated_by": "an older provider", "version": 4}
    Variable.set(variable_key(name), json.dumps(old))
    try:
        refused = _impatient_process(name, 60.0)
        assert refused["admitted"] is False and refused["retry_at"] == pytest.approx(opened_at + 60, abs=0.001)
        assert _impatient_process(name, 5.0)["admitted"] is True  # its own 5 s have passed: the trial
        assert json.loads(Variable.get(variable_key(name)))["state"] == "half_open"
    finally:
        AirflowVariableBreakerStore().delete(name)


def test_state_is_shared_between_two_processes_through_the_metadata_db(unique) -> None:
    from airflow.models import Variable

    name = f"pg_{unique}"
    breaker = breaker_for(CircuitBreakerPolicy(failure_threshold=2, reset_timeout_s=300), name)
    assert _other_process(name)["admitted"] is True

    for _ in range(2):
        breaker.record_failure(ConnectionRefusedError("connection refused"))
    assert breaker.state().state is CircuitState.OPEN

    seen = _other_process(name)
    assert seen["admitted"] is False
    assert variable_key(name) in seen["message"]  # tells a person which Variable to reset

    stored = json.loads(Variable.get(variable_key(name)))  # visible to a person, as JSON
    assert stored["state"] == "open" and stored["consecutive_failures"] == 2

    breaker.reset(who="test")  # a person resets it (the CLI does the same)
    assert _other_process(name)["admitted"] is True
    AirflowVariableBreakerStore().delete(name)


def test_data_errors_do_not_open_the_shared_breaker(unique) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    name = f"pg_data_{unique}"
    breaker = breaker_for(CircuitBreakerPolicy(failure_threshold=2), name)
    hook = PostgresHook()
    hook.run(f"create table nn_{unique} (v int not null)")
    try:
        for _ in range(5):
            with pytest.raises(Exception, match="violates not-null constraint"):
                breaker.call(hook.run, f"insert into nn_{unique} values (null)")
        assert breaker.state().state is CircuitState.CLOSED
    finally:
        hook.run(f"drop table nn_{unique}")
        AirflowVariableBreakerStore().delete(name)


def test_cli_breaker_status_and_reset(unique) -> None:
    name = f"cli_{unique}"
    breaker = breaker_for(CircuitBreakerPolicy(failure_threshold=1, reset_timeout_s=300), name)
    breaker.record_failure(TimeoutError("timed out"))
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    cli = [sys.executable, "-m", "airflow_etl_provider.cli", "breaker"]
    status = subprocess.run([*cli, "status", name], capture_output=True, text=True, env=os.environ, check=True)
    assert json.loads(status.stdout[status.stdout.index("{"):])["state"] == "open"
    subprocess.run([*cli, "reset", name], capture_output=True, text=True, env=os.environ, check=True)
    breaker.before_call()  # admitted again
    AirflowVariableBreakerStore().delete(name)


@pytest.mark.slow
def test_eight_concurrent_workers_against_a_dead_postgres() -> None:
    """The measurement behind the README's consistency model (benchmarks/breaker_race.py)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/breaker_race.py"), "--workers", "8", "--seconds", "10",
         "--reset-timeout", "3", "--json"],
        capture_output=True, text=True, env=os.environ, timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(report))
    workers, threshold, cycles = 8, 5, report["half_open_cycles"]
    # Design bound (SharedCircuitBreaker docstring): per open cycle, at most
    # threshold + half_open_max_attempts + (concurrency - 1) attempts reach the system.
    assert threshold <= report["attempts_before_first_open"] <= threshold + workers - 1
    assert report["attempts_after_first_open"] <= cycles * (1 + workers - 1)
    assert report["refused"] > 0
