"""The metrics and notifier path needs no Airflow metadata database: in a process where the DB is blocked by the
Task SDK's own ``block_orm_access()`` (what the supervisor does before a task runs: the ORM session removed,
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///``), a task run pushes to the Pushgateway, puts to CloudWatch (moto server, the aws connection from the environment)
and a webhook notifier delivers its summary to a real HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.integration.test_notifications import Hook


def test_metrics_and_notifier_in_a_process_without_the_metadata_db(unique) -> None:
    hook = Hook([])
    code = textwrap.dedent(f"""
        import json, os
        from airflow.sdk.execution_time.supervisor import block_orm_access

        block_orm_access()
        assert os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "airflow-db-not-allowed:///"
        from airflow_etl_provider.hooks.observability import observe
        from airflow_etl_provider.notifications.etl import WebhookNotifier

        class Task:
            dag_id, task_id, pipeline_id = "nodb_{unique}", "load", "p"

        task = Task()
        with observe(task, {{}}, "load", ["pushgateway", {{"type": "cloudwatch", "namespace": "NoDb/{unique}"}}]) as obs:
            obs.done({{"records_read": 5, "records_loaded": 4, "records_dead_lettered": 1,
                      "errors": {{"CheckViolation": {{"count": 1, "example": "x"}}}}}})
        WebhookNotifier(conn_id="nodb_hook")({{"task": task}})
        print(json.dumps(task.etl_run_summary["metrics"]))
    """)
    env = {
        **os.environ,
        "AIRFLOW_CONN_NODB_HOOK": json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{hook.port}"}),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        hook.server.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    deliveries = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(d["backend"], d["ok"]) for d in deliveries] == [("pushgateway", True), ("cloudwatch", True)], (
        deliveries
    )
    (request,) = hook.requests
    assert request["body"]["summary"]["rows_dead_lettered"] == 1
