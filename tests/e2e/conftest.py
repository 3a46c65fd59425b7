"""Fixtures for end-to-end tests against the REAL running Airflow 3 (api-server, scheduler, dag-processor,
triggerer) of the local stack, driven through its public REST API with the official client package
``apache-airflow-client`` (import name ``airflow_client.client``).

Nothing here starts or stops Airflow: a deployment that is down or unhealthy is a failure with a clear
message, never a skip. Load the stack's environment first::

    set -a; . .local/airflow.env; set +a

Fixture names are prefixed (``airflow_api``, ``airflow_rest_url``) so they do not clash with fixtures of
other e2e modules (e.g. the browser test).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import requests

T = TypeVar("T")

REQUIRED_ENV = ("AIRFLOW_ETL_UI_URL", "AIRFLOW_ETL_ADMIN_PASSWORD", "ETL_STACK_KAFKA_PORT",
                "ETL_STACK_PG_OUTAGE_PORT")
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def pytest_configure(config: pytest.Config) -> None:
    # setup.cfg runs pytest with --strict-markers and does not list this marker: register it here.
    config.addinivalue_line("markers", "e2e: drives the real running Airflow deployment of the local stack")
    missing = [k for k in REQUIRED_ENV if not os.environ.get(k)]
    if missing:
        raise pytest.UsageError(
            f"e2e tests need the local stack's env ({', '.join(missing)} unset): "
            "`set -a; . .local/airflow.env; set +a` (and Airflow running: `make airflow-up`)")


def wait_for(condition: Callable[[], T | None], *, timeout: float, interval: float = 2.0,
             what: str, last: Callable[[], str] | None = None) -> T:
    """Poll ``condition`` until it returns a truthy value (returned); fail the test after ``timeout`` s.

    ``condition`` may itself fail the test early (``pytest.fail``) when it sees a state that can never
    lead to the awaited one. ``last`` describes the last observed state for the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                        + (f"; last observed: {last()}" if last else ""), pytrace=False)
        time.sleep(interval)


class AirflowRestApi:
    """The official REST client, authenticated with a JWT, plus a few helpers the tests share."""

    def __init__(self, base_url: str, token: str) -> None:
        import airflow_client.client as ac
        from airflow_client.client.api.dag_api import DAGApi
        from airflow_client.client.api.dag_run_api import DagRunApi
        from airflow_client.client.api.task_instance_api import TaskInstanceApi
        from airflow_client.client.api.variable_api import VariableApi
        from airflow_client.client.api.x_com_api import XComApi

        self.base_url = base_url
        # The client's paths already start with /api/v2: the host is the bare server URL.
        self.client = ac.ApiClient(ac.Configuration(host=base_url, access_token=token))
        self.dags = DAGApi(self.client)
        self.dag_runs = DagRunApi(self.client)
        self.task_instances = TaskInstanceApi(self.client)
        self.variables = VariableApi(self.client)
        self.xcoms = XComApi(self.client)

    def close(self) -> None:
        self.client.rest_client.pool_manager.clear()  # the generated ApiClient has no close()

    # ------------------------------------------------------------------------------------ DAG runs
    def ensure_unpaused(self, dag_id: str) -> None:
        from airflow_client.client.models.dag_patch_body import DAGPatchBody

        if self.dags.get_dag(dag_id).is_paused:
            self.dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

        run = self.dag_runs.trigger_dag_run(dag_id, TriggerDAGRunPostBody(conf=conf))
        return run.dag_run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.dag_runs.get_dag_run(dag_id, run_id).state.value

    def fail_run_if_unfinished(self, dag_id: str, run_id: str) -> None:
        """Mark a run left behind by a failed test as failed (the DAG has max_active_runs=1: a run stuck
        up_for_reschedule would block every later run, including other people's)."""
        from airflow_client.client.models.dag_run_mutable_states import DagRunMutableStates
        from airflow_client.client.models.dag_run_patch_body import DAGRunPatchBody

        if self.run_state(dag_id, run_id) not in ("success", "failed"):
            self.dag_runs.patch_dag_run(dag_id, run_id,
                                        DAGRunPatchBody(state=DagRunMutableStates.FAILED,
                                                        note="marked failed by the e2e test's cleanup"))

    # ------------------------------------------------------------------------------ task instances
    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> Any:
        return self.task_instances.get_task_instance(dag_id, run_id, task_id)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, tuple[str | None, int]]:
        """task_id -> (state, try_number) of every task instance of the run."""
        tis = self.task_instances.get_task_instances(dag_id, run_id).task_instances
        return {ti.task_id: (ti.state.value if ti.state is not None else None, ti.try_number) for ti in tis}

    def log_tail(self, dag_id: str, run_id: str, task_id: str, try_number: int, lines: int = 40) -> str:
        """The last ``lines`` events of a task try's log, read through the REST API (for failure messages)."""
        resp = self.task_instances.get_log_without_preload_content(dag_id, run_id, task_id, try_number,
                                                                   full_content=True)
        content = json.loads(resp.data).get("content") or []
        if isinstance(content, str):
            return "\n".join(content.splitlines()[-lines:])
        out = []
        for e in content[-lines:]:
            out.append(f"{e.get('timestamp', '')} {e.get('level', '')} {e.get('event', '')}"[:600])
            for err in e.get("error_detail") or ():  # a task's exception is logged as structured detail
                where = (err.get("frames") or [{}])[-1]
                out.append(f"    {err.get('exc_type')}: {str(err.get('exc_value'))[:500]} "
                           f"(at {where.get('filename')}:{where.get('lineno')})")
        return "\n".join(out)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.xcoms.get_xcom_entry(dag_id, task_id, run_id, key)
        return entry.actual_instance.value

    # ----------------------------------------------------------------------------------- variables
    def variable_json(self, key: str) -> dict[str, Any] | None:
        """The Variable's value parsed as JSON, or ``None`` if there is no such Variable."""
        from airflow_client.client.exceptions import NotFoundException

        try:
            value = self.variables.get_variable(key).value
        except NotFoundException:
            return None
        return json.loads(value)

    def delete_variable_if_present(self, key: str) -> None:
        from airflow_client.client.exceptions import NotFoundException

        try:
            self.variables.delete_variable(key)
        except NotFoundException:
            pass


@pytest.fixture(scope="session")
def airflow_rest_url() -> str:
    """The Airflow server URL (no /api/v2), after checking that every component reports healthy."""
    url = os.environ["AIRFLOW_ETL_UI_URL"].rstrip("/").removesuffix("/api/v2")
    health_url = f"{url}/api/v2/monitor/health"
    try:
        resp = requests.get(health_url, timeout=10)
    except requests.ConnectionError as err:
        pytest.fail(f"Airflow is not reachable at {health_url} ({err}): start it with `make airflow-up`",
                    pytrace=False)
    if resp.status_code != 200:
        pytest.fail(f"Airflow health check {health_url} answered HTTP {resp.status_code}: {resp.text[:500]}",
                    pytrace=False)
    health = resp.json()
    unhealthy = {c: (health.get(c) or {}).get("status") for c in HEALTH_COMPONENTS
                 if (health.get(c) or {}).get("status") != "healthy"}
    if unhealthy:
        pytest.fail(f"Airflow at {url} is not healthy: {unhealthy} (full answer: {health}); see "
                    ".local/logs/airflow-*.log", pytrace=False)
    return url


@pytest.fixture(scope="session")
def airflow_api(airflow_rest_url: str) -> Iterator[AirflowRestApi]:
    """The REST client, logged in as the admin user of the SimpleAuthManager (JWT bearer token)."""
    user = os.environ.get("AIRFLOW_ETL_ADMIN_USER", "admin")
    resp = requests.post(f"{airflow_rest_url}/auth/token",
                         json={"username": user, "password": os.environ["AIRFLOW_ETL_ADMIN_PASSWORD"]}, timeout=30)
    if resp.status_code not in (200, 201):
        pytest.fail(f"could not get a JWT from {airflow_rest_url}/auth/token as {user!r}: HTTP "
                    f"{resp.status_code} {resp.text[:300]}", pytrace=False)
    api = AirflowRestApi(airflow_rest_url, resp.json()["access_token"])
    yield api
    api.close()


@pytest.fixture(scope="session")
def dlq_kafka_bootstrap() -> str:
    return f"127.0.0.1:{os.environ['ETL_STACK_KAFKA_PORT']}"
