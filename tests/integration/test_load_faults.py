"""Fault injection for ResilientSparkLoadOperator against real services.

* PostgreSQL stopped and restarted mid-load (a disposable cluster): before the load reaches it (plan
  phase) and while the one-transaction merge is running. The retry succeeds, nothing is duplicated.
* PostgreSQL down for good (a counting listener that accepts and drops every connection): the shared
  breaker opens after the threshold, later runs are rescheduled without a single connection reaching
  it, and after the reset timeout, with PostgreSQL back, a run succeeds and closes the breaker.
* Kafka DLQ down: the good rows are loaded, the rejected ones are spooled locally and kept in PostgreSQL,
  the task fails naming the spool and the replay command; a retry does not load anything twice and fails
  again while the DLQ is down; the retry with the DLQ back delivers every rejected row exactly once (from
  the spool on this worker, or from PostgreSQL when the spool is gone) and only then goes green.
* The Airflow task process killed (SIGKILL) mid-load and the same task instance run again (same run id,
  hence the same default load id): nothing is duplicated and the rows add up.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy, variable_key
from airflow_etl_provider.core.errors import DeadLetterUnavailableError
from airflow_etl_provider.core.sql import STAGING_PREFIX
from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = pytest.mark.spark

TEST_DAGS = Path(__file__).resolve().parents[1] / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
#: enough attempts to outlast a ~3 s outage; "equal" jitter keeps every delay >= half its bound, so the
#: attempts cannot all be spent before PostgreSQL is back (the first 7 delays sum to >= 7.75 s).
OUTAGE_RETRY = {"max_attempts": 8, "initial_delay_s": 0.5, "max_delay_s": 3, "jitter": "equal"}


# ----------------------------------------------------------------------------------------- helpers
def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn_json: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn_json)


def _sql(uri: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(uri, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _shared_uri() -> str:
    c = json.loads(os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"])
    return f"postgresql://{c['login']}:{c['password']}@{c['host']}:{c['port']}/{c['schema']}"


def _parquet(spark: Any, path: Path, n: int, bad_qty: frozenset[int] | set[int] = frozenset()) -> str:
    from pyspark.sql import functions as F

    df = spark.range(n).select(
        F.col("id"),
        F.concat(F.lit("payload-"), F.col("id").cast("string")).alias("payload"),
        F.when(F.col("id").isin(*sorted(bad_qty)) if bad_qty else F.lit(False), F.lit(-1))
        .otherwise(F.col("id") % 100).cast("int").alias("qty"),
    )
    df.repartition(4).write.mode("overwrite").parquet(str(path))
    return str(path)


def _operator(source: str, target: dict[str, Any], tmp_path: Path, **kwargs: Any) -> ResilientSparkLoadOperator:
    kwargs.setdefault("dead_letter", {"type": "file", "path": str(tmp_path / "dlq")})
    kwargs.setdefault("circuit_breaker", None)
    return ResilientSparkLoadOperator(task_id="load", source={"format": "parquet", "path": source},
                                      target={"type": "postgres", "mode": "append", **target}, **kwargs)


def _wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    errors: list[str] = []
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception as err:  # the server is restarting, say: poll again
            errors.append(f"{type(err).__name__}: {err}")
        time.sleep(interval_s)
    if errors:
        print(f"_wait_for: {len(errors)} error(s), last: {errors[-1]}")
    return False


def _assert_loaded_once(uri: str, table: str, expected_ids: set[int]) -> None:
    count, distinct = _sql(uri, f"select count(*), count(distinct id) from {table}")[0]
    assert (count, distinct) == (len(expected_ids), len(expected_ids)), "duplicates or missing rows"
    assert {r[0] for r in _sql(uri, f"select id from {table}")} == expected_ids
    leftovers = _sql(uri, "select tablename from pg_tables where tablename like %s", (f"{STAGING_PREFIX}%",))
    assert not [t for (t,) in leftovers if table.split(".")[-1][:24] in t], f"staging left behind: {leftovers}"


class _RetryScheduled(logging.Handler):
    """Sets ``seen`` when the guard logs its first retry ("attempt 1 of 8 failed (...); retrying in ...")."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "failed" in message and "retrying" in message:
            self.messages.append(message)
            self.seen.set()


class CountingDeadPostgres:
    """A "PostgreSQL that is down": accepts every TCP connection and closes it at once, counting each
    one, so the test counts the connection attempts that really reached the server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.arrivals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.arrivals += 1
            conn.close()

    def conn_json(self) -> str:
        return json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": self.port, "login": "postgres",
                           "password": "postgres", "schema": "postgres", "extra": {"connect_timeout": 2}})

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# --------------------------------------------------------------------- 1. PostgreSQL stop + restart
@pytest.mark.slow
def test_postgres_stopped_before_the_load_and_restarted(spark, disposable_pg, unique, monkeypatch, tmp_path) -> None:
    """PostgreSQL is stopped when the task starts and back ~3 s later: the first guarded phase (plan: catalog
    lookups, load log) fails with connection refused and is retried until it is back."""
    conn_id, table = f"pg_fault_{unique}", f"public.fault_{unique}"
    _set_conn(monkeypatch, conn_id, disposable_pg.conn_json())
    _sql(disposable_pg.uri, f"create table {table} (id bigint primary key, payload text not null, qty int)")
    source = _parquet(spark, tmp_path / "src", 50_000)
    op = _operator(source, {"conn_id": conn_id, "table": table, "load_id": f"fault-{unique}"}, tmp_path,
                   retry=OUTAGE_RETRY)

    disposable_pg.stop("fast")
    # PostgreSQL comes back once the load has really hit the stopped server and a retry was scheduled (not
    # after a fixed delay: on a busy machine Spark's read can outlast any fixed outage before the first attempt)
    first_retry = _RetryScheduled()
    logging.getLogger("airflow_etl_provider.retry").addHandler(first_retry)

    def restart_after_the_first_retry() -> None:
        first_retry.seen.wait(timeout=180)
        disposable_pg.start()

    restart = threading.Thread(target=restart_after_the_first_retry)
    restart.start()
    try:
        result = op.execute(context={})
    finally:
        first_retry.seen.set()
        restart.join()
        logging.getLogger("airflow_etl_provider.retry").removeHandler(first_retry)
    assert first_retry.messages and "OperationalError" in first_retry.messages[0], first_retry.messages
    assert result["retries"] > 0 and result["attempts"] > result["retries"] > 0, result
    assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"] == 50_000
    assert result["records_dead_lettered"] == 0
    _assert_loaded_once(disposable_pg.uri, table, set(range(50_000)))
    assert op.execute(context={})["skipped"] is True  # and the same load id again loads nothing
    _assert_loaded_once(disposable_pg.uri, table, set(range(50_000)))


@pytest.mark.slow
@pytest.mark.parametrize("stop_mode", [
    "fast",
    # A crash (immediate stop: crash recovery on restart) empties the UNLOGGED staging table: staging and
    # merge form one retry unit in PostgresLoader, so the retry re-stages and every row is loaded once.
    "immediate",
])
def test_postgres_stopped_during_the_merge_and_restarted(spark, disposable_pg, unique, monkeypatch, tmp_path,
                                                         stop_mode) -> None:
    """PostgreSQL is stopped while the merge transaction is open (load-log row inserted, INSERT ... SELECT
    running) and back ~3 s later: the transaction is lost, the merge is retried from the staged rows, and
    the target gets every row exactly once.

    Deterministic: a statement trigger makes the merge's INSERT wait on an advisory lock the test holds;
    the test stops PostgreSQL once it sees the merge waiting for it (the stop also frees the lock).
    """
    conn_id, table, key = f"pg_fault_{unique}", f"public.fault_{unique}", 424242
    uri = disposable_pg.uri
    _set_conn(monkeypatch, conn_id, disposable_pg.conn_json())
    _sql(uri, f"create table {table} (id bigint primary key, payload text not null, qty int)")
    _sql(uri, f"create function gate_{unique}() returns trigger language plpgsql as "
              f"$$ begin perform pg_advisory_xact_lock_shared({key}); return null; end $$")
    _sql(uri, f"create trigger gate before insert on {table} for each statement execute function gate_{unique}()")
    source = _parquet(spark, tmp_path / "src", 50_000)
    op = _operator(source, {"conn_id": conn_id, "table": table, "load_id": f"fault-{unique}"}, tmp_path,
                   retry=OUTAGE_RETRY)

    import psycopg

    holder = psycopg.connect(uri, autocommit=True)
    holder.execute("select pg_advisory_lock(%s)", (key,))
    seen: dict[str, Any] = {}

    def merge_waiting() -> bool:
        rows = _sql(uri, "select a.query from pg_locks l join pg_stat_activity a on a.pid = l.pid where "
                         "l.locktype = 'advisory' and not l.granted")
        if rows:
            seen["query"] = rows[0][0]
        return bool(rows)

    def outage() -> None:
        seen["waiting"] = _wait_for(merge_waiting, timeout_s=120)
        staging = _sql(uri, "select tablename from pg_tables where tablename like %s", (f"{STAGING_PREFIX}%",))
        seen["staging"] = [t for (t,) in staging]
        seen["log_rows_visible"] = _sql(uri, "select count(*) from etl_load_log")[0][0]
        disposable_pg.stop(stop_mode)  # terminates the merge's session: its transaction rolls back
        time.sleep(3.0)
        disposable_pg.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        result = op.execute(context={})
    finally:
        thread.join(timeout=180)
        with contextlib.suppress(Exception):
            holder.close()
    assert seen.get("waiting"), "the merge never reached PostgreSQL"
    assert "INSERT INTO" in seen["query"].upper() and "_etl_stg_" in seen["query"], seen["query"]
    assert seen["staging"], "rows were staged before the outage"
    assert seen["log_rows_visible"] == 0  # the merge transaction had not committed
    assert result["retries"] > 0, result
    assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"] == 50_000
    _assert_loaded_once(uri, table, set(range(50_000)))
    assert _sql(uri, "select count(*), sum(rows) from etl_load_log where load_id = %s", (f"fault-{unique}",))[0] \
        == (1, 50_000)


# ---------------------------------------------------------------------- 2. PostgreSQL down for good
@pytest.mark.slow
def test_postgres_down_for_good_opens_the_breaker_then_it_closes(spark, disposable_pg, unique, monkeypatch,
                                                                 tmp_path) -> None:
    from airflow.models import Variable
    from airflow.sdk.exceptions import AirflowRescheduleException

    conn_id, table, reset_s = f"pg_down_{unique}", f"public.down_{unique}", 5.0
    dead = CountingDeadPostgres()
    _set_conn(monkeypatch, conn_id, dead.conn_json())
    source = _parquet(spark, tmp_path / "src", 1_000)
    op = _operator(source, {"conn_id": conn_id, "table": table, "load_id": f"down-{unique}"}, tmp_path,
                   retry={"max_attempts": 2, "initial_delay_s": 0.1, "max_delay_s": 0.2},
                   circuit_breaker={"failure_threshold": 3, "reset_timeout_s": reset_s})

    def breaker() -> dict[str, Any]:
        return json.loads(Variable.get(variable_key(conn_id)))

    try:
        # run 1: two attempts reach the dead server, the task fails with the connection error (Airflow retries it)
        import psycopg

        # the dead server's own error, re-raised by the guard once the attempts ran out (not a reschedule)
        with pytest.raises(psycopg.OperationalError, match="(?i)server closed the connection unexpectedly"):
            op.execute(context={})
        per_attempt = dead.arrivals / 2  # libpq may open more than one TCP connection per attempt (SSL, then plain)
        assert per_attempt >= 1 and per_attempt == int(per_attempt), dead.arrivals
        assert breaker()["state"] == "closed" and breaker()["consecutive_failures"] == 2

        # run 2: the first attempt is the third consecutive failure: the breaker opens, the retry is refused
        with pytest.raises(AirflowRescheduleException) as second:
            op.execute(context={})
        assert dead.arrivals == 3 * per_attempt
        doc = breaker()
        assert doc["state"] == "open" and doc["opened_at"] is not None
        # the half-open moment plus the breaker policy's bounded jitter, never earlier
        retry_at, jitter = doc["opened_at"] + reset_s, CircuitBreakerPolicy(reset_timeout_s=reset_s).jitter_bound_s()
        assert retry_at - 0.001 <= second.value.reschedule_date.timestamp() <= retry_at + jitter + 0.001

        # run 3 (while open): rescheduled at once, not one connection reaches PostgreSQL
        t0 = time.monotonic()
        with pytest.raises(AirflowRescheduleException) as third:
            op.execute(context={})
        assert time.monotonic() - t0 < 5  # refused before Spark, retries or any connection
        assert dead.arrivals == 3 * per_attempt
        assert retry_at - 0.001 <= third.value.reschedule_date.timestamp() <= retry_at + jitter + 0.001

        # PostgreSQL is back (the connection now points at a live server); after the reset timeout a run is
        # admitted as the half-open trial, succeeds and closes the breaker
        _sql(disposable_pg.uri, f"create table {table} (id bigint primary key, payload text not null, qty int)")
        _set_conn(monkeypatch, conn_id, disposable_pg.conn_json())
        time.sleep(max(0.0, doc["opened_at"] + reset_s - time.time()) + 0.2)
        result = op.execute(context={})
        assert result["circuit_state"] == "closed" and result["records_loaded"] == 1_000, result
        assert breaker()["state"] == "closed" and breaker()["consecutive_failures"] == 0
        assert dead.arrivals == 3 * per_attempt
        _assert_loaded_once(disposable_pg.uri, table, set(range(1_000)))
    finally:
        dead.close()
        AirflowVariableBreakerStore().delete(conn_id)


# ----------------------------------------------------------------------------------- 3. Kafka DLQ down
def _down_broker() -> str:
    with socket.socket() as s:  # a port nobody listens on: the broker is "down"
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _dlq_state(uri: str, table: str, load_id: str) -> tuple[Any, ...]:
    return _sql(uri, "select dead_letter_state, dead_letter_spooled, dead_letter_spool from etl_load_log "
                     "where table_name = %s and load_id = %s", (table, load_id))[0]


@pytest.mark.slow
@pytest.mark.parametrize("spool_on_worker", [True, False], ids=["spool-here", "spool-lost"])
def test_kafka_dlq_down_then_back_the_retry_delivers_every_rejected_row_once(
        spark, unique, monkeypatch, tmp_path, kafka_bootstrap, spool_on_worker) -> None:
    """The load commits, the Kafka DLQ is down: the rejected rows are spooled and kept in PostgreSQL
    (etl_load_rejects, dead_letter_state 'pending'), the task fails naming the spool and the replay command.
    A retry while the DLQ is still down fails again (never green with rows outside the DLQ) and loads nothing
    twice. The retry with the DLQ back goes green and the topic then holds every rejected row exactly once
    (by envelope id): re-sent from this worker's spool (``spool-here``) or, when the spool is gone (another
    worker, a lost disk: ``spool-lost``), re-published from etl_load_rejects with the same envelope ids."""
    from airflow_etl_provider.core.envelope import DeadLetterEnvelope
    from tests.integration.conftest import consume_kafka
    from tests.integration.test_example_dags import _topic_size

    table, topic, bad = f"public.dlqdown_{unique}", f"faults.dlq.{unique}", {3, 77, 500, 998}
    load_id, uri = f"dlq-{unique}", _shared_uri()
    _sql(uri, f"create table {table} (id bigint primary key, payload text not null, qty int check (qty >= 0))")
    spool_dir = tmp_path / "spool"
    monkeypatch.setenv("AIRFLOW_ETL_DLQ_SPOOL", str(spool_dir))
    source = _parquet(spark, tmp_path / "src", 1_000, bad)

    def operator(bootstrap: str) -> ResilientSparkLoadOperator:
        return _operator(source, {"table": table, "load_id": load_id}, tmp_path,
                         dead_letter={"type": "kafka", "topic": topic,
                                      "config": {"bootstrap.servers": bootstrap, "message.timeout.ms": 1000}})

    def spooled_files() -> list[str]:
        return sorted(glob.glob(str(spool_dir / "*.jsonl")))

    def kept_rejects() -> list[int]:
        rows = _sql(uri, "select (record->>'id')::bigint from etl_load_rejects where table_name = %s and "
                         "load_id = %s order by 1", (table, load_id))
        return [r[0] for r in rows]

    try:
        # try 1: loads the good rows, the DLQ is down
        with pytest.raises(DeadLetterUnavailableError) as info:
            operator(_down_broker()).execute(context={})
        err, spooled = info.value, spooled_files()
        assert err.rows == len(bad) and spooled and set(err.spool_path.split(", ")) == set(spooled)
        msg = str(err)
        assert all(p in msg for p in spooled) and "replay-spool" in msg and f"--topic {topic}" in msg, msg
        assert "retrying this task sends them again" in msg, msg
        letters = [DeadLetterEnvelope.from_json(line) for p in spooled for line in Path(p).read_text().splitlines()]
        assert sorted(e.record["id"] for e in letters) == sorted(bad)  # exactly the rejected rows, each once
        assert all("check" in e.error_message.lower() for e in letters)
        _assert_loaded_once(uri, table, set(range(1_000)) - bad)  # the good rows are in, committed
        assert _dlq_state(uri, table, load_id) == ("pending", len(bad), spooled)
        assert kept_rejects() == sorted(bad)

        # try 2 (Airflow retries, the DLQ is still down): fails again, loads nothing twice, the rows stay
        # spooled exactly once (the old spool files are replaced by the new ones)
        with pytest.raises(DeadLetterUnavailableError) as again:
            operator(_down_broker()).execute(context={})
        assert again.value.rows == len(bad)
        _assert_loaded_once(uri, table, set(range(1_000)) - bad)
        respooled = spooled_files()
        assert respooled and not set(respooled) & set(spooled)
        assert sorted(DeadLetterEnvelope.from_json(line).envelope_id for p in respooled
                      for line in Path(p).read_text().splitlines()) == sorted(e.envelope_id for e in letters)
        assert _dlq_state(uri, table, load_id) == ("pending", len(bad), respooled)
        if not spool_on_worker:  # the retry runs on another worker: this spool is not there
            for p in respooled:
                os.rename(p, tmp_path / Path(p).name)

        # try 3: the broker is back; the task goes green only now, with every rejected row in the topic
        result = operator(kafka_bootstrap).execute(context={})
        assert result["skipped"] is True and result["records_loaded"] == 1_000 - len(bad)
        assert result["records_dead_lettered"] == len(bad)
        assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"] == 1_000
        assert result["dead_letter_location"] and topic in result["dead_letter_location"]
        msgs = consume_kafka(kafka_bootstrap, topic, expected=len(bad))
        delivered = [json.loads(m.value()) for m in msgs]
        assert sorted(e["record"]["id"] for e in delivered) == sorted(bad)  # each once: none lost, none twice
        assert {e["envelope_id"] for e in delivered} == {e.envelope_id for e in letters}
        assert _dlq_state(uri, table, load_id) == ("delivered", 0, None)
        assert kept_rejects() == []  # the DLQ has them: PostgreSQL no longer keeps them
        assert spooled_files() == []  # nothing left for anybody to replay again

        # try 4 (say the task is cleared): nothing is loaded or sent again
        final = operator(kafka_bootstrap).execute(context={})
        assert final["skipped"] is True and final["records_dead_lettered"] == len(bad)
        assert _topic_size(kafka_bootstrap, topic) == len(bad)
        _assert_loaded_once(uri, table, set(range(1_000)) - bad)
    finally:
        _sql(uri, f"drop table if exists {table}")
        _sql(uri, "delete from etl_load_rejects where load_id = %s", (load_id,))


# ------------------------------------------------------------------- 4. task killed mid-load, retried
def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session this test started (the airflow CLI, its Spark JVM and the
    Python workers), the way an OOM kill or a lost worker ends a task."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)


def _last_run_id(dag_id: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as db:
            return str(db.execute(text("select run_id from dag_run where dag_id = :d order by id desc limit 1"),
                                  {"d": dag_id}).scalar_one())
    finally:
        engine.dispose()


@contextlib.contextmanager
def _airflow(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen([AIRFLOW, *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                _kill_session(proc.pid)
            proc.wait(timeout=60)


@pytest.mark.slow
def test_task_killed_mid_load_and_retried_loads_once(spark, unique, tmp_path) -> None:
    dag_id, n = "test_load_fault_kill", 200_000
    table, uri = f"public.killed_{unique}", _shared_uri()
    _sql(uri, f"create table {table} (id bigint primary key, payload text not null, qty int)")
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS), "ETL_TEST_TABLE": table,
           "ETL_TEST_SOURCE": _parquet(spark, tmp_path / "src", n), "ETL_TEST_DLQ": str(tmp_path / "dlq")}
    prefix = f"{STAGING_PREFIX}{table.split('.')[-1][:24]}_"

    def staging() -> list[str]:
        rows = _sql(uri, "select tablename from pg_tables where schemaname = 'public' and starts_with(tablename, %s)",
                    (prefix,))
        return [t for (t,) in rows if not t.endswith("_rej")]

    def blocked(name: str) -> str | None:
        rows = _sql(uri, "select a.query from pg_locks l join pg_class c on c.oid = l.relation "
                         "join pg_stat_activity a on a.pid = l.pid where c.relname = %s and not l.granted", (name,))
        return str(rows[0][0]) if rows else None

    import psycopg

    try:
        with _airflow(["dags", "test", dag_id], env, tmp_path / "first.log") as first:
            assert _wait_for(lambda: bool(staging()) or first.poll() is not None, timeout_s=180), "no staging table"
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            # Deterministic "mid-load": lock the staging table the running try just created. The load cannot
            # finish without it, so it is caught blocked (in its COPY or, if those were done, in its merge).
            name = staging()[0]
            # rows on their way into staging (COPY or JDBC inserts from the executors): the lock below then
            # waits for the writers' transactions, so the kill comes after rows were staged, before the merge
            writing = _wait_for(lambda: bool(_sql(uri, "select 1 from pg_stat_activity where query ilike any(%s)",
                                                  ([f"COPY %{name}%", f"INSERT INTO %{name}%"],))),
                                timeout_s=60, interval_s=0.01)
            with psycopg.connect(uri) as locker:
                locker.execute(f'LOCK TABLE public."{name}" IN ACCESS EXCLUSIVE MODE')
                assert _wait_for(lambda: blocked(name) is not None, timeout_s=120), "the load never reached staging"
                caught_in = blocked(name)
                _kill_session(first.pid)  # SIGKILL: no finally, no cleanup, no state written by the task
                first.wait(timeout=60)
                locker.rollback()
        assert first.returncode == -signal.SIGKILL
        assert _sql(uri, f"select count(*) from {table}")[0][0] == 0  # nothing was committed
        assert staging(), "the killed try left its staging table behind"
        staged_before_retry = _sql(uri, f'select count(*) from public."{name}"')[0][0]
        # killed after rows were staged (the lock waited for the writers' transactions), before any merge
        assert 0 < staged_before_retry <= n, (staged_before_retry, writing, caught_in)
        run_id = _last_run_id(dag_id)

        # the retry of that task instance: same dag run, so the same default load id <dag>.<task>.<run_id>
        with _airflow(["tasks", "test", dag_id, "load", run_id], env, tmp_path / "retry.log") as retry:
            retry.wait(timeout=300)
        log = (tmp_path / "retry.log").read_text()
        assert retry.returncode == 0, log[-4000:]
        match = re.search(r"Load result: (\{.*?\}) \[", log)
        assert match, log[-3000:]
        result = ast.literal_eval(match.group(1))  # the logged dict
        assert result["records_read"] == result["records_loaded"] + result["records_dead_lettered"] == n
        assert result["skipped"] is False  # the killed try had committed nothing
        _assert_loaded_once(uri, table, set(range(n)))
        load_id = f"{dag_id}.load.{run_id}"
        assert _sql(uri, "select count(*), sum(rows) from etl_load_log where load_id = %s", (load_id,))[0] == (1, n)
        print(f"staged rows left by the killed try: {staged_before_retry}; "
              f"writers seen: {writing}; killed while blocked in: {caught_in}; retried run {run_id}")
    finally:
        _sql(uri, f"drop table if exists {table}")
