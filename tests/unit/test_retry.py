"""Retry policy parsing, backoff/jitter maths (with hypothesis) and the tenacity-based retrier (fake sleep/clock)."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from tenacity.wait import wait_base, wait_fixed

from airflow_etl_provider.core.errors import (
    ConfigError,
    DataError,
    ErrorKind,
    chain_classifiers,
    classifier_from_predicate,
    classify_any,
)
from airflow_etl_provider.core.retry import (
    PolicyWait,
    Retrier,
    RetryEvent,
    RetryPolicy,
    build_retrying,
    call_with_retry,
    compute_delay,
)

SEED_RETRY = {
    "strategy": "exponential-backoff",
    "maxAttempts": 5,
    "initialDelayMs": 1000,
    "maxDelayMs": 60000,
    "backoffMultiplier": 2.0,
    "jitter": True,
}


class FakeTime:
    """A clock that only moves when the code under test sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(float(seconds))
        self.now += seconds


class Failing:
    """Raises ``errors`` in turn (the last one forever), then returns ``result`` if errors run out."""

    def __init__(self, *errors: BaseException, times: int | None = None, result: Any = "ok") -> None:
        self.errors, self.times, self.result, self.calls = list(errors), times, result, 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.times is not None and self.calls > self.times:
            return self.result
        raise self.errors[min(self.calls, len(self.errors)) - 1]


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


# ------------------------------------------------------------------------------------- parsing
def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.strategy, policy.max_attempts, policy.initial_delay_s, policy.max_delay_s) == (
        "exponential-backoff",
        5,
        1.0,
        60.0,
    )
    assert (policy.multiplier, policy.jitter, policy.deadline_s) == (2.0, "full", None)
    assert RetryPolicy.from_config(None) == policy


def test_seed_block_as_is() -> None:
    assert RetryPolicy.from_config(SEED_RETRY) == RetryPolicy()
    assert RetryPolicy.from_config({**SEED_RETRY, "jitter": False}).jitter == "none"
    assert RetryPolicy.from_config({"deadlineMs": 30000}).deadline_s == 30.0
    assert RetryPolicy.from_config({"deadlineSeconds": 12}).deadline_s == 12.0
    assert RetryPolicy.from_config({"jitter": "decorrelated"}).jitter == "decorrelated"


def test_legacy_fixed_delay_form() -> None:
    policy = RetryPolicy.from_config({"maxAttempts": 3, "delaySeconds": 5})
    assert policy == RetryPolicy(
        strategy="fixed", max_attempts=3, initial_delay_s=5, max_delay_s=5, jitter="none"
    )
    assert RetryPolicy.from_config({"delaySeconds": 5, "jitter": True}).jitter == "full"  # explicit keys win


def test_snake_case_and_passthrough() -> None:
    policy = RetryPolicy.from_config(
        {"max_attempts": 2, "initial_delay_s": 0.5, "max_delay_s": 4, "jitter": "equal"}
    )
    assert (policy.max_attempts, policy.initial_delay_s, policy.max_delay_s, policy.jitter) == (
        2,
        0.5,
        4.0,
        "equal",
    )
    assert RetryPolicy.from_config(policy) is policy


def test_policy_is_frozen() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy().max_attempts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"maxAttempts": 0}, "retry.maxAttempts: must be >= 1 (got 0)"),
        ({"max_attempts": 0}, "retry.max_attempts: must be >= 1 (got 0)"),
        ({"initialDelayMs": -5}, "retry.initialDelayMs: must be >= 0 (got -5)"),
        ({"initial_delay_s": -1}, "retry.initial_delay_s: must be >= 0 (got -1)"),
        (
            {"initialDelayMs": 5000, "maxDelayMs": 1000},
            "retry.maxDelayMs: must be >= the initial delay (5 s) (got 1000)",
        ),
        ({"backoffMultiplier": 0.5}, "retry.backoffMultiplier: must be >= 1 (got 0.5)"),
        ({"deadlineMs": 0}, "retry.deadlineMs: must be > 0"),
        (
            {"jitter": "loud"},
            "retry.jitter: must be one of 'full', 'equal', 'decorrelated' or 'none' (got 'loud')",
        ),
        (
            {"strategy": "linear"},
            "retry.strategy: must be one of 'exponential-backoff' or 'fixed' (got 'linear')",
        ),
        ({"maxAttempts": 2.5}, "retry.maxAttempts: input should be a valid integer (got 2.5)"),
        ({"maxAttempts": True}, "retry.maxAttempts: input should be a valid integer (got True)"),
        ({"initialDelayMs": "1s"}, "retry.initialDelayMs: input should be a valid number (got '1s')"),
        ({"maxAttempts": 3, "max_attempts": 3}, "retry.max_attempts: conflicts with 'maxAttempts'"),
        ({"delaySeconds": 5, "maxDelayMs": 100}, "retry.maxDelayMs: conflicts with 'delaySeconds'"),
        ({"maxRetries": 3}, "retry.maxRetries: unknown key; allowed: backoffMultiplier, deadlineMs"),
    ],
)
def test_bad_configs_name_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy.from_config(config)
    assert str(info.value).startswith(message)


def test_error_path_prefix_and_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^errorHandling\.retry\.maxAttempts: must be >= 1 \(got 0\)$"):
        RetryPolicy.from_config({"maxAttempts": 0}, path="errorHandling.retry")
    with pytest.raises(ConfigError, match=r"^retry: must be a mapping \(got \[1\]\)"):
        RetryPolicy.from_config([1])  # type: ignore[arg-type]


def test_direct_construction_raises_config_error_too() -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(max_attempts=0, jitter="loud")  # type: ignore[arg-type]
    assert "retry.max_attempts: must be >= 1 (got 0)" in str(info.value)
    assert "retry.jitter: must be one of" in str(info.value)
    with pytest.raises(ConfigError, match="retry.colour: unknown key"):
        RetryPolicy(colour="red")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="retry.max_delay_s: input should be a finite number"):
        RetryPolicy(max_delay_s=float("inf"))


# ------------------------------------------------------------------------------------- delays
def _policy(**kwargs: Any) -> RetryPolicy:
    return RetryPolicy(**kwargs)


def test_exponential_without_jitter_is_exact() -> None:
    policy = _policy(initial_delay_s=1, max_delay_s=10, multiplier=2, jitter="none")
    rng = random.Random(0)
    assert [compute_delay(policy, n, None, rng) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_fixed_strategy_ignores_the_attempt() -> None:
    policy = _policy(strategy="fixed", initial_delay_s=3, max_delay_s=60, jitter="none")
    assert {compute_delay(policy, n, None, random.Random()) for n in (1, 5, 50)} == {3.0}


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = _policy(initial_delay_s=1, max_delay_s=30, multiplier=10, jitter="none")
    assert compute_delay(policy, 10**6, None, random.Random()) == 30


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        compute_delay(RetryPolicy(), 0, None, random.Random())


def test_decorrelated_uses_the_previous_delay() -> None:
    policy = _policy(initial_delay_s=1, max_delay_s=100, jitter="decorrelated")
    first = compute_delay(policy, 1, None, random.Random(7))
    assert 1 <= first <= 3
    second = compute_delay(policy, 2, 20.0, random.Random(7))
    assert 1 <= second <= 60


policies = st.builds(
    lambda initial, extra, multiplier, strategy: RetryPolicy(
        strategy=strategy, initial_delay_s=initial, max_delay_s=initial + extra, multiplier=multiplier
    ),
    initial=st.floats(0, 100),
    extra=st.floats(0, 1000),
    multiplier=st.floats(1, 10),
    strategy=st.sampled_from(["exponential-backoff", "fixed"]),
)
attempts = st.integers(1, 5000)
seeds = st.integers(0, 2**32)


def _base(policy: RetryPolicy, attempt: int) -> float:
    return compute_delay(policy.model_copy(update={"jitter": "none"}), attempt, None, random.Random())


@given(policy=policies, attempt=attempts, previous=st.none() | st.floats(0, 2000), seed=seeds,
       jitter=st.sampled_from(["full", "equal", "decorrelated", "none"]))  # fmt: skip
def test_every_delay_is_within_zero_and_the_cap(
    policy: RetryPolicy, attempt: int, previous: float | None, seed: int, jitter: str
) -> None:
    policy = policy.model_copy(update={"jitter": jitter})
    assert 0 <= compute_delay(policy, attempt, previous, random.Random(seed)) <= policy.max_delay_s


@given(policy=policies, attempt=attempts)
def test_no_jitter_is_monotone_and_capped(policy: RetryPolicy, attempt: int) -> None:
    assert _base(policy, attempt) <= _base(policy, attempt + 1) <= policy.max_delay_s
    assert _base(policy, attempt) >= min(policy.initial_delay_s, policy.max_delay_s)


@given(policy=policies, attempt=attempts, seed=seeds)
def test_full_jitter_is_within_zero_and_the_base(policy: RetryPolicy, attempt: int, seed: int) -> None:
    full = policy.model_copy(update={"jitter": "full"})
    assert 0 <= compute_delay(full, attempt, None, random.Random(seed)) <= _base(policy, attempt)


@given(policy=policies, attempt=attempts, seed=seeds)
def test_equal_jitter_is_within_half_and_the_base(policy: RetryPolicy, attempt: int, seed: int) -> None:
    equal = policy.model_copy(update={"jitter": "equal"})
    base = _base(policy, attempt)
    assert base / 2 <= compute_delay(equal, attempt, None, random.Random(seed)) <= base


@given(policy=policies, attempt=attempts, previous=st.none() | st.floats(0, 2000), seed=seeds)
def test_decorrelated_jitter_is_within_initial_and_the_cap(
    policy: RetryPolicy, attempt: int, previous: float | None, seed: int
) -> None:
    decorrelated = policy.model_copy(update={"jitter": "decorrelated"})
    delay = compute_delay(decorrelated, attempt, previous, random.Random(seed))
    assert policy.initial_delay_s <= delay <= policy.max_delay_s


# -------------------------------------------------------------------------------------- retrying
def test_exact_number_of_attempts_and_the_original_exception(fake: FakeTime) -> None:
    error = ConnectionRefusedError("refused")
    fn = Failing(error)
    with pytest.raises(ConnectionRefusedError) as info:
        call_with_retry(fn, {"maxAttempts": 4}, sleep=fake.sleep, clock=fake.clock, rng=random.Random(1))
    assert info.value is error  # never tenacity.RetryError
    assert fn.calls == 4 and len(fake.sleeps) == 3


def test_success_after_transient_failures(fake: FakeTime) -> None:
    fn = Failing(TimeoutError(), times=2, result=42)
    assert call_with_retry(fn, RetryPolicy(jitter="none"), sleep=fake.sleep, clock=fake.clock) == 42
    assert fn.calls == 3 and fake.sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    "error", [ValueError("bad"), DataError("bad row"), KeyError("k"), PermissionError("no")]
)
def test_non_transient_errors_are_not_retried(fake: FakeTime, error: Exception) -> None:
    fn = Failing(error)
    with pytest.raises(type(error)):
        call_with_retry(fn, RetryPolicy(), sleep=fake.sleep, clock=fake.clock)
    assert fn.calls == 1 and fake.sleeps == []


def test_a_user_predicate_adds_retryability(fake: FakeTime) -> None:
    classifier = chain_classifiers(classifier_from_predicate(lambda e: isinstance(e, KeyError)), classify_any)
    fn = Failing(KeyError("flaky"), times=2)
    assert (
        call_with_retry(fn, RetryPolicy(), classifier=classifier, sleep=fake.sleep, clock=fake.clock) == "ok"
    )
    assert fn.calls == 3


def test_a_transient_error_followed_by_a_permanent_one_stops_there(fake: FakeTime) -> None:
    fn = Failing(TimeoutError(), ValueError("permanent"))
    with pytest.raises(ValueError):
        call_with_retry(fn, RetryPolicy(), sleep=fake.sleep, clock=fake.clock)
    assert fn.calls == 2


def test_on_retry_gets_every_retry(fake: FakeTime) -> None:
    events: list[RetryEvent] = []
    errors = [ConnectionResetError(f"reset {n}") for n in range(3)]
    fn = Failing(*errors)
    with pytest.raises(ConnectionResetError):
        call_with_retry(
            fn, RetryPolicy(max_attempts=3), sleep=fake.sleep, clock=fake.clock,
            rng=random.Random(3), on_retry=events.append, op="load orders",
        )  # fmt: skip
    assert [e.attempt for e in events] == [1, 2]
    assert [e.delay_s for e in events] == fake.sleeps
    assert [e.error for e in events] == errors[:2]
    assert {e.kind for e in events} == {ErrorKind.TRANSIENT} and {e.op for e in events} == {"load orders"}


def test_a_failing_on_retry_callback_changes_nothing(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: RetryEvent) -> None:
        raise RuntimeError("metrics down")

    fn = Failing(TimeoutError(), times=1)
    assert call_with_retry(fn, RetryPolicy(), sleep=fake.sleep, clock=fake.clock, on_retry=broken) == "ok"
    assert "on_retry callback failed" in caplog.text


def test_each_retry_is_logged(fake: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="airflow_etl_provider.retry")
    fn = Failing(ConnectionRefusedError("port 5432 refused"), times=1)
    call_with_retry(fn, RetryPolicy(jitter="none"), sleep=fake.sleep, clock=fake.clock, op="jdbc write")
    (record,) = [r for r in caplog.records if r.name == "airflow_etl_provider.retry"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "jdbc write: attempt 1 of 5 failed (ConnectionRefusedError: port 5432 refused); retrying in 1.00 s"
    )


def test_deadline_stops_before_a_sleep_would_pass_it(fake: FakeTime) -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay_s=10, max_delay_s=100, jitter="none", deadline_s=25)
    fn = Failing(TimeoutError())
    with pytest.raises(TimeoutError):
        call_with_retry(fn, policy, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == [10.0]  # a 20 s sleep at t=10 would end at 30 > 25
    assert fn.calls == 2


def test_deadline_counts_time_spent_in_the_calls(fake: FakeTime) -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay_s=1, max_delay_s=1, jitter="none", deadline_s=10)

    def slow() -> None:
        fake.now += 4  # each attempt takes 4 s
        raise TimeoutError()

    retrier = Retrier(policy, sleep=fake.sleep, clock=fake.clock)
    with pytest.raises(TimeoutError):
        retrier.call(slow)
    assert retrier.last_attempts == 3  # 4 + 1 + 4 + 1 = 10 is allowed; 14 + 1 would pass the deadline
    fake.now += 1000  # a later call has its own deadline, measured from its first attempt
    with pytest.raises(TimeoutError):
        retrier.call(slow)
    assert retrier.last_attempts == 3


def test_retrier_keeps_counts_and_passes_arguments(fake: FakeTime) -> None:
    retrier = Retrier({"maxAttempts": 3, "jitter": False}, sleep=fake.sleep, clock=fake.clock)
    flaky = Failing(TimeoutError(), times=1)
    assert retrier.call(lambda a, b=0: (flaky(), a + b)[1], 1, b=2) == 3
    assert (retrier.calls, retrier.attempts, retrier.retries, retrier.last_attempts) == (1, 2, 1, 2)
    with pytest.raises(TimeoutError):
        retrier.call(Failing(TimeoutError()))
    assert (retrier.calls, retrier.attempts, retrier.retries, retrier.last_attempts) == (2, 5, 3, 3)
    retrier.call(lambda: None)
    assert (retrier.calls, retrier.attempts, retrier.retries, retrier.last_attempts) == (3, 6, 3, 1)


def test_same_seed_same_sleeps() -> None:
    def sleeps(seed: int) -> list[float]:
        fake = FakeTime()
        with pytest.raises(TimeoutError):
            call_with_retry(
                Failing(TimeoutError()),
                RetryPolicy(),
                sleep=fake.sleep,
                clock=fake.clock,
                rng=random.Random(seed),
            )
        return fake.sleeps

    assert sleeps(5) == sleeps(5) != sleeps(6)


def test_decorrelated_sleeps_follow_the_previous_sleep(fake: FakeTime) -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay_s=1, max_delay_s=1000, jitter="decorrelated")
    with pytest.raises(TimeoutError):
        call_with_retry(
            Failing(TimeoutError()), policy, sleep=fake.sleep, clock=fake.clock, rng=random.Random(9)
        )
    expected, previous, rng = [], None, random.Random(9)
    for attempt in range(1, 6):
        previous = compute_delay(policy, attempt, previous, rng)
        expected.append(previous)
    assert fake.sleeps == expected


def test_build_retrying_is_a_composable_tenacity_retrying(fake: FakeTime) -> None:
    policy = RetryPolicy(max_attempts=3, jitter="none")
    retrying = build_retrying(policy, sleep=fake.sleep, clock=fake.clock)
    assert isinstance(retrying, tenacity.Retrying)
    fn = Failing(TimeoutError(), times=2)
    assert retrying.wraps(fn)() == "ok"
    assert isinstance(PolicyWait(policy), wait_base)
    combined = build_retrying(policy, sleep=fake.sleep, clock=fake.clock).copy(
        wait=PolicyWait(policy) + wait_fixed(5)
    )
    fake.sleeps.clear()
    assert combined(Failing(TimeoutError(), times=1)) == "ok"
    assert fake.sleeps == [6.0]
