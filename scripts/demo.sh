#!/usr/bin/env bash
# make demo: start the local stack, run every example DAG in dags/ with `airflow dags test`, print a
# summary a person can read. Leaves the stack running (stop it with `make services-down`).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/stack.sh" up || exit 1
set -a; . "$ROOT/.local/airflow.env"; set +a
echo "[demo] migrating the Airflow metadata DB"
"$ROOT/.venv/bin/airflow" db migrate >"$ROOT/.local/logs/airflow-db-migrate.log" 2>&1 \
  || { tail -30 "$ROOT/.local/logs/airflow-db-migrate.log"; exit 1; }
mkdir -p "$ROOT/.local/logs/demo"
DAGS=(${DEMO_DAGS:-$(grep -lE '^ *dag_id="example_' dags/*.py | xargs -n1 basename | sed 's/\.py$//')})
rc=0
for d in "${DAGS[@]}"; do
  echo "[demo] airflow dags test $d  (log: .local/logs/demo/$d.log)"
  if ! "$ROOT/.venv/bin/airflow" dags test "$d" >"$ROOT/.local/logs/demo/$d.log" 2>&1; then
    echo "[demo] $d FAILED -- last lines of its log:"; tail -25 "$ROOT/.local/logs/demo/$d.log"; rc=1
  fi
done
"$ROOT/.venv/bin/python" "$ROOT/scripts/demo_summary.py" "${DAGS[@]}" || rc=1
exit $rc
