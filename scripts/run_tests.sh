#!/usr/bin/env bash
# make test: unit tests (no services), then the local stack, then integration tests against it.
# Stops the services it started (also on failure, Ctrl-C included); its exit code is the suite's.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
STACK="$ROOT/scripts/stack.sh"
PYTEST_ARGS=(${PYTEST_ARGS:-})

started=()
cleanup() {
  if [[ ${#started[@]} -gt 0 ]]; then
    echo "[test] stopping the services this run started: ${started[*]}"
    "$STACK" down "${started[@]}" || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
echo "[test] 1/4 lint (ruff), types (mypy on the pure core), unit tests (no services)"
lint_rc=0
"$ROOT/.venv/bin/ruff" check airflow_etl_provider tests dags benchmarks scripts || lint_rc=1
"$ROOT/.venv/bin/mypy" || lint_rc=1
"$PY" -m pytest tests/unit -q -p no:cacheprovider "${PYTEST_ARGS[@]}"
unit_rc=$?
[[ $lint_rc -eq 0 ]] || unit_rc=1

echo "[test] 2/4 starting the local stack"
before=$("$STACK" status)
for s in postgres kafka s3 pushgateway spark-connect spark-standalone airflow; do
  if ! grep -qE "^$s +up" <<<"$before"; then started+=("$s"); fi
done
"$STACK" up || { echo "[test] the local stack did not start"; exit 1; }
set -a; . "$ROOT/.local/airflow.env"; set +a
echo "[test] migrating the Airflow metadata DB"
"$ROOT/.venv/bin/airflow" db migrate >"$ROOT/.local/logs/airflow-db-migrate.log" 2>&1 \
  || { tail -30 "$ROOT/.local/logs/airflow-db-migrate.log"; exit 1; }

echo "[test] 3/4 integration tests against the real stack"
"$PY" -m pytest tests/integration -q -p no:cacheprovider --durations=25 "${PYTEST_ARGS[@]}"
int_rc=$?

echo "[test] 4/4 end to end through a real Airflow (scheduler + LocalExecutor, REST API, a real browser)"
# The standalone cluster and Spark Connect are not used from here on: give their cores to Airflow.
for s in spark-connect spark-standalone; do
  if [[ " ${started[*]} " == *" $s "* ]]; then "$STACK" down "$s" >/dev/null; fi
done
t_e2e=$SECONDS
e2e_rc=0
"$STACK" up airflow || e2e_rc=1
if [[ $e2e_rc -eq 0 ]]; then
  "$PY" -m pytest tests/e2e -q -p no:cacheprovider --durations=10 "${PYTEST_ARGS[@]}"
  e2e_rc=$?
fi
echo "[test] end-to-end wall time: $((SECONDS - t_e2e))s (artifacts: .local/e2e-artifacts)"

echo "[test] unit rc=$unit_rc integration rc=$int_rc e2e rc=$e2e_rc wall=$((SECONDS - t0))s"
[[ $unit_rc -eq 0 && $int_rc -eq 0 && $e2e_rc -eq 0 ]]
