"""The shared circuit breaker: state machine, shared-store semantics, lost-update repair, races, parsing."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_etl_provider.core.circuit_breaker import (
    BreakerSnapshot,
    CircuitBreakerPolicy,
    CircuitState,
    InMemoryBreakerStore,
    SharedCircuitBreaker,
    TransitionEvent,
    variable_key,
)
from airflow_etl_provider.core.errors import CircuitOpenError, ConfigError, DataError, ErrorKind

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Psycopg3Error(Exception):
    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError("connection refused")


def always_fail() -> None:
    raise refused()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> InMemoryBreakerStore:
    return InMemoryBreakerStore()


@pytest.fixture
def make(store: InMemoryBreakerStore, clock: Clock) -> Callable[..., SharedCircuitBreaker]:
    def make(
        who: str = "a", events: list[TransitionEvent] | None = None, **policy: Any
    ) -> SharedCircuitBreaker:
        config = {"failure_threshold": 3, "reset_timeout_s": 60, "half_open_max_attempts": 1, **policy}
        return SharedCircuitBreaker(
            "pg",
            config,
            store,
            clock=clock,
            who=who,
            on_transition=events.append if events is not None else None,
        )

    return make


def fail_times(breaker: SharedCircuitBreaker, n: int) -> None:
    for _ in range(n):
        breaker.record_failure(refused())


def stored(store: InMemoryBreakerStore, name: str = "pg") -> BreakerSnapshot:
    return BreakerSnapshot.from_json(store.documents[name])


# -------------------------------------------------------------------------------- state machine
def test_opens_exactly_at_the_threshold(make: Callable[..., SharedCircuitBreaker]) -> None:
    breaker = make()
    fail_times(breaker, 2)
    assert breaker.state().state is CLOSED and breaker.state().consecutive_failures == 2
    breaker.before_call()
    fail_times(breaker, 1)
    snap = breaker.state()
    assert (snap.state, snap.consecutive_failures, snap.last_error) == (
        OPEN,
        3,
        "ConnectionRefusedError: connection refused",
    )
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


def test_data_errors_do_not_count(
    make: Callable[..., SharedCircuitBreaker], store: InMemoryBreakerStore
) -> None:
    breaker = make()
    for _ in range(10):
        assert breaker.record_failure(DataError("bad row")) is ErrorKind.DATA
        assert breaker.record_failure(Psycopg3Error("duplicate key", "23505")) is ErrorKind.DATA
    assert breaker.state().state is CLOSED and store.saves == 0


def test_system_errors_count_but_are_reported_as_system(make: Callable[..., SharedCircuitBreaker]) -> None:
    breaker = make()
    kinds = [
        breaker.record_failure(Psycopg3Error("password authentication failed", "28P01")) for _ in range(3)
    ]
    assert kinds == [ErrorKind.SYSTEM] * 3 and breaker.state().state is OPEN


def test_refusal_says_when_and_how_to_reset(make: Callable[..., SharedCircuitBreaker], clock: Clock) -> None:
    breaker = make()
    fail_times(breaker, 3)
    clock.now += 10
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_at == datetime.fromtimestamp(T0 + 60, tz=UTC)
    assert info.value.retry_at.tzinfo is not None and info.value.breaker_name == "pg"
    assert info.value.variable_key == "etl_circuit_breaker__pg" and "etl_circuit_breaker__pg" in str(
        info.value
    )
    assert info.value.last_error == "ConnectionRefusedError: connection refused"
    assert breaker.state().retry_at(60) == T0 + 60


def test_half_open_admits_exactly_the_trial_budget(
    make: Callable[..., SharedCircuitBreaker], clock: Clock
) -> None:
    breaker = make(half_open_max_attempts=2)
    fail_times(breaker, 3)
    clock.now += 60
    breaker.before_call()  # turns half-open, trial 1
    breaker.before_call()  # trial 2
    snap = breaker.state()
    assert snap.state is HALF_OPEN and snap.half_open_trials_started == 2
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_at == datetime.fromtimestamp(clock.now + 30, tz=UTC)  # min(reset, 30 s) probe


def test_closes_after_enough_trial_successes(make: Callable[..., SharedCircuitBreaker], clock: Clock) -> None:
    events: list[TransitionEvent] = []
    breaker = make(events=events, half_open_max_attempts=2)
    fail_times(breaker, 3)
    clock.now += 61
    breaker.before_call()
    breaker.record_success()
    assert breaker.state().state is HALF_OPEN and breaker.state().half_open_successes == 1
    breaker.before_call()
    breaker.record_success()
    snap = breaker.state()
    assert (snap.state, snap.consecutive_failures, snap.opened_at, snap.trial_ids) == (CLOSED, 0, None, ())
    assert [(e.from_state, e.to_state) for e in events] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert events[0].reason.startswith("3 consecutive failures") and events[-1].at == clock.now


def test_a_failed_trial_reopens_with_a_new_timeout(
    make: Callable[..., SharedCircuitBreaker], clock: Clock
) -> None:
    breaker = make()
    fail_times(breaker, 3)
    clock.now += 61
    with pytest.raises(ConnectionRefusedError):
        breaker.call(always_fail)
    snap = breaker.state()
    assert snap.state is OPEN and snap.opened_at == clock.now and snap.consecutive_failures == 4
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_at == datetime.fromtimestamp(clock.now + 60, tz=UTC)


def test_a_stale_half_open_admits_a_new_trial(
    make: Callable[..., SharedCircuitBreaker], clock: Clock
) -> None:
    breaker = make()
    fail_times(breaker, 3)
    clock.now += 61
    breaker.before_call()  # the trial holder ... dies without reporting
    with pytest.raises(CircuitOpenError):
        make(who="b").before_call()
    clock.now += 60
    other = make(who="b")
    other.before_call()  # admitted: the half-open document is older than the reset timeout
    snap = other.state()
    assert snap.state is HALF_OPEN and snap.half_open_trials_started == 1 and snap.updated_by == "b"
    other.record_success()
    assert other.state().state is CLOSED


def test_success_in_closed_with_no_failures_never_writes(
    make: Callable[..., SharedCircuitBreaker], store: InMemoryBreakerStore
) -> None:
    breaker = make()
    for _ in range(5):
        assert breaker.call(lambda: "ok") == "ok"
        breaker.record_success()
    assert store.saves == 0
    store.loads = 0
    breaker.call(lambda: "ok")
    assert store.loads == 1  # one read per healthy call


def test_a_success_clears_the_failure_count(make: Callable[..., SharedCircuitBreaker]) -> None:
    breaker = make()
    fail_times(breaker, 2)
    breaker.call(lambda: None)
    assert breaker.state().consecutive_failures == 0
    fail_times(breaker, 2)
    assert breaker.state().state is CLOSED  # consecutive failures: the count restarted


def test_open_ignores_successes_and_repeated_failures(
    make: Callable[..., SharedCircuitBreaker], store: InMemoryBreakerStore, clock: Clock
) -> None:
    breaker = make()
    fail_times(breaker, 3)
    saves, opened_at = store.saves, breaker.state().opened_at
    clock.now += 30
    breaker.record_success()
    fail_times(breaker, 5)
    assert store.saves == saves and breaker.state().opened_at == opened_at and breaker.state().state is OPEN


def test_call_returns_results_and_reraises_errors_unchanged(
    make: Callable[..., SharedCircuitBreaker],
) -> None:
    breaker = make()
    assert breaker.call(lambda a, b=1: a + b, 1, b=2) == 3
    error = refused()

    def fail() -> None:
        raise error

    with pytest.raises(ConnectionRefusedError) as info:
        breaker.call(fail)
    assert info.value is error


def test_a_refused_call_never_runs(make: Callable[..., SharedCircuitBreaker]) -> None:
    breaker = make()
    fail_times(breaker, 3)
    ran: list[int] = []
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: ran.append(1))
    assert ran == []


def test_store_failures_never_hide_the_calls_error(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    class BrokenSaves(InMemoryBreakerStore):
        def save(self, name: str, snap: BreakerSnapshot) -> None:
            raise OSError("variables API down")

    breaker = SharedCircuitBreaker("pg", {"failure_threshold": 1}, BrokenSaves(), clock=clock)
    with pytest.raises(ConnectionRefusedError):
        breaker.call(always_fail)
    assert "could not record the call's outcome" in caplog.text


def test_reset_and_force_open(make: Callable[..., SharedCircuitBreaker], clock: Clock) -> None:
    events: list[TransitionEvent] = []
    breaker = make(events=events)
    forced = breaker.force_open("maintenance window")
    assert forced.state is OPEN and forced.last_error == "forced open: maintenance window"
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    reset = breaker.reset(who="oncall")
    assert (reset.state, reset.updated_by, reset.version) == (CLOSED, "oncall", forced.version + 1)
    breaker.before_call()
    assert [(e.to_state, e.reason) for e in events] == [
        (OPEN, "forced open: maintenance window"),
        (CLOSED, "reset by oncall"),
    ]


def test_transitions_are_logged_and_callback_errors_swallowed(
    store: InMemoryBreakerStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TransitionEvent) -> None:
        raise RuntimeError("alerting down")

    breaker = SharedCircuitBreaker("pg", {"failure_threshold": 1}, store, clock=clock, on_transition=broken)
    breaker.record_failure(refused())
    (warning,) = [
        r
        for r in caplog.records
        if r.name == "airflow_etl_provider.circuit_breaker" and r.levelno == logging.WARNING
    ]
    assert "'pg': closed -> open (1 consecutive failures)" in warning.getMessage()
    assert "on_transition callback failed" in caplog.text and breaker.state().state is OPEN


def test_a_disabled_breaker_is_a_pass_through(store: InMemoryBreakerStore) -> None:
    breaker = SharedCircuitBreaker("pg", {"enabled": False, "failure_threshold": 1}, store)
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            breaker.call(always_fail)
    breaker.before_call()
    breaker.record_success()
    assert (store.loads, store.saves) == (0, 0)


def test_default_writer_is_host_and_pid(store: InMemoryBreakerStore) -> None:
    assert SharedCircuitBreaker("pg", None, store).who.endswith(f":{os.getpid()}")


# --------------------------------------------------------------------------- pure transitions
POLICY = CircuitBreakerPolicy(failure_threshold=3, reset_timeout_s=60, half_open_max_attempts=2)


def test_replaying_the_same_event_yields_the_same_document() -> None:
    base = BreakerSnapshot(failure_ids=("x",), consecutive_failures=1)
    once = base.with_failure(POLICY, event_id="e1", now=T0, who="a", error="E: 1")
    assert once == base.with_failure(POLICY, event_id="e1", now=T0, who="a", error="E: 1")
    assert once.with_failure(POLICY, event_id="e1", now=T0 + 5, who="b", error="E: 2") == once
    opened = once.with_failure(POLICY, event_id="e2", now=T0, who="a", error="E")
    assert opened.state is OPEN
    assert opened.with_failure(POLICY, event_id="e2", now=T0 + 9, who="a", error="E") == opened
    assert opened.with_failure(POLICY, event_id="e3", now=T0 + 9, who="a", error="E").opened_at == T0
    half = BreakerSnapshot(state=HALF_OPEN, trial_ids=("t",), updated_at=T0, version=4)
    succeeded = half.with_success(POLICY, event_id="s1", now=T0, who="a")
    assert succeeded.with_success(POLICY, event_id="s1", now=T0 + 1, who="a") == succeeded
    assert half.with_trial(POLICY, trial_id="t", now=T0 + 1, who="a") == half


def test_the_error_is_truncated() -> None:
    snap = BreakerSnapshot().with_failure(POLICY, event_id="e", now=T0, who="a", error="x" * 2000)
    assert len(snap.last_error or "") == 500


def test_merge_orders_decisions_then_unites_ids() -> None:
    closed = BreakerSnapshot(failure_ids=("a",), consecutive_failures=1)
    other = BreakerSnapshot(failure_ids=("b",), consecutive_failures=1)
    merged = closed.merge(other, POLICY, now=T0, who="m")
    assert merged.failure_ids == ("b", "a") and merged.consecutive_failures == 2 and merged.state is CLOSED
    third = BreakerSnapshot(failure_ids=("b", "c"), consecutive_failures=2)
    assert closed.merge(third, POLICY, now=T0, who="m").state is OPEN  # the union reaches the threshold
    assert closed.merge(closed, POLICY, now=T0, who="m") == closed
    newer = BreakerSnapshot(version=1)
    assert closed.merge(newer, POLICY, now=T0, who="m") is newer
    assert newer.merge(closed, POLICY, now=T0, who="m") is newer
    opened = BreakerSnapshot(state=OPEN, version=3, opened_at=T0)
    closed_same_version = BreakerSnapshot(state=CLOSED, version=3)
    assert closed_same_version.merge(opened, POLICY, now=T0, who="m") is opened  # the more severe wins
    assert opened.merge(closed_same_version, POLICY, now=T0, who="m") is opened
    half = BreakerSnapshot(state=HALF_OPEN, version=2, trial_ids=("t1",), success_ids=("s1",))
    half_other = BreakerSnapshot(state=HALF_OPEN, version=2, trial_ids=("t2",), success_ids=("s2",))
    assert half.merge(half_other, POLICY, now=T0, who="m").state is CLOSED  # 2 successes close it
    assert half.merge(half_other, POLICY, now=T0, who="m").version == 3
    lone = BreakerSnapshot(state=HALF_OPEN, version=2, trial_ids=("t1",))
    assert lone.merge(half_other, POLICY, now=T0, who="m").trial_ids == ("t2",)  # trials are never united


# ------------------------------------------------------------------------ sharing a store
def test_two_processes_share_one_store(make: Callable[..., SharedCircuitBreaker], clock: Clock) -> None:
    a, b = make(who="a"), make(who="b")
    fail_times(a, 2)
    fail_times(b, 1)
    assert b.state().state is OPEN and b.state().updated_by == "b"
    with pytest.raises(CircuitOpenError):
        a.before_call()
    clock.now += 61
    b.before_call()
    assert a.state().state is HALF_OPEN
    with pytest.raises(CircuitOpenError):
        a.before_call()  # b holds the only trial
    b.record_success()
    a.before_call()
    assert a.state().state is CLOSED


class RacingStore(InMemoryBreakerStore):
    """Runs the next of ``races`` right after a save: another writer's write landing in our read-back window."""

    def __init__(self) -> None:
        super().__init__()
        self.races: list[Callable[[], None]] = []

    def save(self, name: str, snap: BreakerSnapshot) -> None:
        super().save(name, snap)
        if self.races:
            self.races.pop(0)()


def test_a_lost_failure_is_repaired_on_read_back(clock: Clock) -> None:
    store = RacingStore()
    a = SharedCircuitBreaker("pg", {"failure_threshold": 5}, store, clock=clock, who="a")
    b = SharedCircuitBreaker("pg", {"failure_threshold": 5}, store, clock=clock, who="b")
    fail_times(a, 1)
    before = store.documents["pg"]
    # b read the document before a's write and writes after it: a's increment is overwritten ...
    store.races = [lambda: (store.documents.__setitem__("pg", before), fail_times(b, 1))]
    fail_times(a, 1)
    # ... and a's read-back notices and writes the union: 3 failures, none lost.
    assert stored(store).consecutive_failures == 3 and len(stored(store).failure_ids) == 3


def test_repeated_overwrites_during_read_back_are_repaired_too(clock: Clock) -> None:
    store = RacingStore()
    a = SharedCircuitBreaker("pg", {"failure_threshold": 10}, store, clock=clock, who="a")
    stale = BreakerSnapshot(failure_ids=("x",), consecutive_failures=1)
    store.save("pg", stale)
    overwrite = lambda: InMemoryBreakerStore.save(store, "pg", stale)  # noqa: E731
    store.races = [overwrite, overwrite, overwrite]  # after the write and after two repairs
    fail_times(a, 1)
    snap = stored(store)
    assert snap.consecutive_failures == 2 and "x" in snap.failure_ids  # a's failure survived


def test_a_stale_closed_write_cannot_erase_an_open_that_was_seen(
    make: Callable[..., SharedCircuitBreaker], store: InMemoryBreakerStore
) -> None:
    a = make()
    fail_times(a, 2)
    stale = store.documents["pg"]
    fail_times(a, 1)
    store.documents["pg"] = stale  # a writer that read long ago overwrites the open state
    with pytest.raises(CircuitOpenError):
        a.before_call()
    assert stored(store).state is OPEN  # restored


def test_deleting_the_document_resets_even_an_instance_that_saw_it_open(
    make: Callable[..., SharedCircuitBreaker], store: InMemoryBreakerStore
) -> None:
    a = make()
    fail_times(a, 3)
    store.delete("pg")
    a.before_call()
    assert a.state().state is CLOSED and "pg" not in store.documents


def test_of_two_racing_trials_only_the_last_writer_proceeds(clock: Clock) -> None:
    store = RacingStore()
    policy = {"failure_threshold": 1, "reset_timeout_s": 60}
    a = SharedCircuitBreaker("pg", policy, store, clock=clock, who="a")
    b = SharedCircuitBreaker("pg", policy, store, clock=clock, who="b")
    fail_times(a, 1)
    clock.now += 61
    opened = store.documents["pg"]

    def b_admits_on_the_same_read() -> None:
        current = store.documents["pg"]
        store.documents["pg"] = opened
        b.before_call()
        assert current != store.documents["pg"]

    store.races = [b_admits_on_the_same_read]
    with pytest.raises(CircuitOpenError):
        a.before_call()
    assert stored(store).updated_by == "b" and stored(store).half_open_trials_started == 1


def test_eight_racing_threads_stay_within_the_design_bound() -> None:
    """8 threads hammer an always-failing system; count the calls that reach it after the first open."""
    threshold, half_open, workers = 5, 1, 8
    bound = threshold + half_open + (workers - 1)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(3e-4)  # preempt often, so read-modify-write windows interleave
    try:
        for _ in range(3):
            after_open, half_open_calls = _race(threshold, half_open, workers)
            assert after_open <= bound
            assert half_open_calls <= half_open + workers - 1
    finally:
        sys.setswitchinterval(previous)


def _race(threshold: int, half_open: int, workers: int) -> tuple[int, int]:
    store, clock = InMemoryBreakerStore(), Clock()
    policy = CircuitBreakerPolicy(
        failure_threshold=threshold, reset_timeout_s=60, half_open_max_attempts=half_open
    )
    opened = threading.Event()
    counts = {"after_open": 0, "calls": 0}
    lock = threading.Lock()

    def system() -> None:
        with lock:
            counts["calls"] += 1
            counts["after_open"] += opened.is_set()
        raise refused()

    def on_transition(event: TransitionEvent) -> None:
        if event.to_state is OPEN:
            opened.set()

    def worker(index: int, barrier: threading.Barrier) -> None:
        breaker = SharedCircuitBreaker(
            "pg", policy, store, clock=clock, who=f"w{index}", on_transition=on_transition
        )
        barrier.wait()
        for _ in range(25):
            try:
                breaker.call(system)
            except (ConnectionRefusedError, CircuitOpenError):
                pass

    def run_all() -> None:
        barrier = threading.Barrier(workers)
        threads = [threading.Thread(target=worker, args=(i, barrier)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    run_all()  # the clock stands still: it opens once and stays open
    assert opened.is_set() and stored(store).state is OPEN
    after_open = counts["after_open"]
    counts["calls"] = 0
    clock.now += 61  # one half-open cycle: every trial fails and reopens it
    run_all()
    return after_open, counts["calls"]


# ----------------------------------------------------------------------------------- documents
def test_json_round_trip() -> None:
    snap = BreakerSnapshot(
        state=HALF_OPEN, consecutive_failures=4, opened_at=T0, trial_ids=("t",), success_ids=("s",),
        last_error="E: x", updated_at=T0 + 1, updated_by="a", version=7,
    )  # fmt: skip
    doc = snap.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert (
        doc["state"] == "half_open"
        and doc["half_open_trials_started"] == 1
        and doc["half_open_successes"] == 1
    )
    assert BreakerSnapshot.from_json(doc) == snap == BreakerSnapshot.from_json(json.dumps(doc))
    assert BreakerSnapshot.from_json(json.dumps(doc).encode()) == snap


def test_missing_keys_take_defaults() -> None:
    assert BreakerSnapshot.from_json({"state": "open", "opened_at": T0}) == BreakerSnapshot(
        state=OPEN, opened_at=T0
    )
    assert BreakerSnapshot.from_json({}) == BreakerSnapshot() == BreakerSnapshot.from_json(None)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"state": "exploded"}',
        '{"failure_ids": 5}',
        '{"updated_at": null}',
        '"text"',
        "{",
    ],
)
def test_a_corrupt_document_reads_as_fresh_closed(raw: str, caplog: pytest.LogCaptureFixture) -> None:
    assert BreakerSnapshot.from_json(raw) == BreakerSnapshot()
    assert "corrupt" in caplog.text


def test_a_corrupt_stored_document_never_crashes_the_breaker(
    make: Callable[..., SharedCircuitBreaker], store: InMemoryBreakerStore
) -> None:
    store.documents["pg"] = "{garbage"
    breaker = make()
    breaker.before_call()
    fail_times(breaker, 3)
    assert breaker.state().state is OPEN


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("postgres_default", "etl_circuit_breaker__postgres_default"),
        ("pg.prod-1", "etl_circuit_breaker__pg.prod-1"),
        ("my pg/conn:1é", "etl_circuit_breaker__my_pg_conn_1_"),
    ],
)
def test_variable_key_is_sanitised(name: str, key: str) -> None:
    assert variable_key(name) == key


def test_long_names_fit_airflow_keys_and_stay_distinct() -> None:
    first, second = variable_key("x" * 300 + "1"), variable_key("x" * 300 + "2")
    assert len(first) == len(second) == 250 and first != second


# ------------------------------------------------------------------------------------ policy
def test_policy_defaults_and_forms() -> None:
    default = CircuitBreakerPolicy()
    assert (default.enabled, default.name, default.failure_threshold, default.reset_timeout_s) == (
        True,
        None,
        5,
        60,
    )
    assert (default.half_open_max_attempts, default.on_open) == (1, "reschedule")
    seed = {"enabled": True, "failureThreshold": 5, "resetTimeoutSeconds": 60, "halfOpenMaxAttempts": 1}
    assert CircuitBreakerPolicy.from_config(seed) == default == CircuitBreakerPolicy.from_config(None)
    custom = CircuitBreakerPolicy.from_config({"failure_threshold": 2, "onOpen": "fail", "name": "warehouse"})
    assert (custom.failure_threshold, custom.on_open, custom.name) == (2, "fail", "warehouse")
    assert CircuitBreakerPolicy.from_config(custom) is custom


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"failureThreshold": 0}, "circuit_breaker.failureThreshold: must be >= 1 (got 0)"),
        ({"resetTimeoutSeconds": 0}, "circuit_breaker.resetTimeoutSeconds: must be > 0 (got 0)"),
        ({"halfOpenMaxAttempts": 0}, "circuit_breaker.halfOpenMaxAttempts: must be >= 1 (got 0)"),
        ({"onOpen": "retry"}, "circuit_breaker.onOpen: must be one of 'reschedule' or 'fail' (got 'retry')"),
        ({"enabled": "yes"}, "circuit_breaker.enabled: input should be a valid boolean (got 'yes')"),
        ({"threshold": 3}, "circuit_breaker.threshold: unknown key; allowed: enabled, failureThreshold"),
    ],
)
def test_policy_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerPolicy.from_config(config)
    assert str(info.value).startswith(message)


def test_breaker_accepts_the_policy_as_config(store: InMemoryBreakerStore) -> None:
    breaker = SharedCircuitBreaker("pg", {"failureThreshold": 2}, store)
    assert breaker.policy.failure_threshold == 2
    with pytest.raises(ConfigError, match="failureThreshold"):
        SharedCircuitBreaker("pg", {"failureThreshold": -1}, store)


@pytest.fixture(autouse=True)
def _no_leaked_switch_interval() -> Iterator[None]:
    interval = sys.getswitchinterval()
    yield
    assert sys.getswitchinterval() == interval
