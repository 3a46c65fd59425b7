"""The circuit breaker's state is shared through the real Airflow metadata DB (Airflow Variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _other_process(name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", OTHER_PROCESS, name], capture_output=True, text=True,
                         env=os.environ, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
