"""Credentials never reach the logs, the XCom result, the dead letters or an error message.

A disposable PostgreSQL role with a distinctive random password loads through ResilientSparkLoadOperator
(rows PostgreSQL rejects go to the dead-letter queue) and through PostgresLoader with COPY staging; every
log record of every logger at DEBUG (py4j's protocol log included: it shows each command sent to the JVM)
and everything the Spark JVM and the Python workers print are captured, then searched for the password.
Then the same with a wrong password: PostgreSQL refuses the login, and neither the error nor the logs may
echo the password (nor a JDBC URL carrying it).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import re
import secrets
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = pytest.mark.spark


def _admin() -> Any:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id="postgres_default").get_conn()
    conn.autocommit = True
    return conn


class Role:
    """A login role owning its own schema, with a test table it may load into."""

    def __init__(self, unique: str) -> None:
        self.name = f"etl_cred_{unique}"
        self.schema = f"cred_{unique}"
        self.table = f"{self.schema}.orders"
        # distinctive, and long enough for Airflow's secrets masker (which skips short ones)
        self.password = "Pw" + secrets.token_hex(16)
        self.conn_id = f"cred_{unique}"

    def conn_json(self, password: str) -> str:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        shared = PostgresHook(postgres_conn_id="postgres_default").connection
        return json.dumps({"conn_type": "postgres", "host": shared.host, "port": shared.port, "login": self.name,
                           "password": password, "schema": shared.schema})


@pytest.fixture
def role(unique: str) -> Iterator[Role]:
    r = Role(unique)
    conn = _admin()
    cur = conn.cursor()
    cur.execute(f"CREATE ROLE {r.name} LOGIN PASSWORD '{r.password}'")
    cur.execute(f"CREATE SCHEMA {r.schema} AUTHORIZATION {r.name}")
    cur.execute(f"CREATE TABLE {r.table} (id bigint PRIMARY KEY, name varchar(8) NOT NULL, qty int CHECK (qty >= 0))")
    cur.execute(f"GRANT ALL ON {r.table} TO {r.name}")
    try:
        yield r
    finally:
        cur.execute(f"DROP SCHEMA {r.schema} CASCADE")
        cur.execute(f"DROP ROLE {r.name}")
        conn.close()


class AllLogs(logging.Handler):
    """Every record of every logger, at DEBUG: the root logger and each existing logger are set to DEBUG
    and made to propagate for the test (restored afterwards)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._saved: list[tuple[logging.Logger, int, bool, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> AllLogs:
        loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]
        for lg in loggers:
            self._saved.append((lg, lg.level, lg.propagate, lg.disabled))
            lg.setLevel(logging.DEBUG)
            lg.propagate = lg is not logging.getLogger() or lg.propagate
            lg.disabled = False
        for name in ("py4j", "py4j.java_gateway", "py4j.clientserver"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        for lg, level, propagate, disabled in self._saved:
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        for name in ("py4j.java_gateway", "py4j.clientserver"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger("py4j").setLevel(logging.WARNING)

    def text(self) -> str:
        out = []
        for r in self.records:
            out.append(f"{r.name} {r.levelname} {r.getMessage()}")
            if r.exc_info and r.exc_info[1] is not None:
                out.append("".join(traceback.format_exception(r.exc_info[1])))
            if r.exc_text:
                out.append(r.exc_text)
        return "\n".join(out)


def _decoded_base64(text: str) -> str:
    """The text plus every base64 run in it decoded (py4j logs bytes arguments, e.g. pickled closures, as base64)."""
    decoded = []
    for run in re.findall(r"[A-Za-z0-9+/]{24,}={0,2}", text):
        for start in range(4):  # the run may begin with a type prefix (py4j's "j") or mid-token
            chunk = run[start:].rstrip("=")
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded.append(base64.b64decode(chunk).decode("latin-1"))
            except (binascii.Error, ValueError):
                continue
    return text + "\n".join(decoded)


def _assert_absent(secret: str, where: str, text: str) -> None:
    leaks = [m.start() for m in re.finditer(re.escape(secret), text)]
    context = [text[max(0, i - 200):i + 60] for i in leaks[:3]]
    assert not leaks, f"the password appears {len(leaks)} time(s) in {where}: {context}"


class ProcessOutput:
    """What the Spark JVM and its Python workers print. They inherited the file descriptors of pytest's global
    (fd-level) capture when the session's JVM started, so that capture is where their output lands (not in a
    ``capfd`` of this test)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.capman = request.config.pluginmanager.getplugin("capturemanager")
        if self.capman is None or not self.capman.is_globally_capturing():
            raise pytest.UsageError("test_credentials needs pytest's output capture: run it without -s")

    def read(self) -> str:
        out, err = self.capman.read_global_capture()
        return out + err


@pytest.fixture
def jvm_output(spark: Any, request: pytest.FixtureRequest) -> Iterator[ProcessOutput]:
    """The JVM's log at INFO for the test (log4j to stderr), and a reader of what the JVM and workers print."""
    output = ProcessOutput(request)
    log4j = spark._jvm.org.apache.logging.log4j

    def set_level(level: str) -> None:
        spark.sparkContext.setLogLevel(level)
        log4j.core.config.Configurator.setAllLevels("org.apache.spark", getattr(log4j.Level, level))

    set_level("INFO")
    try:
        yield output
    finally:
        set_level("WARN")


def _dead_letters(root: Path) -> str:
    texts = [gzip.decompress(f.read_bytes()).decode() for f in root.rglob("*.jsonl.gz")]
    return "\n".join(texts)


def test_password_never_in_logs_xcom_dead_letters_or_bookkeeping(spark, role, monkeypatch, tmp_path,
                                                                 jvm_output) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{role.conn_id.upper()}", role.conn_json(role.password))
    monkeypatch.setenv("AIRFLOW_ETL_DLQ_SPOOL", str(tmp_path / "spool"))
    rows = [(i, f"n{i}", i) for i in range(200)] + [(900, "far-too-long-name", 1), (901, "neg", -1)]
    src = str(tmp_path / "src")
    spark.createDataFrame(rows, "id BIGINT, name STRING, qty INT").repartition(2).write.parquet(src)
    op = ResilientSparkLoadOperator(
        task_id="load", source={"format": "parquet", "path": src},
        target={"type": "postgres", "conn_id": role.conn_id, "table": role.table, "mode": "upsert", "keys": ["id"]},
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")}, circuit_breaker=None,
    )
    jvm_output.read()
    with AllLogs() as logs:
        result = op.execute(context={})
        # COPY staging from the executors (the password travels in the task closure) and the rejected rows
        # read back with Spark's JDBC reader (the password in the reader's options)
        df = spark.createDataFrame([(i + 1000, f"c{i}", -i) for i in range(50)], "id BIGINT, name STRING, qty INT")
        loader = PostgresLoader(SparkPostgresHook(postgres_conn_id=role.conn_id), role.table, "append",
                                stage_method="copy")
        loader.LOCAL_REJECTED_MAX = 0
        outcome = loader.load(df)
        assert outcome.stage_method == "copy" and outcome.rejected is not None
        assert outcome.rejected.count() == 49
    printed = jvm_output.read()

    assert result["records_loaded"] == 200 and result["records_dead_lettered"] == 2, result
    assert len(logs.records) > 100, "the DEBUG capture did not work"
    assert any(r.name.startswith("py4j") for r in logs.records), "py4j's DEBUG log was not captured"
    assert "INFO" in printed and "DAGScheduler" in printed, "Spark's JVM INFO log was not captured: " + printed[-2000:]
    secret = role.password
    _assert_absent(secret, "the log records", _decoded_base64(logs.text()))
    _assert_absent(secret, "stdout/stderr (Spark JVM, Python workers)", _decoded_base64(printed))
    _assert_absent(secret, "the XCom result", json.dumps(result, default=str))
    letters = _dead_letters(tmp_path / "dlq")
    assert letters.count('"envelope_id"') == 2
    _assert_absent(secret, "the dead letters", letters)
    spool = tmp_path / "spool"
    _assert_absent(secret, "the DLQ spool", "".join(p.read_text() for p in spool.rglob("*")) if spool.exists() else "")
    cur = _admin().cursor()
    cur.execute(f"SELECT l::text FROM {role.schema}.etl_load_log l UNION ALL SELECT r::text FROM "
                f"{role.schema}.etl_load_rejects r")
    _assert_absent(secret, "the load log and reject store", "\n".join(r[0] for r in cur.fetchall()))


def _chain_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(getattr(exc, "args", ""))


def test_wrong_password_is_not_echoed_by_any_error_or_log(spark, role, monkeypatch, tmp_path, jvm_output) -> None:
    from airflow_etl_provider.core import sql as S
    from airflow_etl_provider.executor.postgres_copy import COPY_STATUS_SCHEMA, copy_writer

    wrong = "Wrong" + secrets.token_hex(16)
    monkeypatch.setenv(f"AIRFLOW_CONN_{role.conn_id.upper()}", role.conn_json(wrong))
    src = str(tmp_path / "src")
    spark.createDataFrame([(1, "a", 1)], "id BIGINT, name STRING, qty INT").write.parquet(src)
    op = ResilientSparkLoadOperator(
        task_id="load", source={"format": "parquet", "path": src},
        target={"type": "postgres", "conn_id": role.conn_id, "table": role.table, "mode": "append"},
        dead_letter={"type": "file", "path": str(tmp_path / "dlq")}, circuit_breaker=None,
        retry={"max_attempts": 2, "initial_delay_s": 0.1},
    )
    hook = SparkPostgresHook(postgres_conn_id=role.conn_id)
    errors: list[BaseException] = []
    jvm_output.read()
    with AllLogs() as logs:
        # 1. the operator: the driver's psycopg connection is refused
        with pytest.raises(Exception, match="password authentication failed") as info:
            op.execute(context={})
        errors.append(info.value)
        # 2. Spark's JDBC reader with the hook's options: the JVM's error travels back through py4j
        with pytest.raises(Exception, match=r"FAILED_JDBC\.CONNECTION|password authentication failed") as jdbc:
            spark.read.format("jdbc").options(**hook.jdbc_options(), dbtable=role.table).load().collect()
        errors.append(jdbc.value)
        # 3. the COPY writer on an executor: a Python worker error travels back through the JVM
        loader = PostgresLoader(hook, role.table, "append")
        writer = copy_writer(loader.copy_conn_args(), S.copy_staging_sql(f"{role.schema}.x", []), [], [])
        with pytest.raises(Exception, match="password authentication failed") as copy:
            spark.range(1).mapInArrow(writer, COPY_STATUS_SCHEMA).collect()
        errors.append(copy.value)
    printed = jvm_output.read()

    for exc in errors:
        text = _chain_text(exc)
        _assert_absent(wrong, f"the {type(exc).__name__} error", text)
        assert not re.search(r"(?i)password=", text), text[:2000]  # no URL or DSN carrying one either
    _assert_absent(wrong, "the log records", _decoded_base64(logs.text()))
    _assert_absent(wrong, "stdout/stderr (Spark JVM, Python workers)", _decoded_base64(printed))


#: Run in its own process (a Spark Connect client, every logger at DEBUG on stderr, Spark Connect's plan log
#: enabled by SPARK_CONNECT_LOG_LEVEL=debug): the operator, then a COPY-staged load from the same session.
CONNECT_RUN = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, force=True)
from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.hooks.spark import SparkSessionHook
from airflow_etl_provider.operators.load import ResilientSparkLoadOperator
conn_id, src, table, dlq = sys.argv[1:5]
op = ResilientSparkLoadOperator(
    task_id="load", source={"format": "parquet", "path": src}, spark_conn_id="spark_connect_default",
    target={"type": "postgres", "conn_id": conn_id, "table": table, "mode": "upsert", "keys": ["id"]},
    dead_letter={"type": "file", "path": dlq}, circuit_breaker=None)
result = op.execute(context={})
with SparkSessionHook("spark_connect_default").session() as spark:
    df = spark.createDataFrame([(i + 1000, f"c{i}", i) for i in range(20)], "id BIGINT, name STRING, qty INT")
    out = PostgresLoader(SparkPostgresHook(postgres_conn_id=conn_id), table, "append", stage_method="copy").load(df)
    result["copy"] = [out.stage_method, out.records_loaded]
print("RESULT " + json.dumps(result, default=str), flush=True)
"""


@pytest.mark.slow
def test_password_never_in_spark_connect_client_or_server_logs(spark, role, tmp_path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    subprocess.run([str(root / "scripts/stack.sh"), "up", "spark-connect"], check=True, timeout=240)
    server_log = root / ".local/logs/spark-connect.log"
    server_offset = server_log.stat().st_size if server_log.exists() else 0
    src = tmp_path / "src"
    spark.createDataFrame([(i, f"n{i}", i) for i in range(30)] + [(99, "far-too-long-name", 1)],
                          "id BIGINT, name STRING, qty INT").coalesce(1).write.parquet(str(src))
    env = {**os.environ, f"AIRFLOW_CONN_{role.conn_id.upper()}": role.conn_json(role.password),
           "SPARK_CONNECT_LOG_LEVEL": "debug", "AIRFLOW_ETL_DLQ_SPOOL": str(tmp_path / "spool")}
    out = subprocess.run([sys.executable, "-c", CONNECT_RUN, role.conn_id, str(src), role.table, str(tmp_path / "dlq")],
                         capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    assert (result["records_loaded"], result["records_dead_lettered"], result["copy"]) == (30, 1, ["copy", 20])
    assert "Executing plan" in out.stderr or "ExecuteAndFetchAsIterator" in out.stderr, \
        "Spark Connect's DEBUG plan log was not captured"
    assert "jdbc" in out.stderr and "password" in out.stderr  # the plans with the JDBC options were logged ...
    _assert_absent(role.password, "the Spark Connect client's output", _decoded_base64(out.stdout + out.stderr))
    with open(server_log, encoding="utf-8", errors="replace") as fh:  # ... but not the password, anywhere
        fh.seek(server_offset)
        _assert_absent(role.password, "the Spark Connect server's log", _decoded_base64(fh.read()))
    _assert_absent(role.password, "the dead letters", _dead_letters(tmp_path / "dlq"))
