"""Retry and circuit breaker composed: the one call path every hook uses to touch a protected system.

Each *attempt* passes through the breaker: a transient failure is counted by the shared breaker and
retried by the policy; once the breaker opens (because of this task's failures or anyone else's), the
next attempt is refused with :class:`~airflow_etl_provider.core.errors.CircuitOpenError`, which is never
retried, so a task stops hammering a system that is down and the operator can reschedule it.

The same holds when the failure that opens the breaker is the task's own last attempt: the guard then raises
the breaker's :class:`~airflow_etl_provider.core.errors.CircuitOpenError`, chained to that failure, so the
task waits for the half-open moment instead of failing (with the default policies, 5 attempts and a threshold
of 5, a lone task facing a dead database would otherwise always fail).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_etl_provider.core.circuit_breaker import SharedCircuitBreaker
from airflow_etl_provider.core.errors import CircuitOpenError, ErrorKind, classify_any
from airflow_etl_provider.core.retry import Retrier, RetryEvent, RetryPolicy

T = TypeVar("T")

log = logging.getLogger(__name__)


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
        self._classifier = classifier

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

        :raises CircuitOpenError: when the breaker refuses an attempt (not retried), or when the attempts ran
            out on a transient or system error and the breaker is open by then (chained to that error).
        :raises Exception: the last error of ``fn`` when it is a data error, or attempts ran out while the
            breaker still admits calls.
        """
        self.stats.calls += 1
        before = self.retrier.attempts
        try:
            return self.retrier.call(self._attempt, fn, *args, **kwargs)
        except CircuitOpenError:
            raise
        except Exception as err:
            refusal = self._open_breaker_refusal(err)
            if refusal is not None:
                raise refusal from err
            raise
        finally:
            self.stats.retries += max(0, self.retrier.attempts - before - 1)

    def _open_breaker_refusal(self, err: Exception) -> CircuitOpenError | None:
        """The breaker's refusal if ``err`` is the kind of failure it counts and it is open now."""
        if self.breaker is None or self._classifier(err) is ErrorKind.DATA:
            return None  # a data error is not fixed by waiting for the system to come back
        try:
            return self.breaker.refusal()
        except Exception:  # the store cannot be read: the task's own error is the one to report
            log.exception("Circuit breaker %r: could not read its state after the last attempt failed",
                          self.breaker.name)
            return None
