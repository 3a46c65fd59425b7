"""Retry and circuit breaker composed: the one call path every hook uses to touch a protected system.

Each *attempt* passes through the breaker: a transient failure is counted by the shared breaker and
retried by the policy; once the breaker opens (because of this task's failures or anyone else's), the
next attempt is refused with :class:`~airflow_etl_provider.core.errors.CircuitOpenError`, which is never
retried, so a task stops hammering a system that is down and the operator can reschedule it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_etl_provider.core.circuit_breaker import SharedCircuitBreaker
from airflow_etl_provider.core.errors import CircuitOpenError, ErrorKind, classify_any
from airflow_etl_provider.core.retry import Retrier, RetryEvent, RetryPolicy

T = TypeVar("T")


@dataclass
class GuardStats:
    """What a guard did, for the task's result and metrics.

    :param calls: guarded calls made.
    :param attempts: attempts that reached the protected system.
    :param retries: attempts beyond the first of each call.
    :param refused: attempts the open breaker refused.
    :param retry_events: one entry per retry (attempt, delay, error class) for logs and metrics.
    """

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    refused: int = 0
    retry_events: list[RetryEvent] = field(default_factory=list)


class Guard:
    """Call a protected system with retries, through an optional shared circuit breaker.

    :param retry: the retry policy (or its config).
    :param breaker: the shared breaker, or ``None`` for retries only.
    :param classifier: sorts errors into transient / system / data (per protected system).
    :param op: the operation's name in logs and events.
    :param sleep: sleeps between attempts (injectable for tests).
    :param clock: a monotonic clock for the retry deadline (injectable for tests).
    :param on_retry: also called with each :class:`RetryEvent` (metrics hook).
    """

    def __init__(
        self,
        retry: RetryPolicy | dict[str, Any] | None = None,
        breaker: SharedCircuitBreaker | None = None,
        *,
        classifier: Callable[[BaseException], ErrorKind | None] = classify_any,
        op: str = "operation",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        self.breaker = breaker
        self.stats = GuardStats()
        self._on_retry = on_retry

        def _classify(exc: BaseException) -> ErrorKind | None:
            if isinstance(exc, CircuitOpenError):
                return ErrorKind.SYSTEM  # never retried: the breaker already decided
            return classifier(exc)

        self.retrier = Retrier(
            retry, classifier=_classify, sleep=sleep, clock=clock, on_retry=self._record_retry, op=op
        )

    def _record_retry(self, event: RetryEvent) -> None:
        self.stats.retry_events.append(event)
        if self._on_retry is not None:
            self._on_retry(event)

    def _attempt(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.breaker is None:
            self.stats.attempts += 1
            return fn(*args, **kwargs)

        def counted() -> T:
            self.stats.attempts += 1
            return fn(*args, **kwargs)

        try:
            return self.breaker.call(counted)
        except CircuitOpenError:
            self.stats.refused += 1
            raise

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)``: retried per policy, each attempt through the breaker.

        :raises CircuitOpenError: when the breaker refuses an attempt (not retried).
        :raises Exception: the last error of ``fn`` when it is not transient or attempts ran out.
        """
        self.stats.calls += 1
        before = self.retrier.attempts
        try:
            return self.retrier.call(self._attempt, fn, *args, **kwargs)
        finally:
            self.stats.retries += max(0, self.retrier.attempts - before - 1)
