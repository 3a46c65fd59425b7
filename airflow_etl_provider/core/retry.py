"""Retry with exponential backoff and jitter, built on tenacity.

Only errors that the classifier calls ``TRANSIENT`` are retried; the original exception always
surfaces (never ``tenacity.RetryError``). Sleep, clock and random generator are injectable, so tests
never wait. Jitter modes follow the AWS Architecture Blog's "Exponential Backoff And Jitter": with
``b = min(max_delay, initial * multiplier ** (attempt - 1))``

* ``full``: ``uniform(0, b)``
* ``equal``: ``b / 2 + uniform(0, b / 2)``
* ``decorrelated``: ``min(max_delay, uniform(initial, 3 * previous_delay))``
* ``none``: ``b``
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeVar

import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from tenacity.stop import stop_after_attempt, stop_base
from tenacity.wait import wait_base

from airflow_etl_provider.core.errors import ConfigError, ErrorKind, classify_any

__all__ = [
    "ConfigModel",
    "PolicyWait",
    "Retrier",
    "RetryEvent",
    "RetryPolicy",
    "build_retrying",
    "call_with_retry",
    "compute_delay",
    "ms_to_s",
    "to_field",
]

log = logging.getLogger("airflow_etl_provider.retry")

T = TypeVar("T")

# An accepted config key -> the model fields its value sets (a converter may raise ValueError).
KeyMap = Mapping[str, Callable[[Any], dict[str, Any]]]


def _same(value: Any) -> Any:
    return value


def to_field(name: str, convert: Callable[[Any], Any] = _same) -> Callable[[Any], dict[str, Any]]:
    """A config key that sets the model field ``name`` to ``convert(value)``.

    :param name: the model field.
    :param convert: converts the configured value (e.g. :func:`ms_to_s`).
    """
    return lambda value: {name: convert(value)}


def ms_to_s(value: Any) -> Any:
    """Milliseconds to seconds; anything that is not a number passes through for validation to reject."""
    return value / 1000 if isinstance(value, int | float) and not isinstance(value, bool) else value


def _problem(error: Mapping[str, Any]) -> str:
    ctx = error.get("ctx", {})
    match error["type"]:
        case "greater_than_equal":
            return f"must be >= {ctx['ge']:g}"
        case "greater_than":
            return f"must be > {ctx['gt']:g}"
        case "literal_error":
            return f"must be one of {ctx['expected']}"
        case "missing":
            return "is required"
        case "extra_forbidden":
            return "unknown key"
        case "value_error":
            return str(ctx["error"])
    message: str = error["msg"]
    return message[:1].lower() + message[1:]


def _config_error(
    exc: ValidationError, path: str, origins: Mapping[str, tuple[str, Any]] | None = None
) -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a :class:`ConfigError` that speaks the user's keys.

    :param exc: the validation error.
    :param path: the dotted path of the model in the configuration, e.g. ``errorHandling.retry``.
    :param origins: model field -> (the key the user wrote, the value the user wrote), so a message
        names ``maxDelayMs`` and ``500`` rather than ``max_delay_s`` and ``0.5``.
    """
    origins = origins or {}
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(item) for item in error["loc"]]
        value = error.get("input")
        if loc and loc[0] in origins:
            loc[0], value = origins[loc[0]]
        got = "" if error["type"] == "missing" else f" (got {value!r})"
        problems.append((".".join(filter(None, [path, *loc])), f"{_problem(error)}{got}"))
    (where, first), *others = problems
    return ConfigError(where, "; ".join([first, *(f"{other}: {problem}" for other, problem in others)]))


class ConfigModel(BaseModel):
    """Base of the provider's configuration models: frozen, strict, unknown keys rejected.

    Invalid values raise :class:`ConfigError` (a ``ValueError``), whose message names the field, the
    value given and what is allowed. :meth:`from_mapping` also accepts the spellings listed in
    ``config_keys`` (camelCase, milliseconds) and reports errors with the key the user wrote.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    config_path: ClassVar[str] = ""
    config_keys: ClassVar[KeyMap] = {}

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc, type(self).config_path) from None

    @classmethod
    def from_mapping(cls, data: Any, path: str, defaults: Mapping[str, Any] | None = None) -> Self:
        """Build the model from a mapping keyed by any of ``config_keys``.

        :param data: the configuration block.
        :param path: its dotted path, used in error messages.
        :param defaults: field values used when no key sets them.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(path, "must be a mapping", value=data)
        fields: dict[str, Any] = {}
        origins: dict[str, tuple[str, Any]] = {}
        for key, value in data.items():
            if key not in cls.config_keys:
                raise ConfigError(f"{path}.{key}", "unknown key", allowed=sorted(cls.config_keys))
            try:
                converted = cls.config_keys[key](value)
            except ValueError as exc:
                raise ConfigError(f"{path}.{key}", str(exc), value=value) from None
            for name, field_value in converted.items():
                if name in fields:
                    raise ConfigError(
                        f"{path}.{key}", f"conflicts with {origins[name][0]!r}: give only one of them"
                    )
                fields[name] = field_value
                origins[name] = (key, value)
        fields = {**(defaults or {}), **fields}
        model = cls.__new__(cls)
        try:
            # BaseModel.__init__ directly: our __init__ would report errors without the user's keys.
            BaseModel.__init__(model, **fields)
        except ValidationError as exc:
            raise _config_error(exc, path, origins) from None
        return model


def _jitter_mode(value: Any) -> Any:
    if isinstance(value, bool):
        return "full" if value else "none"
    return value


class RetryPolicy(ConfigModel):
    """How to retry transient failures.

    :param strategy: ``exponential-backoff`` (the delay grows by ``multiplier`` each attempt) or
        ``fixed`` (always ``initial_delay_s``, before jitter).
    :param max_attempts: attempts in total, the first one included (1 = no retry).
    :param initial_delay_s: the delay after the first failure, in seconds.
    :param max_delay_s: the cap on any delay, in seconds.
    :param multiplier: growth factor of exponential backoff.
    :param jitter: ``full``, ``equal``, ``decorrelated`` or ``none``.
    :param deadline_s: stop retrying when the next sleep would end more than this many seconds after
        the first attempt started.
    """

    config_path: ClassVar[str] = "retry"
    config_keys: ClassVar[KeyMap] = {
        "strategy": to_field("strategy"),
        "max_attempts": to_field("max_attempts"),
        "maxAttempts": to_field("max_attempts"),
        "initial_delay_s": to_field("initial_delay_s"),
        "initialDelayMs": to_field("initial_delay_s", ms_to_s),
        "initialDelaySeconds": to_field("initial_delay_s"),
        "max_delay_s": to_field("max_delay_s"),
        "maxDelayMs": to_field("max_delay_s", ms_to_s),
        "maxDelaySeconds": to_field("max_delay_s"),
        "multiplier": to_field("multiplier"),
        "backoffMultiplier": to_field("multiplier"),
        "jitter": to_field("jitter", _jitter_mode),
        "deadline_s": to_field("deadline_s"),
        "deadlineMs": to_field("deadline_s", ms_to_s),
        "deadlineSeconds": to_field("deadline_s"),
        "delaySeconds": lambda value: {"initial_delay_s": value, "max_delay_s": value},
    }

    strategy: Literal["exponential-backoff", "fixed"] = "exponential-backoff"
    max_attempts: int = Field(default=5, ge=1)
    initial_delay_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=60.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: Literal["full", "equal", "decorrelated", "none"] = "full"
    deadline_s: float | None = Field(default=None, gt=0)

    @field_validator("max_delay_s")
    @classmethod
    def _not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_delay_s")
        if initial is not None and value < initial:
            raise ValueError(f"must be >= the initial delay ({initial:g} s)")
        return value

    @classmethod
    def from_config(cls, obj: RetryPolicy | Mapping[str, Any] | None, *, path: str = "retry") -> RetryPolicy:
        """Build a policy from a policy, ``None`` (the defaults), or a mapping.

        The mapping may use the field names (``max_attempts``, ``initial_delay_s`` ...), the pipeline
        config's camelCase block (``maxAttempts``, ``initialDelayMs``, ``maxDelayMs``,
        ``backoffMultiplier``, ``jitter: true|false``, ``deadlineMs`` or ``deadlineSeconds``), or the
        legacy fixed-delay form ``{"maxAttempts": 3, "delaySeconds": 5}`` (fixed 5 s, no jitter).

        :param obj: the configuration.
        :param path: where the block sits in the configuration, for error messages.
        :raises ConfigError: naming the key, the value and what is allowed.
        """
        if isinstance(obj, RetryPolicy):
            return obj
        if obj is None:
            return cls()
        legacy = (
            {"strategy": "fixed", "jitter": "none"}
            if isinstance(obj, Mapping) and "delaySeconds" in obj
            else None
        )
        return cls.from_mapping(obj, path, legacy)


def compute_delay(
    policy: RetryPolicy, attempt: int, previous_delay: float | None, rng: random.Random
) -> float:
    """The delay before the next attempt, in seconds, always within ``[0, policy.max_delay_s]``.

    :param policy: the retry policy.
    :param attempt: the 1-based number of the attempt that just failed.
    :param previous_delay: the delay used before this attempt (``None`` after the first attempt); only
        decorrelated jitter uses it.
    :param rng: the random generator.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (got {attempt})")
    initial, cap = policy.initial_delay_s, policy.max_delay_s
    if policy.jitter == "decorrelated":
        upper = max(initial, (initial if previous_delay is None else previous_delay) * 3)
        return min(cap, rng.uniform(initial, upper))
    base = initial
    if policy.strategy == "exponential-backoff":
        try:
            base = min(cap, initial * policy.multiplier ** (attempt - 1))
        except OverflowError:
            base = cap
    if policy.jitter == "full":
        return min(base, rng.uniform(0, base))
    if policy.jitter == "equal":
        return min(base, base / 2 + rng.uniform(0, base / 2))
    return base


class PolicyWait(wait_base):
    """A tenacity wait strategy for a :class:`RetryPolicy`'s backoff and jitter.

    It composes like any tenacity wait (``PolicyWait(policy) + wait_fixed(1)``).

    :param policy: the retry policy.
    :param rng: the random generator (a fresh ``random.Random()`` if not given).
    """

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        # Tenacity leaves the previous sleep in upcoming_sleep until this call replaces it.
        previous = retry_state.upcoming_sleep if retry_state.attempt_number > 1 else None
        return compute_delay(self.policy, retry_state.attempt_number, previous, self.rng)


class _Deadline(stop_base):
    """Stop when the next sleep would end after the deadline, timed with an injectable clock.

    ``start`` is the ``before`` hook that records when a call's first attempt starts.
    """

    def __init__(self, deadline_s: float, clock: Callable[[], float]) -> None:
        self.deadline_s = deadline_s
        self.clock = clock
        self._started: weakref.WeakKeyDictionary[tenacity.RetryCallState, float] = weakref.WeakKeyDictionary()

    def start(self, retry_state: tenacity.RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            self._started[retry_state] = self.clock()

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        now = self.clock()
        started = self._started.setdefault(retry_state, now)
        return now - started + retry_state.upcoming_sleep > self.deadline_s


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen, passed to ``on_retry`` (e.g. to count retries in metrics).

    :param attempt: the 1-based number of the attempt that failed.
    :param delay_s: the sleep before the next attempt.
    :param error: the exception of the failed attempt.
    :param kind: its classification.
    :param op: the name of the operation being retried.
    """

    attempt: int
    delay_s: float
    error: BaseException
    kind: ErrorKind
    op: str


def build_retrying(
    policy: RetryPolicy,
    *,
    classifier: Callable[[BaseException], ErrorKind | None] = classify_any,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[RetryEvent], None] | None = None,
    op: str = "operation",
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` that follows ``policy`` and retries only transient errors.

    It stops after ``policy.max_attempts`` attempts, or when the next sleep would pass
    ``policy.deadline_s``; then the last exception is re-raised as is. Before each sleep it logs a
    warning (logger ``airflow_etl_provider.retry``) and calls ``on_retry``.

    :param policy: the retry policy.
    :param classifier: decides which errors are transient; see :mod:`airflow_etl_provider.core.errors`.
    :param sleep: sleeps between attempts.
    :param clock: a monotonic clock in seconds, for the deadline.
    :param rng: the random generator for jitter.
    :param on_retry: called with a :class:`RetryEvent` before each sleep; its errors are logged, not raised.
    :param op: a name for the operation, used in logs and events.
    """

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if error is None:
            return
        event = RetryEvent(
            attempt=retry_state.attempt_number,
            delay_s=retry_state.upcoming_sleep,
            error=error,
            kind=classifier(error) or ErrorKind.SYSTEM,
            op=op,
        )
        log.warning(
            "%s: attempt %d of %d failed (%s: %s); retrying in %.2f s",
            op,
            event.attempt,
            policy.max_attempts,
            type(error).__name__,
            error,
            event.delay_s,
        )
        if on_retry is not None:
            try:
                on_retry(event)
            except Exception:
                log.exception("%s: the on_retry callback failed", op)

    stop: stop_base = stop_after_attempt(policy.max_attempts)
    before: Callable[[tenacity.RetryCallState], None] = tenacity.before_nothing
    if policy.deadline_s is not None:
        deadline = _Deadline(policy.deadline_s, clock)
        stop, before = stop | deadline, deadline.start
    return tenacity.Retrying(
        sleep=sleep,
        stop=stop,
        wait=PolicyWait(policy, rng),
        retry=tenacity.retry_if_exception(lambda exc: classifier(exc) is ErrorKind.TRANSIENT),
        before=before,
        before_sleep=before_sleep,
        reraise=True,
        name=op,
    )


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy | Mapping[str, Any] | None = None,
    *,
    classifier: Callable[[BaseException], ErrorKind | None] = classify_any,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[RetryEvent], None] | None = None,
    op: str = "operation",
) -> T:
    """Call ``fn()``, retrying transient failures per ``policy``; return its result or raise its last error.

    :param fn: the function, without arguments (use ``functools.partial`` to bind some).
    :param policy: a :class:`RetryPolicy` or its configuration (see :meth:`RetryPolicy.from_config`).
    :param classifier: decides which errors are transient.
    :param sleep: sleeps between attempts.
    :param clock: a monotonic clock in seconds, for the deadline.
    :param rng: the random generator for jitter.
    :param on_retry: called with a :class:`RetryEvent` before each sleep.
    :param op: a name for the operation, used in logs and events.
    """
    return Retrier(
        policy, classifier=classifier, sleep=sleep, clock=clock, rng=rng, on_retry=on_retry, op=op
    ).call(fn)


class Retrier:
    """A reusable retrier that keeps counts of its attempts.

    :param policy: a :class:`RetryPolicy` or its configuration (see :meth:`RetryPolicy.from_config`).
    :param classifier: decides which errors are transient.
    :param sleep: sleeps between attempts.
    :param clock: a monotonic clock in seconds, for the deadline.
    :param rng: the random generator for jitter.
    :param on_retry: called with a :class:`RetryEvent` before each sleep.
    :param op: a name for the operation, used in logs and events.

    After calls, ``calls`` is the number of :meth:`call` invocations, ``attempts`` the attempts made
    in total, ``retries`` the attempts beyond the first of each call, and ``last_attempts`` the
    attempts of the most recent call.
    """

    def __init__(
        self,
        policy: RetryPolicy | Mapping[str, Any] | None = None,
        *,
        classifier: Callable[[BaseException], ErrorKind | None] = classify_any,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        op: str = "operation",
    ) -> None:
        self.policy = RetryPolicy.from_config(policy)
        self._retrying = build_retrying(
            self.policy, classifier=classifier, sleep=sleep, clock=clock, rng=rng, on_retry=on_retry, op=op
        )
        self._lock = threading.Lock()
        self.calls = 0
        self.attempts = 0
        self.retries = 0
        self.last_attempts = 0

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` with retries; return its result or raise its last error.

        :param fn: the function.
        :param args: its positional arguments.
        :param kwargs: its keyword arguments.
        """
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return fn(*args, **kwargs)

        try:
            return self._retrying(attempt)
        finally:
            with self._lock:
                self.calls += 1
                self.attempts += attempts
                self.retries += max(0, attempts - 1)
                self.last_attempts = attempts
