"""Guard = retry + the shared breaker: what a task sees when the system it protects is down."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_etl_provider.core.circuit_breaker import InMemoryBreakerStore, SharedCircuitBreaker
from airflow_etl_provider.core.errors import CircuitOpenError, DataError
from airflow_etl_provider.core.guard import Guard

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _guard(max_attempts: int, threshold: int, store: InMemoryBreakerStore | None = None) -> Guard:
    breaker = SharedCircuitBreaker("pg", {"failure_threshold": threshold, "reset_timeout_s": 30},
                                   store or InMemoryBreakerStore(), clock=lambda: T0, who="test")
    return Guard({"max_attempts": max_attempts, "initial_delay_s": 0.01}, breaker, sleep=lambda _s: None)


def _refused() -> None:
    raise ConnectionRefusedError("connection refused")


@pytest.mark.parametrize(("max_attempts", "threshold", "cause"), [
    (3, 3, ConnectionRefusedError),  # the opening failure is the last attempt: it is the refusal's cause
    (5, 5, ConnectionRefusedError),  # the default policies
    (5, 3, type(None)),              # an earlier one: the 4th attempt is refused by the breaker itself
])
def test_the_failure_that_opens_the_breaker_ends_in_a_refusal_to_wait_for(max_attempts: int, threshold: int,
                                                                         cause: type) -> None:
    """The task's own failures open the breaker: whether the opening failure is the last attempt (3/3, and
    the default policies 5/5) or an earlier one (5/3), the task gets the breaker's CircuitOpenError with the
    half-open moment, so the operator reschedules it instead of failing (the e2e run showed 3/3 failing)."""
    guard = _guard(max_attempts, threshold)
    with pytest.raises(CircuitOpenError) as caught:
        guard.call(_refused)
    assert caught.value.retry_at == datetime.fromtimestamp(T0 + 30, tz=UTC)
    assert caught.value.breaker_name == "pg"
    assert guard.stats.attempts == threshold  # no attempt reached the system once it was open
    assert guard.breaker is not None and guard.breaker.state().state.value == "open"
    assert type(caught.value.__cause__) is cause


def test_attempts_running_out_while_the_breaker_stays_closed_raise_the_error_itself() -> None:
    guard = _guard(max_attempts=3, threshold=5)
    with pytest.raises(ConnectionRefusedError):
        guard.call(_refused)
    assert guard.breaker is not None and guard.breaker.state().state.value == "closed"


def test_a_data_error_is_never_turned_into_a_wait_even_if_the_breaker_opened_meanwhile() -> None:
    store = InMemoryBreakerStore()
    guard = _guard(max_attempts=3, threshold=3, store=store)
    other = SharedCircuitBreaker("pg", {"failure_threshold": 3, "reset_timeout_s": 30}, store, clock=lambda: T0,
                                 who="another task")

    def bad_row() -> None:
        other.force_open("another task saw the database go down")
        raise DataError("value too long for type character varying(2)")

    with pytest.raises(DataError):
        guard.call(bad_row)
    assert guard.stats.attempts == 1


def test_refusal_is_read_only() -> None:
    """Asking for the refusal of a half-open breaker takes no trial slot."""
    store = InMemoryBreakerStore()
    clock = [T0]
    breaker = SharedCircuitBreaker("pg", {"failure_threshold": 1, "reset_timeout_s": 30}, store,
                                   clock=lambda: clock[0], who="test")
    breaker.force_open("down")
    assert breaker.refusal() is not None
    clock[0] = T0 + 31  # half-open moment reached: a call would be admitted as the trial
    assert breaker.refusal() is None
    assert breaker.state().trial_ids == ()
    breaker.before_call()  # the trial slot is still free
