"""Fixtures for tests against the real local stack (``make services-up``; ``make test`` does it).

These tests never skip for a missing service: a stack that is down is a failure with a clear message.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REQUIRED_ENV = ("AIRFLOW_CONN_POSTGRES_DEFAULT", "AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT")


def pytest_configure(config: pytest.Config) -> None:
    missing = [k for k in REQUIRED_ENV if k not in os.environ]
    if missing:
        raise pytest.UsageError(
            f"integration tests need the local stack's env ({', '.join(missing)} unset): run `make test`, "
            "or `make services-up` and then `set -a; . .local/airflow.env; set +a`"
        )


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topics, buckets and tables, so tests never see each other's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def hook():
    """The ``postgres_default`` connection as the load engine's hook."""
    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

    return SparkPostgresHook(postgres_conn_id="postgres_default")


@pytest.fixture
def pg(hook) -> Iterator[tuple]:
    """An autocommit cursor, and a list of tables to drop at the end."""
    conn = hook.get_conn()
    conn.autocommit = True
    drop: list[str] = []
    yield conn.cursor(), drop
    for name in reversed(drop):
        conn.cursor().execute(f"DROP TABLE IF EXISTS {name} CASCADE")
    conn.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return f"127.0.0.1:{os.environ['ETL_STACK_KAFKA_PORT']}"


#: What the Task SDK supervisor of a real Airflow worker sets for the task process and everything it starts
#: (``block_orm_access``): ``import airflow`` fails there. The shared session's Python workers get it too.


def consume_kafka(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Read a topic from its start with an independent consumer (its own group): the expected number of
    messages, then one more poll so that a message beyond them would show up in the count."""
    import time

    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    msgs = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(msgs) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                msgs.append(msg)
        extra = consumer.poll(2.0)  # nothing beyond the expected count
        if extra is not None and extra.error() is None:
            msgs.append(extra)
    finally:
        consumer.close()
    return msgs


BLOCKED_DB_ENV = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///"}


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One embedded SparkSession for the whole test session (first start ~8 s), built from the
    ``spark_default`` connection exactly as operators build theirs.

    Its Python workers run with the environment of a real Airflow worker's task (:data:`BLOCKED_DB_ENV`), so
    every test that ships code to the executors fails if that code needs Airflow
    (``test_real_worker_env.py`` proves the workers really see it)."""
    from pyspark.sql import SparkSession

    from airflow_etl_provider.hooks.spark import SparkSessionHook

    conf = SparkSessionHook(spark_conn_id="spark_default", app_name="pytest").resolve_conf()
    conf["spark.master"] = "local[2]"
    for key, value in BLOCKED_DB_ENV.items():
        conf[f"spark.executorEnv.{key}"] = value
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()
    logging.getLogger("py4j").setLevel(logging.WARNING)  # no "closing clientserver" noise at exit


class DisposablePostgres:
    """A throwaway PostgreSQL cluster (its own data dir and port) that tests may stop, kill and restart
    without disturbing the shared stack (which also holds the Airflow metadata DB)."""

    def __init__(self, root: str, port: int) -> None:
        import glob

        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.root, self.port = root, port
        self.data = os.path.join(root, "data")
        self.log = os.path.join(root, "pg.log")

    def _as_postgres(self, *args: str, check: bool = True) -> None:
        import subprocess

        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=check, capture_output=True)

    def init(self) -> None:
        import shutil
        import subprocess

        os.makedirs(self.root, exist_ok=True)
        shutil.chown(self.root, "postgres")
        pw = os.path.join(self.root, "pw")
        with open(pw, "w") as fh:
            fh.write("postgres\n")
        shutil.chown(pw, "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", f"{self.bin}/initdb", "-D", self.data, "-U", "postgres",
                        f"--pwfile={pw}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True)

    def start(self) -> None:
        self._as_postgres(f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o",
                          f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    @property
    def uri(self) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres"

    def conn_json(self) -> str:
        import json

        return json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": self.port,
                           "login": "postgres", "password": "postgres", "schema": "postgres"})


@pytest.fixture
def disposable_pg() -> Iterator[DisposablePostgres]:
    import shutil
    import socket
    import tempfile

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tempfile.mkdtemp(prefix="etl-pgfault-")  # not under pytest's 0700 tmp: the postgres user reads it
    os.chmod(root, 0o755)
    pg = DisposablePostgres(root, port)
    pg.init()
    pg.start()
    yield pg
    pg.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)
