"""The circuit breaker's shared state, stored in Airflow Variables.

One JSON Variable per breaker, ``etl_circuit_breaker__<name>`` (the name defaults to the protected
connection id), so every task, DAG and worker touching the same system shares one breaker. A person can
see it in the UI (Admin -> Variables) and reset it by deleting the Variable or by
``airflow-etl breaker reset <name>``.

Inside a running task (also under ``airflow dags test`` / ``dag.test()``) the Task SDK's
:class:`airflow.sdk.Variable` is used (through the execution API); outside a task (a CLI, a test fixture)
there is no supervisor to talk to, so :class:`airflow.models.Variable` reads and writes the metadata DB
directly. Both are last-writer-wins upserts with no compare-and-set: the consistency model that follows
from that is documented on :class:`~airflow_etl_provider.core.circuit_breaker.SharedCircuitBreaker`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

from airflow_etl_provider.core.circuit_breaker import (
    BreakerSnapshot,
    BreakerStore,
    CircuitBreakerPolicy,
    SharedCircuitBreaker,
    variable_key,
)

log = logging.getLogger(__name__)


def in_task_process() -> bool:
    """True inside a task run by the Task SDK supervisor (where ``airflow.sdk.Variable.set`` works)."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover - Airflow < 3
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


class AirflowVariableBreakerStore(BreakerStore):
    """:class:`BreakerStore` on Airflow Variables: one JSON document per breaker.

    Each ``load`` is one Variable read and each ``save`` one Variable write; the breaker reads once per
    protected call and writes only when its state changes.
    """

    def load(self, name: str) -> BreakerSnapshot | None:
        raw = self._get(variable_key(name))
        if raw is None:
            return None
        return BreakerSnapshot.from_json(raw)

    def save(self, name: str, snap: BreakerSnapshot) -> None:
        self._set(variable_key(name), json.dumps(snap.to_json(), sort_keys=True))

    def delete(self, name: str) -> None:
        key = variable_key(name)
        if in_task_process():
            from airflow.sdk import Variable

            Variable.delete(key)
        else:
            from airflow.models import Variable as ModelVariable

            ModelVariable.delete(key)

    @staticmethod
    def _get(key: str) -> Any:
        if in_task_process():
            from airflow.sdk import Variable

            return Variable.get(key, default=None)
        from airflow.models import Variable as ModelVariable

        return ModelVariable.get(key, default_var=None)

    @staticmethod
    def _set(key: str, value: str) -> None:
        description = "airflow-etl-provider circuit breaker state (delete or reset to close it)"
        if in_task_process():
            from airflow.sdk import Variable

            Variable.set(key, value, description=description)
        else:
            from airflow.models import Variable as ModelVariable

            ModelVariable.set(key, value, description=description)


def who_am_i(context: Any | None = None) -> str:
    """A short writer id for the breaker document: ``dag.task.run#try@host:pid`` (or ``host:pid``)."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    if not context:
        return base
    ti = context.get("ti") or context.get("task_instance")
    if ti is None:
        return base
    return f"{ti.dag_id}.{ti.task_id}.{ti.run_id}#{ti.try_number}@{base}"


def breaker_for(
    policy: CircuitBreakerPolicy,
    default_name: str,
    *,
    context: Any | None = None,
    store: BreakerStore | None = None,
    **kwargs: Any,
) -> SharedCircuitBreaker | None:
    """Build the shared breaker for ``policy`` (``None`` when disabled).

    :param policy: the breaker policy; ``policy.name`` wins over ``default_name``.
    :param default_name: usually the protected connection id, so every task on the same system shares it.
    :param context: the Airflow task context, for the writer id.
    :param store: defaults to :class:`AirflowVariableBreakerStore`.
    """
    if not policy.enabled:
        return None
    return SharedCircuitBreaker(
        policy.name or default_name,
        policy,
        store or AirflowVariableBreakerStore(),
        who=who_am_i(context),
        **kwargs,
    )
