#!/usr/bin/env bash
# The physical floor of an upsert on this machine, with psql alone (no Spark, no Python, no loader):
# what PostgreSQL itself needs to upsert the benchmark's orders into a table holding half the keys,
# next to COPY of the same CSV into an empty table. bench_load_postgres.py measures the same floor (merge,
# on_conflict, update_insert) in the same run as ours, with psycopg; this script is the psql-only cross-check
# and adds copy_new_half / update_half.
#
#   copy_peer      COPY the CSV into an empty table (PRIMARY KEY, CHECK, NOT NULL)
#   stage_copy     COPY the CSV into an UNLOGGED staging table without constraints (like the loader's)
#   on_conflict    INSERT INTO target SELECT * FROM staging ON CONFLICT (order_id) DO UPDATE SET ...
#   merge          MERGE INTO target USING staging ON order_id ... UPDATE / INSERT
#   copy_new_half  COPY only the 500k missing orders into the table holding the other half (inserts only)
#   update_half    UPDATE the 500k existing orders from the staging table (updates only)
#
# floor_* = stage_copy + on_conflict|merge: the least any staged (atomic) upsert of a CSV costs here.
# Every step runs on a fresh table after VACUUM ANALYZE + CHECKPOINT; each line is one round, then medians.
#
#   set -a; . .local/airflow.env; set +a
#   .venv/bin/python benchmarks/bench_load_postgres.py --rows 1000000   # writes .local/bench/orders_1000000.csv
#   benchmarks/pg_upsert_floor.sh [rows=1000000] [rounds=3]
set -euo pipefail
ROWS=${1:-1000000}
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CSV="$ROOT/.local/bench/orders_${ROWS}.csv"
[[ -f "$CSV" ]] || { echo "no $CSV: run benchmarks/bench_load_postgres.py --rows $ROWS first" >&2; exit 1; }
: "${ETL_STACK_PG_PORT:?load the stack env first: set -a; . .local/airflow.env; set +a}"
export PGPASSWORD=${PGPASSWORD:-postgres}
export PGOPTIONS="-c client_min_messages=warning"
PSQL=(psql -h 127.0.0.1 -p "$ETL_STACK_PG_PORT" -U postgres -d etl -X -q -v ON_ERROR_STOP=1)
S=bench_floor_$$
COLS="order_id, customer_id, status, sku, quantity, unit_price, amount, currency, created_at, updated_at, note"
SCOLS="s.order_id, s.customer_id, s.status, s.sku, s.quantity, s.unit_price, s.amount, s.currency, s.created_at,
  s.updated_at, s.note"
SETS="customer_id = X.customer_id, status = X.status, sku = X.sku, quantity = X.quantity, unit_price = X.unit_price,
  amount = X.amount, currency = X.currency, created_at = X.created_at, updated_at = X.updated_at, note = X.note"
DDL="(order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, status varchar(16) NOT NULL, sku text NOT NULL,
  quantity integer NOT NULL CHECK (quantity > 0), unit_price numeric(12,2) NOT NULL,
  amount numeric(14,2) NOT NULL CHECK (amount >= 0), currency varchar(3) NOT NULL,
  created_at timestamptz NOT NULL, updated_at timestamptz, note text)"
STAGING="(order_id bigint, customer_id bigint, status varchar, sku text, quantity integer, unit_price numeric,
  amount numeric, currency varchar, created_at timestamptz, updated_at timestamptz, note text)"

sql() { "${PSQL[@]}" -c "SET search_path = $S" -c "$1"; }
settle() { sql "VACUUM ANALYZE $1" && sql "CHECKPOINT"; }
now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null; echo "$(now) - $t0" | bc; }
fresh_target() {  # the table holding every even order_id with stale values, like the benchmark's
  sql "DROP TABLE IF EXISTS target; CREATE TABLE target $DDL"
  sql "INSERT INTO target SELECT order_id, customer_id, 'new', sku, quantity, unit_price, amount, currency,
       created_at, NULL, 'stale' FROM ref WHERE order_id % 2 = 0"
  settle target
}
# staging without autovacuum, as the loader's own (a 1M-row staging table is otherwise vacuumed during the apply)
fresh_staging() { sql "DROP TABLE IF EXISTS staging; CREATE UNLOGGED TABLE staging $STAGING
  WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"; }

trap '"${PSQL[@]}" -c "DROP SCHEMA IF EXISTS $S CASCADE" >/dev/null 2>&1 || true; rm -f "$ODD"' EXIT
ODD=$(mktemp /tmp/orders_odd_XXXXXX.csv)
"${PSQL[@]}" -c "CREATE SCHEMA $S"
sql "CREATE TABLE ref $DDL"
sql "\\copy ref FROM '$CSV' (FORMAT csv)"
sql "\\copy (SELECT * FROM ref WHERE order_id % 2 = 1) TO '$ODD' (FORMAT csv)"
echo "PostgreSQL $("${PSQL[@]}" -Atc 'SHOW server_version'); $ROWS rows, $ROUNDS rounds;" \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
OUT=$(mktemp)
for r in $(seq "$ROUNDS"); do
  sql "DROP TABLE IF EXISTS peer; CREATE TABLE peer $DDL"; settle peer
  copy_peer=$(timed sql "\\copy peer FROM '$CSV' (FORMAT csv)")
  fresh_target; fresh_staging; sql CHECKPOINT
  stage1=$(timed sql "\\copy staging FROM '$CSV' (FORMAT csv)")
  on_conflict=$(timed sql "INSERT INTO target ($COLS) SELECT $COLS FROM staging ON CONFLICT (order_id) DO UPDATE SET ${SETS//X./EXCLUDED.}")
  fresh_target; fresh_staging; sql CHECKPOINT
  stage2=$(timed sql "\\copy staging FROM '$CSV' (FORMAT csv)")
  merge=$(timed sql "MERGE INTO target t USING staging s ON t.order_id = s.order_id
    WHEN MATCHED THEN UPDATE SET ${SETS//X./s.} WHEN NOT MATCHED THEN INSERT ($COLS) VALUES ($SCOLS)")
  fresh_target
  copy_new_half=$(timed sql "\\copy target FROM '$ODD' (FORMAT csv)")
  fresh_target
  update_half=$(timed sql "UPDATE target t SET ${SETS//X./s.} FROM staging s
    WHERE t.order_id = s.order_id")
  line="copy_peer=$copy_peer stage_copy=$stage1 on_conflict=$on_conflict stage_copy2=$stage2 merge=$merge"
  line="$line copy_new_half=$copy_new_half update_half=$update_half"
  echo "round $r: $line (load $(cut -d' ' -f1 /proc/loadavg))"
  echo "$line" >>"$OUT"
done
python3 - "$OUT" <<'EOF'
import statistics, sys
rounds = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1]) if line.strip()]
m = {k: statistics.median(float(r[k]) for r in rounds) for k in rounds[0]}
stage = statistics.median([float(r["stage_copy"]) for r in rounds] + [float(r["stage_copy2"]) for r in rounds])
peer = m["copy_peer"]
print("medians (s): " + " ".join(f"{k}={v:.2f}" for k, v in m.items() if k != "stage_copy2"))
for name in ("on_conflict", "merge"):
    floor = stage + m[name]
    print(f"floor_{name} = stage_copy {stage:.2f} + {name} {m[name]:.2f} = {floor:.2f} s = {floor / peer:.2f}x "
          f"the COPY peer ({peer:.2f} s); {name} alone {m[name] / peer:.2f}x")
print(f"inserting the 500k new rows by COPY {m['copy_new_half'] / peer:.2f}x, updating the 500k others "
      f"{m['update_half'] / peer:.2f}x the COPY peer")
EOF
rm -f "$OUT"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
