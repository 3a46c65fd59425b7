#!/usr/bin/env bash
# The local stack, started natively on 127.0.0.1 (no Docker engine needed). Each service mirrors one
# in docker-compose.yaml (tests/unit/test_compose.py keeps the two in step).
#
#   scripts/stack.sh up [service...]     start (idempotent: a healthy service is left alone)
#   scripts/stack.sh down [service...]   stop
#   scripts/stack.sh status              one line per service
#   scripts/stack.sh env                 (re)write .local/airflow.env
#
# Services: postgres kafka s3 pushgateway (the default set), spark-connect, spark-standalone (started on
# demand by the tests that need them) and airflow (api-server + scheduler + dag-processor + triggerer, from
# the project venv; make airflow-up / make demo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
# The executors' Python: no Airflow (make executor-venv). Spark Connect and the standalone cluster run their
# Python workers with it, as a real cluster would.
EXEC_PY="${EXEC_PY:-$LOCAL/executor-venv/bin/python}"
LOGS="$LOCAL/logs"
RUN="$LOCAL/run"

PG_PORT="${PG_PORT:-55432}"
KAFKA_PORT="${KAFKA_PORT:-39092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-39093}"
S3_PORT="${S3_PORT:-45555}"
PUSHGATEWAY_PORT="${PUSHGATEWAY_PORT:-49091}"
SPARK_CONNECT_PORT="${SPARK_CONNECT_PORT:-35002}"
SPARK_MASTER_PORT="${SPARK_MASTER_PORT:-37077}"
SPARK_MASTER_UI_PORT="${SPARK_MASTER_UI_PORT:-38080}"
PG_PASSWORD="${PG_PASSWORD:-postgres}"
AIRFLOW_API_PORT="${AIRFLOW_API_PORT:-8080}"
# Where the connection postgres_outage points: nothing listens there (the pipeline DAG's inject_outage param).
PG_OUTAGE_PORT="${PG_OUTAGE_PORT:-55439}"

DEFAULT_SERVICES=(postgres kafka s3 pushgateway)
ALL_SERVICES=(postgres kafka s3 pushgateway spark-connect spark-standalone airflow)

mkdir -p "$LOGS" "$RUN"

say() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() {  # pid_alive NAME -> 0 when .local/run/NAME.pid names a live process
  local f="$RUN/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local i
  for ((i = 0; i < secs * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  return 1
}

# The services listen on fixed ports inside Linux's ephemeral range (32768-60999 here), so any outgoing
# connection of any process may be given one of them as its local port, and the service then cannot bind it: a
# fresh-clone CI run (2026-12-07) lost its broker that way ("Address already in use" on 39092, no broker of
# ours running). Where this user may (root, a writable /proc/sys), the ports are reserved from ephemeral
# allocation; and before a service starts, a port held by someone else is waited for, up to 60 s, then named.
STACK_PORTS=("$PG_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$S3_PORT" "$PUSHGATEWAY_PORT" "$SPARK_CONNECT_PORT"
             "$SPARK_MASTER_PORT" "$SPARK_MASTER_UI_PORT" "$PG_OUTAGE_PORT")
reserve_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports current wanted
  [[ -w "$f" ]] || return 0
  current=$(cat "$f")
  local item lo hi port missing=0
  for port in "${STACK_PORTS[@]}"; do  # the kernel prints neighbours as a range (39092-39093): compare numbers
    local covered=0
    for item in ${current//,/ }; do
      lo=${item%-*}; hi=${item#*-}
      if ((port >= lo && port <= hi)); then covered=1; break; fi
    done
    ((covered)) || missing=1
  done
  ((missing)) || return 0
  wanted=$(printf '%s\n' ${current//,/ } "${STACK_PORTS[@]}" | grep -v '^$' | sort -u | paste -sd, -)
  if echo "$wanted" >"$f" 2>/dev/null; then
    say "reserved the stack's ports from ephemeral allocation ($f)"
  fi
}

port_free() {  # port_free PORT -> 0 when nothing (a listener or a connection's local end) holds 127.0.0.1:PORT
  "$PY" - "$1" <<'PYEOF'
import socket
import sys

probe = socket.socket()
probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the services bind: a TIME_WAIT does not count
try:
    probe.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    probe.close()
PYEOF
}

wait_port_free() {  # wait_port_free NAME PORT... : each port free within 60 s, or die naming what holds it
  local name=$1 port; shift
  for port in "$@"; do
    port_free "$port" && continue
    say "$name: 127.0.0.1:$port is in use; waiting up to 60 s for it to be released"
    wait_for 60 "port $port" port_free "$port" && continue
    die "$name: 127.0.0.1:$port is still in use: $(ss -tanp 2>/dev/null | grep ":$port " | head -3 | tr -s ' ')"
  done
}

start_bg() {  # start_bg NAME CMD... : run CMD detached, pid in .local/run/NAME.pid, log in .local/logs/NAME.log
  local name=$1; shift
  nohup setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

stop_pid() {  # stop_pid NAME : TERM, then KILL after 15 s
  local name=$1 f="$RUN/$1.pid" pid i
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  say "$name stopped"
}

# ---------------------------------------------------------------- PostgreSQL (Debian package)
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
PGDATA="$LOCAL/pg/data"
PGSOCK="$LOCAL/pg/run"

as_postgres() { runuser -u postgres -- "$@"; }

pg_healthy() { PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' 2>/dev/null | grep -q 1; }

up_postgres() {
  [[ -x "$PG_BIN/postgres" ]] || die "PostgreSQL server binaries not found (run: make system-deps)"
  if pg_healthy; then say "postgres already up on 127.0.0.1:$PG_PORT"; return 0; fi
  mkdir -p "$LOCAL/pg" "$PGSOCK"
  chown postgres "$LOCAL/pg" "$PGSOCK"
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    say "postgres: initdb in $PGDATA"
    local pwfile="$LOCAL/pg/pwfile"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"; chown postgres "$pwfile"; chmod 600 "$pwfile"
    as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$LOGS/postgres-initdb.log" 2>&1 || { cat "$LOGS/postgres-initdb.log"; die "initdb failed"; }
    rm -f "$pwfile"
  fi
  wait_port_free postgres "$PG_PORT"
  say "postgres: starting on 127.0.0.1:$PG_PORT"
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOCAL/pg/postgres.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PG_PORT -k $PGSOCK -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { tail -20 "$LOCAL/pg/postgres.log"; die "postgres did not start"; }
  wait_for 60 postgres pg_healthy || die "postgres not healthy (see $LOCAL/pg/postgres.log)"
  local db
  for db in etl airflow; do
    if ! PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atqc \
        "select 1 from pg_database where datname='$db'" | grep -q 1; then
      PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "create database $db" >/dev/null
    fi
  done
  say "postgres up (databases: etl, airflow)"
}

down_postgres() {
  if [[ -f "$PGDATA/postmaster.pid" ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    say "postgres stopped"
  fi
}

# ---------------------------------------------------------------- Apache Kafka 4.x (Maven artifacts, KRaft)
KAFKA_DIR="$LOCAL/kafka"

kafka_healthy() {
  port_open "$KAFKA_PORT" || return 1
  "$PY" - "$KAFKA_PORT" 2>/dev/null <<'PYEOF'
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}", "log_level": 0}).list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
PYEOF
}

up_kafka() {
  [[ -d "$KAFKA_DIR/libs" ]] && ls "$KAFKA_DIR/libs"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Kafka jars missing (run: make kafka-jars)"
  if pid_alive kafka && kafka_healthy; then say "kafka already up on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  stop_pid kafka >/dev/null
  mkdir -p "$KAFKA_DIR/config" "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/config/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
EOF
  cat >"$KAFKA_DIR/config/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $LOGS/kafka-server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.kafka-request.name = kafka.request.logger
logger.kafka-request.level = WARN
EOF
  local cp="$KAFKA_DIR/libs/*"
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    local id
    id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    say "kafka: formatting KRaft storage (cluster $id)"
    java -cp "$cp" -Dlog4j2.configurationFile="$KAFKA_DIR/config/log4j2.properties" kafka.tools.StorageTool \
      format --standalone -t "$id" -c "$KAFKA_DIR/config/server.properties" >"$LOGS/kafka-format.log" 2>&1 \
      || { cat "$LOGS/kafka-format.log"; die "kafka storage format failed"; }
  fi
  wait_port_free kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
  say "kafka: starting broker+controller on 127.0.0.1:$KAFKA_PORT"
  start_bg kafka java -Xms256m -Xmx512m -cp "$cp" -Dlog4j2.configurationFile="$KAFKA_DIR/config/log4j2.properties" \
    kafka.Kafka "$KAFKA_DIR/config/server.properties"
  wait_for 90 kafka kafka_healthy || { tail -30 "$LOGS/kafka.log" "$LOGS/kafka-server.log" 2>/dev/null; die "kafka not healthy"; }
  kafka_warm_up || die "kafka warm-up failed (see above)"
  say "kafka up"
}

# A fresh broker answers its first idempotent producers with "coordinator load in progress" and creates its
# offsets topic at the first consumer group: clients that arrive meanwhile race the broker's own start-up (a CI
# run once lost a message there: the first write of a producer id to a partition is accepted at any sequence
# number). One idempotent send and one committed offset, on a topic made for it, finish that before any test.
kafka_warm_up() {
  "$PY" - "$KAFKA_PORT" <<'PYEOF'
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap = f"127.0.0.1:{sys.argv[1]}"
topic = "_etl_stack_warm_up"
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
if topic not in admin.list_topics(timeout=10).topics:
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                     "message.timeout.ms": 60000, "log_level": 0})
producer.produce(topic, b"warm-up")
if producer.flush(60) != 0:
    sys.exit("kafka warm-up: the idempotent send was not acknowledged within 60 s")
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "_etl_stack_warm_up", "log_level": 0,
                     "enable.auto.commit": False})
deadline = time.monotonic() + 60
while True:
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        break
    except Exception as err:  # the offsets topic is still being created / loaded: retried until the deadline
        if time.monotonic() > deadline:
            sys.exit(f"kafka warm-up: no group offset committed within 60 s: {err}")
        time.sleep(0.5)
consumer.close()
PYEOF
}

down_kafka() { stop_pid kafka; }

# ---------------------------------------------------------------- S3 (moto's standalone server)
s3_healthy() { curl -sf "http://127.0.0.1:$S3_PORT/moto-api/" >/dev/null; }

up_s3() {
  if s3_healthy; then say "s3 already up on 127.0.0.1:$S3_PORT"; return 0; fi
  [[ -x "$VENV/bin/moto_server" ]] || die "moto_server missing (run: make venv)"
  wait_port_free s3 "$S3_PORT"
  say "s3: starting moto server on 127.0.0.1:$S3_PORT"
  start_bg s3 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
  wait_for 30 s3 s3_healthy || { tail -20 "$LOGS/s3.log"; die "s3 not healthy"; }
  say "s3 up"
}

down_s3() { stop_pid s3; }

# ---------------------------------------------------------------- Prometheus Pushgateway (Debian package)
pushgateway_healthy() { curl -sf "http://127.0.0.1:$PUSHGATEWAY_PORT/-/ready" >/dev/null; }

up_pushgateway() {
  if pushgateway_healthy; then say "pushgateway already up on 127.0.0.1:$PUSHGATEWAY_PORT"; return 0; fi
  command -v prometheus-pushgateway >/dev/null || die "prometheus-pushgateway missing (run: make system-deps)"
  say "pushgateway: starting on 127.0.0.1:$PUSHGATEWAY_PORT"
  wait_port_free pushgateway "$PUSHGATEWAY_PORT"
  start_bg pushgateway prometheus-pushgateway --web.listen-address="127.0.0.1:$PUSHGATEWAY_PORT"
  wait_for 30 pushgateway pushgateway_healthy || { tail -20 "$LOGS/pushgateway.log"; die "pushgateway not healthy"; }
  say "pushgateway up"
}

down_pushgateway() { stop_pid pushgateway; }

# ---------------------------------------------------------------- Spark Connect server (from the pyspark wheel)
SPARK_HOME_PY() { "$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'; }

up_spark-connect() {
  if port_open "$SPARK_CONNECT_PORT"; then say "spark-connect already up on 127.0.0.1:$SPARK_CONNECT_PORT"; return 0; fi
  local sh jars
  sh=$(SPARK_HOME_PY)
  jars=$(ls "$LOCAL"/jars/*.jar | paste -sd, -)
  [[ -x "$EXEC_PY" ]] || die "no executor Python at $EXEC_PY: run make executor-venv"
  say "spark-connect: starting on 127.0.0.1:$SPARK_CONNECT_PORT (Python workers: $EXEC_PY)"
  wait_port_free spark-connect "$SPARK_CONNECT_PORT"
  SPARK_HOME="$sh" SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$EXEC_PY" start_bg spark-connect "$sh/bin/spark-submit" \
    --class org.apache.spark.sql.connect.service.SparkConnectServer \
    --master 'local[2]' --driver-memory 1g --jars "$jars" \
    --conf spark.connect.grpc.binding.address=127.0.0.1 \
    --conf spark.connect.grpc.binding.port="$SPARK_CONNECT_PORT" \
    --conf spark.ui.enabled=false spark-internal
  wait_for 90 spark-connect port_open "$SPARK_CONNECT_PORT" || { tail -30 "$LOGS/spark-connect.log"; die "spark-connect not healthy"; }
  say "spark-connect up"
}

down_spark-connect() { stop_pid spark-connect; }

# ---------------------------------------------------------------- Spark standalone master + 1 worker
up_spark-standalone() {
  if port_open "$SPARK_MASTER_PORT" && pid_alive spark-worker; then say "spark-standalone already up on spark://127.0.0.1:$SPARK_MASTER_PORT"; return 0; fi
  local sh
  sh=$(SPARK_HOME_PY)
  say "spark-standalone: starting master spark://127.0.0.1:$SPARK_MASTER_PORT and one worker"
  wait_port_free spark-standalone "$SPARK_MASTER_PORT" "$SPARK_MASTER_UI_PORT"
  SPARK_HOME="$sh" SPARK_LOCAL_IP=127.0.0.1 start_bg spark-master "$sh/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$SPARK_MASTER_PORT" --webui-port "$SPARK_MASTER_UI_PORT"
  wait_for 60 spark-master port_open "$SPARK_MASTER_PORT" || { tail -30 "$LOGS/spark-master.log"; die "spark master not up"; }
  [[ -x "$EXEC_PY" ]] || die "no executor Python at $EXEC_PY: run make executor-venv"
  SPARK_HOME="$sh" SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$EXEC_PY" start_bg spark-worker "$sh/bin/spark-class" \
    org.apache.spark.deploy.worker.Worker --host 127.0.0.1 --cores 2 --memory 2g --webui-port 0 \
    "spark://127.0.0.1:$SPARK_MASTER_PORT"
  wait_for 60 spark-worker grep -q "Successfully registered with master" "$LOGS/spark-worker.log" \
    || { tail -30 "$LOGS/spark-worker.log"; die "spark worker did not register"; }
  say "spark-standalone up"
}

down_spark-standalone() { stop_pid spark-worker; stop_pid spark-master; }

# ---------------------------------------------------------------- Airflow 3 (api-server, scheduler, dag-processor, triggerer)
AIRFLOW_COMPONENTS=(api-server scheduler dag-processor triggerer)
airflow_health() { curl -sf "http://127.0.0.1:$AIRFLOW_API_PORT/api/v2/monitor/health" 2>/dev/null; }
airflow_healthy() {  # every component reports healthy
  local h; h=$(airflow_health) || return 1
  "$PY" -c 'import json, sys
h = json.loads(sys.argv[1])
sys.exit(0 if all(h.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")) else 1)' "$h"
}

up_airflow() {
  local c all_alive=1
  for c in "${AIRFLOW_COMPONENTS[@]}"; do pid_alive "airflow-$c" || all_alive=0; done
  if [[ $all_alive -eq 1 ]] && airflow_healthy; then say "airflow already up on http://127.0.0.1:$AIRFLOW_API_PORT"; return 0; fi
  pg_healthy || up_postgres
  for c in "${AIRFLOW_COMPONENTS[@]}"; do pid_alive "airflow-$c" && stop_pid "airflow-$c"; done
  port_open "$AIRFLOW_API_PORT" && die "port $AIRFLOW_API_PORT is taken by another program: set AIRFLOW_API_PORT"
  # shellcheck disable=SC1091
  set -a; . "$LOCAL/airflow.env"; set +a
  mkdir -p "$AIRFLOW_HOME"
  say "airflow: migrating the metadata DB (PostgreSQL, database airflow)"
  "$VENV/bin/airflow" db migrate >"$LOGS/airflow-db-migrate.log" 2>&1 || { tail -30 "$LOGS/airflow-db-migrate.log"; die "airflow db migrate failed"; }
  say "airflow: starting api-server (http://127.0.0.1:$AIRFLOW_API_PORT), scheduler (LocalExecutor), dag-processor, triggerer"
  start_bg airflow-api-server "$VENV/bin/airflow" api-server --host 127.0.0.1 --port "$AIRFLOW_API_PORT"
  start_bg airflow-scheduler "$VENV/bin/airflow" scheduler
  start_bg airflow-dag-processor "$VENV/bin/airflow" dag-processor
  start_bg airflow-triggerer "$VENV/bin/airflow" triggerer
  if ! wait_for 180 airflow airflow_healthy; then
    for c in "${AIRFLOW_COMPONENTS[@]}"; do echo "--- $LOGS/airflow-$c.log"; tail -15 "$LOGS/airflow-$c.log"; done
    die "airflow not healthy: $(airflow_health || echo 'no answer')"
  fi
  say "airflow up: http://127.0.0.1:$AIRFLOW_API_PORT (user admin, password in $AIRFLOW_PASSWORDS_FILE)"
}

down_airflow() {
  local i
  for ((i = ${#AIRFLOW_COMPONENTS[@]} - 1; i >= 0; i--)); do stop_pid "airflow-${AIRFLOW_COMPONENTS[i]}"; done
}

# ---------------------------------------------------------------- env file
# Secrets of the local deployment, made once and kept (git-ignored): the JWT secret every Airflow component
# must share, the api-server's session key and the admin password of Airflow's SimpleAuthManager.
AIRFLOW_SECRETS="$LOCAL/airflow-secrets.env"
AIRFLOW_PASSWORDS_FILE="$LOCAL/airflow/simple_auth_manager_passwords.json"
ensure_airflow_secrets() {
  if [[ ! -f "$AIRFLOW_SECRETS" ]]; then
    ( umask 077; "$PY" -c 'import secrets
print(f"AIRFLOW_JWT_SECRET={secrets.token_urlsafe(32)}")
print(f"AIRFLOW_SESSION_KEY={secrets.token_urlsafe(32)}")
print(f"AIRFLOW_ADMIN_PASSWORD={secrets.token_urlsafe(12)}")' >"$AIRFLOW_SECRETS" )
  fi
  # shellcheck disable=SC1090
  . "$AIRFLOW_SECRETS"
  mkdir -p "$LOCAL/airflow"
  ( umask 077; printf '{"admin": "%s"}\n' "$AIRFLOW_ADMIN_PASSWORD" >"$AIRFLOW_PASSWORDS_FILE" )
}
write_env() {
  ensure_airflow_secrets
  local jars="$LOCAL/jars/*"
  local jarlist
  jarlist=$(ls "$LOCAL"/jars/*.jar 2>/dev/null | paste -sd, - || true)
  cat >"$LOCAL/airflow.env" <<EOF
# Written by scripts/stack.sh: source it to point Airflow and any DAG using the providers' default
# connection ids at the local stack.   set -a; . .local/airflow.env; set +a
export AIRFLOW_HOME='$LOCAL/airflow'
export AIRFLOW__CORE__DAGS_FOLDER='$ROOT/dags'
export AIRFLOW__CORE__LOAD_EXAMPLES='False'
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='postgresql+psycopg2://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/airflow'
export AIRFLOW__CORE__EXECUTOR='LocalExecutor'
export AIRFLOW__API__HOST='127.0.0.1'
export AIRFLOW__API__PORT='$AIRFLOW_API_PORT'
export AIRFLOW__API__BASE_URL='http://127.0.0.1:$AIRFLOW_API_PORT'
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL='http://127.0.0.1:$AIRFLOW_API_PORT/execution/'
export AIRFLOW__CORE__AUTH_MANAGER='airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager'
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS='admin:admin'
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE='$AIRFLOW_PASSWORDS_FILE'
export AIRFLOW__API_AUTH__JWT_SECRET='$AIRFLOW_JWT_SECRET'
export AIRFLOW__API__SECRET_KEY='$AIRFLOW_SESSION_KEY'
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION='False'
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL='20'
export AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT='900'
export AIRFLOW_ETL_DEMO_DATA='$LOCAL/demo'
export AIRFLOW_ETL_REPORT_DIR='$LOCAL/reports'
export AIRFLOW_ETL_UI_URL='http://127.0.0.1:$AIRFLOW_API_PORT'
export AIRFLOW_ETL_ADMIN_USER='admin'
export AIRFLOW_ETL_ADMIN_PASSWORD='$AIRFLOW_ADMIN_PASSWORD'
export AIRFLOW_CONN_POSTGRES_DEFAULT='{"conn_type": "postgres", "host": "127.0.0.1", "port": $PG_PORT, "login": "postgres", "password": "$PG_PASSWORD", "schema": "etl"}'
export AIRFLOW_CONN_POSTGRES_OUTAGE='{"conn_type": "postgres", "host": "127.0.0.1", "port": $PG_OUTAGE_PORT, "login": "postgres", "password": "postgres", "schema": "postgres", "extra": {"connect_timeout": 5}}'
export AIRFLOW_CONN_KAFKA_DEFAULT='{"conn_type": "kafka", "extra": {"bootstrap.servers": "127.0.0.1:$KAFKA_PORT", "group.id": "airflow-etl", "socket.timeout.ms": 10000}}'
export AIRFLOW_CONN_AWS_DEFAULT='{"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": "http://127.0.0.1:$S3_PORT", "region_name": "us-east-1"}}'
export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]", "extra": {"spark.jars": "$jarlist", "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8"}}'
export AIRFLOW_CONN_SPARK_CONNECT_DEFAULT='{"conn_type": "spark_connect", "host": "sc://127.0.0.1", "port": $SPARK_CONNECT_PORT}'
export AIRFLOW_CONN_SPARK_STANDALONE='{"conn_type": "spark", "host": "spark://127.0.0.1", "port": $SPARK_MASTER_PORT, "extra": {"spark.jars": "$jarlist", "spark.ui.enabled": "false", "spark.executor.memory": "1g", "spark.cores.max": "2", "spark.pyspark.python": "$EXEC_PY"}}'
export AIRFLOW_ETL_PUSHGATEWAY_URL='http://127.0.0.1:$PUSHGATEWAY_PORT'
export AIRFLOW__ETL_PROVIDER__METRICS_BACKENDS='airflow_stats,pushgateway'
export AIRFLOW_ETL_SPARK_JARS='$jarlist'
export SPARK_LOCAL_IP='127.0.0.1'
export PYSPARK_PYTHON='$PY'
export PYSPARK_DRIVER_PYTHON='$PY'
export AWS_ACCESS_KEY_ID='testing'
export AWS_SECRET_ACCESS_KEY='testing'
export AWS_DEFAULT_REGION='us-east-1'
export ETL_STACK_PG_PORT='$PG_PORT'
export ETL_STACK_KAFKA_PORT='$KAFKA_PORT'
export ETL_STACK_S3_PORT='$S3_PORT'
export ETL_STACK_PUSHGATEWAY_PORT='$PUSHGATEWAY_PORT'
export ETL_STACK_SPARK_CONNECT_PORT='$SPARK_CONNECT_PORT'
export ETL_STACK_SPARK_MASTER_PORT='$SPARK_MASTER_PORT'
export ETL_STACK_AIRFLOW_API_PORT='$AIRFLOW_API_PORT'
export ETL_STACK_PG_OUTAGE_PORT='$PG_OUTAGE_PORT'
EOF
  chmod 600 "$LOCAL/airflow.env"  # it holds the local deployment's secrets
  : "$jars"
}

status() {
  local s
  pg_healthy && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' postgres "$s" "$PG_PORT"
  kafka_healthy && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' kafka "$s" "$KAFKA_PORT"
  s3_healthy && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' s3 "$s" "$S3_PORT"
  pushgateway_healthy && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' pushgateway "$s" "$PUSHGATEWAY_PORT"
  port_open "$SPARK_CONNECT_PORT" && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' spark-connect "$s" "$SPARK_CONNECT_PORT"
  port_open "$SPARK_MASTER_PORT" && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' spark-standalone "$s" "$SPARK_MASTER_PORT"
  airflow_healthy && s=up || s=down; printf '%-17s %-5s 127.0.0.1:%s\n' airflow "$s" "$AIRFLOW_API_PORT"
}

cmd="${1:-status}"; shift || true
case "$cmd" in
  up)
    write_env
    services=("$@"); [[ ${#services[@]} -gt 0 ]] || services=("${DEFAULT_SERVICES[@]}")
    reserve_ports
    for s in "${services[@]}"; do "up_$s"; done
    ;;
  down)
    services=("$@"); [[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
    for ((i = ${#services[@]} - 1; i >= 0; i--)); do "down_${services[i]}"; done
    ;;
  status) status ;;
  env) write_env; say "wrote $LOCAL/airflow.env" ;;
  services) printf '%s\n' "${ALL_SERVICES[@]}" ;;
  *) die "usage: $0 up|down|status|env|services [service...]" ;;
esac
