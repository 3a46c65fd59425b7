"""Print what the demo's DAG runs did, from the Airflow metadata DB.

Arguments: ``DAG_ID`` (its latest run) or ``DAG_ID=RUN_ID``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

from sqlalchemy import create_engine, text

COUNTS = ("records_read", "records_loaded", "records_dead_lettered")


def _xcom(db, dag_id: str, run_id: str, task_id: str, key: str):
    row = db.execute(
        text("select value from xcom where dag_id=:d and run_id=:r and task_id=:t and key=:k"),
        {"d": dag_id, "r": run_id, "t": task_id, "k": key},
    ).first()
    if row is None:
        return None
    value = row.value
    if isinstance(value, (str, bytes)):  # a JSON document, or an already-decoded string value
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return value


def _pushgateway_readback(url: str, tasks: list[tuple[str, str]]) -> list[str]:
    """A few of the tasks' metrics as the Pushgateway's API serves them (GET /api/v1/metrics)."""
    from urllib.request import urlopen

    with urlopen(f"{url}/api/v1/metrics", timeout=5) as resp:
        groups = json.load(resp)["data"]
    lines = []
    for dag_id, task_id in tasks:
        group = next((g for g in groups if g["labels"].get("dag_id") == dag_id
                      and g["labels"].get("task_id") == task_id), None)
        if group is None:
            lines.append(f"  {dag_id}.{task_id}: no group on the Pushgateway")
            continue
        values = []
        for name in ("etl_rows_read", "etl_rows_loaded", "etl_rows_dead_lettered", "etl_rows_quarantined",
                     "etl_late_rows", "etl_watermark_lag_seconds"):
            family = group.get(name)
            if family:
                total = sum(float(m.get("value") or 0) for m in family["metrics"])
                values.append(f"{name}={total:g}")
        pushed = group.get("push_time_seconds", {}).get("metrics", [{}])[0].get("value")
        when = datetime.fromtimestamp(float(pushed), UTC).isoformat(timespec="seconds") if pushed else None
        lines.append(f"  {dag_id}.{task_id}: " + "  ".join(values) + (f"  (pushed {when})" if when else ""))
    return lines


def main(dag_ids: list[str]) -> int:
    engine = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    ok = True
    pushed: list[tuple[str, str]] = []
    print("\n================ airflow-etl-provider demo ================")
    with engine.connect() as db:
        for arg in dag_ids:
            dag_id, _, run_id = arg.partition("=")
            run = db.execute(
                text("select run_id, state from dag_run where dag_id=:d and (:r = '' or run_id = :r) "
                     "order by start_date desc limit 1"),
                {"d": dag_id, "r": run_id},
            ).first()
            if run is None:
                print(f"\nDAG {dag_id}: no run found")
                ok = False
                continue
            print(f"\nDAG {dag_id}  run={run.run_id}  state={run.state}")
            ok &= run.state == "success"
            tis = db.execute(
                text("select task_id, state from task_instance where dag_id=:d and run_id=:r order by start_date"),
                {"d": dag_id, "r": run.run_id},
            ).all()
            for ti in tis:
                print(f"  task {ti.task_id:<28} {ti.state}")
                summary = _xcom(db, dag_id, run.run_id, ti.task_id, "etl_run_summary")
                if isinstance(summary, dict):
                    for delivery in summary.get("metrics") or ():
                        state = delivery["detail"] if delivery["ok"] else f"NOT delivered: {delivery['detail']}"
                        print(f"    metrics -> {delivery['backend']}: {state}")
                        if delivery["backend"] == "pushgateway" and delivery["ok"]:
                            pushed.append((dag_id, ti.task_id))
                value = _xcom(db, dag_id, run.run_id, ti.task_id, "return_value")
                if value is None:
                    continue
                if isinstance(value, dict):
                    if "records_loaded" in value:
                        print("    rows: " + "  ".join(f"{k.split('_', 1)[1]}={value.get(k, 0)}" for k in COUNTS))
                    if "records_passed" in value:
                        print(f"    quality: {value.get('status')}  rows: read={value.get('records_read')}  "
                              f"passed={value.get('records_passed')}  quarantined={value.get('records_quarantined')}")
                        for rule in (value.get("report") or {}).get("rules", []):
                            if rule.get("status") != "pass":
                                print(f"      {rule['name']:<44} {rule['status']:<5} {rule.get('failing_rows') or '':>6}"
                                      f"  {rule.get('action_taken') or ''}")
                    if "late_rows" in value:
                        print(f"    stream: batches={value.get('batches')}  rows in={value.get('input_rows')}  "
                              f"aggregated={value.get('aggregated_rows')}  late={value.get('late_rows')}  "
                              f"windows written={value.get('output_rows')}")
                        print(f"    watermark: {value['watermark']['before']} -> {value['watermark']['after']}  "
                              f"(newest event {value.get('max_event_time')})")
                    for key in ("target", "output", "dead_letter_location", "metrics_location", "report_path"):
                        if value.get(key):
                            print(f"    {key}: {value[key]}")
    env = os.environ.get
    print(f"\nStack: PostgreSQL 127.0.0.1:{env('ETL_STACK_PG_PORT')} (db etl)  "
          f"Kafka 127.0.0.1:{env('ETL_STACK_KAFKA_PORT')}  S3 http://127.0.0.1:{env('ETL_STACK_S3_PORT')}  "
          f"Pushgateway {env('AIRFLOW_ETL_PUSHGATEWAY_URL')}")
    if env("AIRFLOW_ETL_UI_URL"):
        print(f"Airflow UI: {env('AIRFLOW_ETL_UI_URL')}  login: {env('AIRFLOW_ETL_ADMIN_USER', 'admin')} / "
              f"{env('AIRFLOW_ETL_ADMIN_PASSWORD')}  (REST API: {env('AIRFLOW_ETL_UI_URL')}/api/v2, docs at /docs)")
    gateway = env("AIRFLOW_ETL_PUSHGATEWAY_URL")
    if pushed and gateway:
        print(f"Metrics read back from the Pushgateway ({gateway}/api/v1/metrics):")
        try:
            print("\n".join(_pushgateway_readback(gateway, pushed)))
        except OSError as err:
            print(f"  the Pushgateway did not answer: {err}")
    else:
        print("Metrics: none pushed to a Pushgateway by these runs (see [etl_provider] metrics_backends in the README)")
    print("Logs: task logs in the UI (or .local/airflow/logs); Airflow's own in .local/logs/airflow-*.log")
    print("Stop everything (Airflow included): make services-down")
    print("===========================================================")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
