"""A hook that gives operators a SparkSession from an Airflow connection.

It resolves the connection exactly like the apache-spark provider's ``@task.pyspark`` does, so one
connection serves both:

* no connection, or a ``spark`` connection whose host is ``local[*]`` -- embedded Spark (the default);
* a ``spark`` connection with host ``spark://host`` and a port -- a standalone cluster master;
* a ``spark_connect`` connection (``sc://host:port``) -- a Spark Connect server.

Connection extras become Spark conf; the operator's ``spark_conf`` overrides them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Environment variable naming extra jars (comma-separated, globs allowed) to add to ``spark.jars``
#: for embedded and standalone sessions. ``make spark-jars`` fetches the Kafka source and the
#: PostgreSQL JDBC driver into ``.local/jars`` and the env file points this variable at them.
SPARK_JARS_ENV = "AIRFLOW_ETL_SPARK_JARS"

#: The jars this package carries (``make jvm-jar`` builds ``airflow-etl-jvm.jar``, the JVM COPY writer, into
#: ``airflow_etl_provider/jars``; a wheel built from that tree ships it). Classic sessions this hook builds get
#: them on ``spark.jars``, so the executors of a cluster receive them too.
PACKAGED_JARS_DIR = Path(__file__).resolve().parents[1] / "jars"


def packaged_jars() -> list[str]:
    """The paths of the jars this package carries (none when it was installed without building them)."""
    if not PACKAGED_JARS_DIR.is_dir():
        return []
    return sorted(str(p) for p in PACKAGED_JARS_DIR.glob("*.jar"))


#: Spark's setting for the executors' Python (documented for spark-submit). A Python driver ignores it: the
#: SparkContext takes ``$PYSPARK_PYTHON`` when it starts. The hook honours it, so a connection to a cluster
#: whose executors run another Python (no Airflow there: see ``requirements-executor.txt``) can say which.
EXECUTOR_PYTHON_CONF = "spark.pyspark.python"


@contextlib.contextmanager
def _executor_python(python: str | None) -> Iterator[None]:
    """``$PYSPARK_PYTHON`` set to ``python`` while a SparkContext starts (it keeps the value), then restored."""
    if not python:
        yield
        return
    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = before


class SparkSessionHook(BaseHook):
    """Build (and stop) a SparkSession described by an Airflow connection.

    :param spark_conn_id: a ``spark`` or ``spark_connect`` connection id. ``None`` or a missing
        ``spark_default`` means embedded ``local[*]``.
    :param spark_conf: Spark conf that overrides the connection's extras.
    :param app_name: the Spark application name (defaults to ``airflow-etl``).
    """

    conn_name_attr = "spark_conn_id"
    default_conn_name = "spark_default"
    conn_type = "spark"
    hook_name = "Spark session (airflow-etl-provider)"

    def __init__(
        self,
        spark_conn_id: str | None = default_conn_name,
        spark_conf: Mapping[str, Any] | None = None,
        app_name: str = "airflow-etl",
    ) -> None:
        super().__init__()
        self.spark_conn_id = spark_conn_id
        self.spark_conf = dict(spark_conf or {})
        self.app_name = app_name

    def resolve_conf(self) -> dict[str, str]:
        """Return the Spark conf (including ``spark.master`` or ``spark.remote``) for this hook.

        Pure apart from reading the connection; exposed so callers and tests can see what a
        session would be built with.
        """
        conf: dict[str, str] = {"spark.app.name": self.app_name}
        url = "local[*]"
        if self.spark_conn_id:
            conn = self._get_connection_or_none(self.spark_conn_id)
            if conn is not None:
                if conn.conn_type == "spark_connect":
                    from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook

                    url = SparkConnectHook(self.spark_conn_id).get_connection_url()
                elif conn.host and conn.port:
                    url = f"{conn.host}:{conn.port}"
                elif conn.host:
                    url = conn.host
                for key, value in (conn.extra_dejson or {}).items():
                    conf[str(key)] = str(value)
        for key, value in self.spark_conf.items():
            conf[str(key)] = str(value)
        if url.startswith("sc://") or conf.get("spark.remote"):
            conf.setdefault("spark.remote", url)
            conf.pop("spark.master", None)
            # Jars live on the Spark Connect server, not in the client.
            conf.pop("spark.jars", None)
        else:
            conf.setdefault("spark.master", url)
            extra_jars = [j for j in os.environ.get(SPARK_JARS_ENV, "").split(",") if j] + packaged_jars()
            if extra_jars:
                jars = [j for j in conf.get("spark.jars", "").split(",") if j]
                names = {os.path.basename(j) for j in jars}
                for jar in extra_jars:
                    if jar not in jars and os.path.basename(jar) not in names:  # one copy of a class
                        jars.append(jar)
                        names.add(os.path.basename(jar))
                conf["spark.jars"] = ",".join(jars)
        return conf

    def _get_connection_or_none(self, conn_id: str) -> Any:
        try:
            return self.get_connection(conn_id)
        except Exception as err:  # AirflowNotFoundException, or no DB outside a task
            if conn_id == self.default_conn_name:
                log.info("Connection %r not found (%s); using embedded Spark local[*]", conn_id, err)
                return None
            raise

    @contextlib.contextmanager
    def session(self) -> Iterator[SparkSession]:
        """Yield a SparkSession and stop it on exit if this hook started it.

        An already active classic session (for example one a test suite shares) is reused and left
        running; a session this hook created is always stopped, also on error.
        """
        from pyspark.sql import SparkSession

        conf = self.resolve_conf()
        remote = conf.get("spark.remote")
        active = None if remote else SparkSession.getActiveSession()
        if active is not None:
            log.info("Reusing the active SparkSession (master=%s)", active.sparkContext.master)
            for key, value in conf.items():
                if not key.startswith(("spark.master", "spark.jars", "spark.app.name", "spark.driver")):
                    with contextlib.suppress(Exception):  # static conf cannot change on a live session
                        active.conf.set(key, value)
            yield active
            return
        builder = SparkSession.builder
        if remote:
            builder = builder.remote(remote)
        for key, value in conf.items():
            if key != "spark.remote":
                builder = builder.config(key, value)
        # getOrCreate() also returns a session that exists but is not this thread's active one (a session made
        # in another thread): that one is not ours to stop.
        existing = None if remote else SparkSession._instantiatedSession
        log.info("Starting SparkSession (%s)", remote or conf.get("spark.master"))
        with _executor_python(None if remote else conf.get(EXECUTOR_PYTHON_CONF)):
            spark = builder.getOrCreate()
        if existing is not None and spark is existing:
            log.info("Reusing the SparkSession of another thread (master=%s)", spark.sparkContext.master)
            yield spark
            return
        try:
            yield spark
        finally:
            if remote:
                _wait_for_releases(spark)
            spark.stop()


def jvm_class(jvm: Any, fqn: str) -> Any | None:
    """The Java class ``fqn`` of a session's JVM (``spark._jvm``, a py4j JVM view), in one request; ``None``
    when the JVM has no such class.

    ``jvm.a.b.C`` asks the JVM once per dotted part, with a failed ``Class.forName`` and its exception for each
    package prefix (five for ``org.apache.kafka.clients.producer.KafkaProducer``); the view resolves a whole
    name in one request and answers a ``JavaPackage`` when no class has it.

    :param jvm: the session's ``_jvm``.
    :param fqn: the class's fully-qualified name.
    """
    from py4j.java_gateway import JavaClass

    found = getattr(jvm, fqn)
    return found if isinstance(found, JavaClass) else None


def _wait_for_releases(spark: Any, timeout_s: float = 10.0) -> None:
    """Let a Spark Connect client finish releasing its executions before its session closes.

    pyspark's ``stop()`` releases the session first and waits for the pending ``ReleaseExecute`` calls only
    afterwards; a server that sees a session close under an execution it still holds logs that execution at
    INFO, plan and pickled functions included (tests/integration/test_credentials.py caught a password there).
    """
    import concurrent.futures

    futures = list(getattr(getattr(spark, "client", None), "_release_futures", None) or ())
    if futures:
        concurrent.futures.wait(futures, timeout=timeout_s)
