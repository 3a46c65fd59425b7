"""Keep the provider's bookkeeping tables bounded: a daily prune.

Every load appends a row to ``etl_load_log`` (one per target schema) and every data-quality run writes its
rules to ``etl_dq_history``; without this job both grow forever. ``prune_bookkeeping`` deletes, on
``postgres_default``:

* load-log rows older than ``load_log_days`` (default 90), except what a retry could still need: loads whose
  dead letters are still pending, loads with rows in ``etl_load_rejects``, and the newest load of every
  target and task;
* data-quality history runs older than ``dq_history_days`` (default 90), except the newest
  ``dq_history_keep_runs`` (default 30) of each dataset, the ``row_count_change`` baseline.

**Pending dead letters are never deleted automatically**: the task's result lists how many rows older than
the retention still wait for the dead-letter queue, so that a person can retry or replay them.

The DAG is created paused (it deletes rows): unpause it in the UI or with ``airflow dags unpause
example_maintenance``. The same from a shell: ``airflow-etl maintenance prune --dry-run``. Trigger with ``{"dry_run": true}`` to
see the counts without deleting anything.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task


@dag(
    dag_id="example_maintenance",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,  # it deletes rows: a person switches it on (UI toggle or `airflow dags unpause`)
    tags=["airflow-etl-provider", "example", "maintenance"],
    default_args={"owner": "data-platform", "retries": 1},
    params={
        "load_log_days": Param(90, type="integer", minimum=1),
        "dq_history_days": Param(90, type="integer", minimum=1),
        "dq_history_keep_runs": Param(30, type="integer", minimum=1),
        "dry_run": Param(False, type="boolean"),
    },
    doc_md=__doc__,
)
def example_maintenance() -> None:
    @task
    def prune_bookkeeping(params: dict | None = None) -> dict:
        from airflow_etl_provider.hooks.maintenance import prune

        params = params or {}
        policy = {
            "load_log_days": int(params.get("load_log_days", 90)),
            "dq_history_days": int(params.get("dq_history_days", 90)),
            "dq_history_keep_runs": int(params.get("dq_history_keep_runs", 30)),
        }
        return prune("postgres_default", policy, dry_run=bool(params.get("dry_run", False))).to_dict()

    prune_bookkeeping()


example_maintenance()
