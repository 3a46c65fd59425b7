"""``make demo``: trigger DAGs on the running Airflow through its REST API (the official client), wait for them
and print what they did. Airflow is left running.

Usage: demo_run.py [DAG_ID ...]   (default: example_etl_pipeline; conf from $DEMO_CONF, a JSON object given to
every DAG: each takes the params it knows)
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import requests

TERMINAL = {"success", "failed"}


def _api(url: str) -> Any:
    import airflow_client.client as ac

    user = os.environ.get("AIRFLOW_ETL_ADMIN_USER", "admin")
    resp = requests.post(f"{url}/auth/token", json={"username": user,
                                                    "password": os.environ["AIRFLOW_ETL_ADMIN_PASSWORD"]}, timeout=30)
    resp.raise_for_status()
    return ac.ApiClient(ac.Configuration(host=url, access_token=resp.json()["access_token"]))


def _wait_parsed(dags: Any, dag_id: str, timeout: float = 180) -> None:
    """A fresh deployment parses dags/ within seconds; wait for it rather than fail on a 404."""
    from airflow_client.client.exceptions import NotFoundException

    deadline = time.monotonic() + timeout
    while True:
        try:
            dags.get_dag(dag_id)
            return
        except NotFoundException:
            if time.monotonic() > deadline:
                raise SystemExit(f"[demo] Airflow has not parsed {dag_id} after {timeout:.0f} s: see "
                                 ".local/logs/airflow-dag-processor.log") from None
            time.sleep(2)


def main(dag_ids: list[str]) -> int:
    from airflow_client.client.api.dag_api import DAGApi
    from airflow_client.client.api.dag_run_api import DagRunApi
    from airflow_client.client.api.task_instance_api import TaskInstanceApi
    from airflow_client.client.models.dag_patch_body import DAGPatchBody
    from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

    url = os.environ["AIRFLOW_ETL_UI_URL"].rstrip("/")
    client = _api(url)
    dags, runs, tis = DAGApi(client), DagRunApi(client), TaskInstanceApi(client)
    conf = json.loads(os.environ.get("DEMO_CONF") or "{}")
    started: dict[str, str] = {}
    for dag_id in dag_ids:
        _wait_parsed(dags, dag_id)
        if dags.get_dag(dag_id).is_paused:
            dags.patch_dag(dag_id, DAGPatchBody(is_paused=False))
        run = runs.trigger_dag_run(dag_id, TriggerDAGRunPostBody(conf=conf))
        started[dag_id] = run.dag_run_id
        print(f"[demo] triggered {dag_id} through the REST API: run {run.dag_run_id}  conf={conf}", flush=True)
        print(f"[demo]   watch it: {url}/dags/{dag_id}/runs/{run.dag_run_id}", flush=True)
    deadline, seen = time.monotonic() + float(os.environ.get("DEMO_TIMEOUT_S", "1200")), {}
    pending = dict(started)
    while pending and time.monotonic() < deadline:
        for dag_id, run_id in list(pending.items()):
            states = {ti.task_id: ti.state.value if ti.state else "none"
                      for ti in tis.get_task_instances(dag_id, run_id).task_instances}
            if states != seen.get(dag_id):
                seen[dag_id] = states
                print(f"[demo]   {dag_id}: " + "  ".join(f"{t}={s}" for t, s in states.items()), flush=True)
            if runs.get_dag_run(dag_id, run_id).state.value in TERMINAL:
                del pending[dag_id]
        time.sleep(3)
    client.rest_client.pool_manager.clear()
    if pending:
        print(f"[demo] still running after the timeout: {sorted(pending)}")
        return 1
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import demo_summary

    return demo_summary.main([f"{d}={r}" for d, r in started.items()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["example_etl_pipeline"]))
