"""Airflow glue for the resilience core: run context, guards and what an open breaker means for a task.

Operators (and ``@task`` code) use :func:`guard_for` to call a protected system and
:func:`raise_for_open_circuit` to turn a refusal into Airflow semantics:

* ``on_open="reschedule"`` (default): :class:`AirflowRescheduleException` with the breaker's
  ``retry_at``: the task leaves its worker slot, keeps its try number (no Airflow retry is spent) and
  the scheduler runs it again when the breaker turns half-open;
* ``on_open="fail"``: :class:`AirflowFailException` with the breaker's message (no retries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_etl_provider.core.breaker_policy import jittered_reschedule
from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.envelope import RunContext
from airflow_etl_provider.core.errors import CircuitOpenError, ErrorKind, classify_any
from airflow_etl_provider.core.guard import Guard
from airflow_etl_provider.core.retry import RetryPolicy
from airflow_etl_provider.hooks.circuit_breaker import breaker_for

if TYPE_CHECKING:
    import random


def run_context(context: Mapping[str, Any] | None, pipeline_id: str | None = None) -> RunContext:
    """The dag/task/run/try of the running task (all ``None`` outside a task).

    :param context: the Airflow task context.
    :param pipeline_id: defaults to the dag_id.
    """
    ti = (context or {}).get("ti")
    if ti is None:
        return RunContext(
            dag_id=None, task_id=None, run_id=None, try_number=None, pipeline_id=pipeline_id or "adhoc"
        )
    return RunContext(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        try_number=ti.try_number,
        pipeline_id=pipeline_id or ti.dag_id,
    )


def guard_for(
    protected_conn_id: str,
    *,
    retry: RetryPolicy | Mapping[str, Any] | None = None,
    circuit_breaker: CircuitBreakerPolicy | Mapping[str, Any] | None = None,
    classifier: Callable[[BaseException], ErrorKind | None] = classify_any,
    context: Mapping[str, Any] | None = None,
    op: str | None = None,
) -> Guard:
    """A :class:`Guard` for one protected system, its breaker shared through Airflow Variables.

    :param protected_conn_id: the connection id; the breaker's name defaults to it.
    :param retry: retry policy or config (``None``: defaults).
    :param circuit_breaker: breaker policy or config; ``None`` or ``{"enabled": false}``: no breaker.
    :param classifier: per-system error classifier (e.g. ``classify_postgres``).
    :param context: the task context (writer id in the breaker document).
    :param op: the operation's name in logs.
    """
    breaker = None
    if circuit_breaker is not None:
        policy = CircuitBreakerPolicy.from_config(circuit_breaker)
        breaker = breaker_for(policy, protected_conn_id, context=context, classifier=classifier)
    return Guard(RetryPolicy.from_config(retry), breaker, classifier=classifier, op=op or protected_conn_id)


def raise_for_open_circuit(
    err: CircuitOpenError,
    on_open: str = "reschedule",
    *,
    policy: CircuitBreakerPolicy | None = None,
    rng: random.Random | None = None,
) -> NoReturn:
    """Turn a breaker refusal into a reschedule (default) or a fast failure.

    * ``on_open="reschedule"``: :class:`AirflowRescheduleException` with the breaker's ``retry_at`` plus a
      bounded random jitter (``reschedule_jitter_s``, never earlier than ``retry_at``): the task leaves its
      worker slot, keeps its try number and runs again once the breaker has turned half-open, the refused
      tasks spread over the jitter window instead of all racing for the trial call at the same instant;
    * ``on_open="fail"``: :class:`AirflowFailException` with the breaker's message (no retries).

    :param err: the refusal.
    :param on_open: ``reschedule`` or ``fail``.
    :param policy: the breaker's policy: the reschedule date is ``err.retry_at`` plus a random delay in
        ``[0, policy.jitter_bound_s()]``; ``None``: exactly ``err.retry_at``.
    :param rng: the random source for the jitter (seed one in tests).
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

    if on_open == "reschedule":
        bound = policy.jitter_bound_s() if policy is not None else 0.0
        raise AirflowRescheduleException(reschedule_date=jittered_reschedule(err.retry_at, bound, rng)) from err
    raise AirflowFailException(str(err)) from err
