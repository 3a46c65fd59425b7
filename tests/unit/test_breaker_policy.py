"""The opener's policy travels in the shared breaker document; rescheduled tasks wake with bounded jitter."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta

import pytest

from airflow_etl_provider.core.breaker_policy import CircuitBreakerPolicy, StoredPolicy, jittered_reschedule
from airflow_etl_provider.core.circuit_breaker import (
    BreakerSnapshot,
    CircuitState,
    InMemoryBreakerStore,
    SharedCircuitBreaker,
)
from airflow_etl_provider.core.errors import CircuitOpenError, ConfigError

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
RETRY_AT = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _breaker(store: InMemoryBreakerStore, clock: Clock, **policy: object) -> SharedCircuitBreaker:
    return SharedCircuitBreaker("pg", CircuitBreakerPolicy(**policy), store, clock=clock, who="test")


def _open(breaker: SharedCircuitBreaker, n: int) -> None:
    for _ in range(n):
        breaker.record_failure(ConnectionRefusedError("connection refused"))
    assert breaker.state().state is CircuitState.OPEN


# ------------------------------------------------------------------------------------------------ jitter


def test_jitter_default_bound_is_a_fifth_of_the_reset_timeout_capped_at_a_minute() -> None:
    assert CircuitBreakerPolicy(reset_timeout_s=60).jitter_bound_s() == pytest.approx(12.0)
    assert CircuitBreakerPolicy(reset_timeout_s=3600).jitter_bound_s() == 60.0
    assert CircuitBreakerPolicy(reset_timeout_s=60, reschedule_jitter_s=5).jitter_bound_s() == 5.0
    assert CircuitBreakerPolicy(reset_timeout_s=60, reschedule_jitter_s=0).jitter_bound_s() == 0.0


def test_jitter_is_configurable_in_camel_case_and_refuses_negative_values() -> None:
    policy = CircuitBreakerPolicy.from_config({"resetTimeoutSeconds": 30, "rescheduleJitterSeconds": 7.5})
    assert policy.reschedule_jitter_s == 7.5
    with pytest.raises(ConfigError, match="rescheduleJitterSeconds"):
        CircuitBreakerPolicy.from_config({"rescheduleJitterSeconds": -1})


def test_jittered_dates_stay_within_bounds_and_spread_over_many_draws() -> None:
    rng = random.Random(14)
    draws = [jittered_reschedule(RETRY_AT, 12.0, rng) for _ in range(5000)]
    offsets = [(d - RETRY_AT).total_seconds() for d in draws]
    assert min(offsets) >= 0.0 and max(offsets) <= 12.0  # never before the half-open moment
    assert len({round(o, 3) for o in offsets}) > 4000  # the wake-ups are spread, not one instant
    # both ends of the window are reached: a fifth of the draws in each fifth of it
    assert sum(o < 2.4 for o in offsets) > 800 and sum(o > 9.6 for o in offsets) > 800


def test_jitter_is_reproducible_with_a_seeded_rng_and_zero_means_none() -> None:
    first = [jittered_reschedule(RETRY_AT, 10.0, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert jittered_reschedule(RETRY_AT, 0.0, random.Random(7)) == RETRY_AT
    with pytest.raises(ValueError, match="bound_s"):
        jittered_reschedule(RETRY_AT, -1.0)


def test_reschedule_exception_carries_a_jittered_date() -> None:
    from airflow.sdk.exceptions import AirflowRescheduleException

    from airflow_etl_provider.operators.resilience import raise_for_open_circuit

    err = CircuitOpenError("pg", RETRY_AT, "etl_circuit_breaker__pg", "boom")
    policy = CircuitBreakerPolicy(reset_timeout_s=60, reschedule_jitter_s=20)
    rng = random.Random(3)
    dates = []
    for _ in range(200):
        with pytest.raises(AirflowRescheduleException) as info:
            raise_for_open_circuit(err, "reschedule", policy=policy, rng=rng)
        dates.append(info.value.reschedule_date)
    assert all(RETRY_AT <= d <= RETRY_AT + timedelta(seconds=20) for d in dates)
    assert len(set(dates)) == 200
    expected_first = RETRY_AT + timedelta(seconds=random.Random(3).uniform(0.0, 20.0))
    assert dates[0] == expected_first
    with pytest.raises(AirflowRescheduleException) as exact:
        raise_for_open_circuit(err, "reschedule")  # no policy: exactly retry_at, as before
    assert exact.value.reschedule_date == RETRY_AT


# ------------------------------------------------------------------------------- the opener's policy


def test_the_document_carries_the_openers_policy() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _open(_breaker(store, clock, failure_threshold=2, reset_timeout_s=300, half_open_max_attempts=2), 2)
    doc = json.loads(store.documents["pg"])
    assert doc["opened_with"] == {
        "reset_timeout_s": 300.0,
        "failure_threshold": 2,
        "half_open_max_attempts": 2,
    }
    assert BreakerSnapshot.from_json(store.documents["pg"]).opened_with == StoredPolicy(300.0, 2, 2)


def test_a_reader_with_a_shorter_reset_timeout_honours_the_openers() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _open(_breaker(store, clock, failure_threshold=2, reset_timeout_s=300), 2)
    impatient = _breaker(store, clock, failure_threshold=2, reset_timeout_s=10)
    clock.now = T0 + 20  # past the reader's own 10 s, well before the opener's 300 s
    with pytest.raises(CircuitOpenError) as info:
        impatient.before_call()
    assert info.value.retry_at == datetime.fromtimestamp(T0 + 300, tz=UTC)
    assert impatient.refusal() is not None
    clock.now = T0 + 300
    impatient.before_call()  # the opener's timeout elapsed: the trial is admitted
    assert store.load("pg").state is CircuitState.HALF_OPEN  # type: ignore[union-attr]


def test_a_reader_with_a_longer_reset_timeout_does_not_delay_the_trial() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _open(_breaker(store, clock, failure_threshold=1, reset_timeout_s=30), 1)
    patient = _breaker(store, clock, reset_timeout_s=600)
    clock.now = T0 + 31
    patient.before_call()
    assert store.load("pg").state is CircuitState.HALF_OPEN  # type: ignore[union-attr]


def test_the_openers_trial_budget_is_honoured_and_closing_clears_the_policy() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _open(_breaker(store, clock, failure_threshold=1, reset_timeout_s=30, half_open_max_attempts=2), 1)
    reader = _breaker(store, clock, reset_timeout_s=30, half_open_max_attempts=1)
    clock.now = T0 + 31
    reader.before_call()
    reader.record_success()
    # the opener asked for two successful trials: one is not enough, whatever this reader's own policy says
    assert store.load("pg").state is CircuitState.HALF_OPEN  # type: ignore[union-attr]
    reader.before_call()
    reader.record_success()
    closed = store.load("pg")
    assert closed is not None and closed.state is CircuitState.CLOSED and closed.opened_with is None
    assert "opened_with" not in json.loads(store.documents["pg"])


def test_a_trial_failure_reopens_with_the_same_policy() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _open(_breaker(store, clock, failure_threshold=1, reset_timeout_s=100), 1)
    other = _breaker(store, clock, reset_timeout_s=5)
    clock.now = T0 + 100
    other.before_call()
    other.record_failure(TimeoutError("timed out"))
    reopened = store.load("pg")
    assert reopened is not None and reopened.state is CircuitState.OPEN
    assert reopened.opened_with == StoredPolicy(100.0, 1, 1)
    assert reopened.retry_at(5) == T0 + 200


def test_force_open_stores_the_callers_policy() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _breaker(store, clock, reset_timeout_s=900).force_open("maintenance window")
    assert BreakerSnapshot.from_json(store.documents["pg"]).opened_with == StoredPolicy(900.0, 5, 1)


def test_old_documents_without_a_policy_are_read_with_the_readers_own() -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    old = {"state": "open", "consecutive_failures": 5, "opened_at": T0, "version": 3, "updated_at": T0}
    store.documents["pg"] = json.dumps(old)
    reader = _breaker(store, clock, reset_timeout_s=60)
    snap = reader.state()
    assert snap.state is CircuitState.OPEN and snap.opened_with is None
    assert snap.retry_at(60) == T0 + 60
    clock.now = T0 + 61
    reader.before_call()  # the reader's own 60 s applies


def test_an_unreadable_policy_is_ignored_not_the_whole_document(caplog: pytest.LogCaptureFixture) -> None:
    doc = {"state": "open", "opened_at": T0, "version": 2, "opened_with": {"reset_timeout_s": -3}}
    with caplog.at_level(logging.WARNING, logger="airflow_etl_provider.circuit_breaker"):
        snap = BreakerSnapshot.from_json(json.dumps(doc))
    assert snap.state is CircuitState.OPEN and snap.version == 2 and snap.opened_with is None
    assert "opened_with" in caplog.text


def test_a_conflicting_reader_says_once_that_it_follows_the_opener(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = InMemoryBreakerStore(), Clock()
    _open(_breaker(store, clock, failure_threshold=2, reset_timeout_s=300), 2)
    reader = _breaker(store, clock, failure_threshold=4, reset_timeout_s=10)
    with caplog.at_level(logging.WARNING, logger="airflow_etl_provider.circuit_breaker"):
        for _ in range(3):
            assert reader.refusal() is not None
    notes = [r.getMessage() for r in caplog.records if "opener's" in r.getMessage()]
    assert len(notes) == 1
    assert "reset_timeout_s 300.0 (this task's: 10.0)" in notes[0]
    assert "failure_threshold 2 (this task's: 4)" in notes[0]
    assert "etl_circuit_breaker__pg" in notes[0]
