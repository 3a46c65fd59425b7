#!/usr/bin/env bash
# make demo: start the local stack and a real Airflow 3 (api-server + UI, scheduler with the LocalExecutor,
# dag-processor, triggerer), trigger the pipeline DAG through the REST API, wait for it and print what it did.
# Leaves everything running: open the UI it prints; stop everything with `make services-down`.
#   DEMO_DAGS="example_etl_pipeline example_resilient_load"  which DAGs to trigger (default: the pipeline and
#                                                            the stream)
#   DEMO_CONF='{"rows": 50000, "bad_share": 0.05}'             the run's params
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/stack.sh" up || exit 1
"$ROOT/scripts/stack.sh" up airflow || exit 1
set -a; . "$ROOT/.local/airflow.env"; set +a
DAGS=(${DEMO_DAGS:-example_etl_pipeline example_streaming})
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/demo_run.py" "${DAGS[@]}"
