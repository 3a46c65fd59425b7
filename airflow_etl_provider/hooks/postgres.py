"""PostgreSQL I/O for Spark: JDBC options from an Airflow ``postgres`` connection.

Credentials come only from the Airflow connection and are handed to Spark as JDBC properties; they
are never logged and never returned in XCom. The URL never carries them, and the Python-JVM bridges'
own DEBUG logs, which print every call crossing them (py4j's ``Command to send: ...``, Spark Connect's
plans), have them redacted (:func:`hide_from_spark_logs`).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

JDBC_DRIVER = "org.postgresql.Driver"
#: Connection extras that are settings of the hook, not libpq connection parameters.
_NOT_CONN_ARGS = frozenset({"cursor", "iam", "redshift", "redshift-serverless", "cluster-identifier",
                            "workgroup-name", "aws_conn_id", "sqlalchemy_scheme", "sqlalchemy_options",
                            "sqlalchemy_query", "enable_log_db_messages", "azure_conn_id"})

#: The loggers that print what crosses into Spark: py4j's protocol log (each command, its string arguments
#: verbatim, bytes such as pickled closures in base64) and Spark Connect's plan log.
BRIDGE_LOGGERS = ("py4j.java_gateway", "py4j.clientserver", "pyspark.sql.connect.logging")
REDACTED = "***"
#: A bytes argument of a py4j command (``j`` + base64): pickled closures, which may hold credentials.
_PY4J_BYTES = re.compile(r"(?m)^j[A-Za-z0-9+/=]{16,}$")


class _BridgeRedactor(logging.Filter):
    """Rewrites the records of :data:`BRIDGE_LOGGERS` (only ever DEBUG ones) without the registered secrets
    and without py4j bytes arguments. A logger's filters run before any handler sees the record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        # as given, as py4j writes a string argument (escape_new_line), and as a Python/protobuf text escape
        forms = {secret, secret.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n"),
                 repr(secret)[1:-1]}
        with self._lock:
            self.secrets |= {f for f in forms if f}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _PY4J_BYTES.sub(lambda m: f"j<{len(m.group(0)) - 1} base64 chars redacted>", message)
        with self._lock:
            secrets = sorted(self.secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in redacted:
                redacted = redacted.replace(secret, REDACTED)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = _BridgeRedactor()


def hide_from_spark_logs(*secrets: str | None) -> None:
    """Keep ``secrets`` out of the logs of the Python-JVM bridges.

    Call it with every credential handed to Spark (JDBC options, reader/writer options, values captured by
    a closure shipped to the executors) before handing it over. py4j logs each command it sends at DEBUG,
    string arguments verbatim; Spark Connect logs its plans at DEBUG (``SPARK_CONNECT_LOG_LEVEL``). Their
    records are rewritten with ``***`` in place of each secret, and py4j's base64 bytes arguments (pickled
    closures) are dropped. Cost: none unless those loggers are at DEBUG.

    :param secrets: passwords, tokens, keys; empty ones and ``None`` are ignored.
    """
    for secret in secrets:
        if secret:
            _REDACTOR.add(str(secret))
    for name in BRIDGE_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


class SparkPostgresHook(PostgresHook):
    """A :class:`PostgresHook` that can also describe its connection to Spark's JDBC source and sink.

    :param postgres_conn_id: the Airflow connection id (``postgres_default`` by default).
    """

    hook_name = "PostgreSQL for Spark (airflow-etl-provider)"

    def jdbc_url(self) -> str:
        """Return ``jdbc:postgresql://host:port/db`` (no credentials in it, so it is safe to log)."""
        conn = self.get_connection(self.get_conn_id())
        host = conn.host or "localhost"
        port = conn.port or 5432
        database = self.database or conn.schema or "postgres"
        return f"jdbc:postgresql://{host}:{port}/{database}"

    def jdbc_options(self, **extra: Any) -> dict[str, str]:
        """Return options for ``spark.read/write.format("jdbc")``: url, user, password, driver.

        The password is a separate option (never in the URL) and is registered with
        :func:`hide_from_spark_logs`.

        :param extra: more JDBC options (``batchsize``, ``numPartitions`` ...), stringified.
        """
        conn = self.get_connection(self.get_conn_id())
        hide_from_spark_logs(conn.password)
        options = {
            "url": self.jdbc_url(),
            "user": conn.login or "",
            "password": conn.password or "",
            "driver": JDBC_DRIVER,
            "reWriteBatchedInserts": "true",
        }
        options.update({k: str(v) for k, v in extra.items()})
        return options

    def psycopg_conn_args(self, application_name: str = "airflow-etl") -> dict[str, Any]:
        """psycopg connection parameters resolved on the driver from the Airflow connection, like
        :meth:`PostgresHook.get_conn` does (IAM tokens included), for code that runs where there is no Airflow
        (the executors' COPY writers, a stream's ``foreachBatch`` on a Spark Connect server). They hold the
        password, which is registered with :func:`hide_from_spark_logs`: never log them.

        :param application_name: shown in ``pg_stat_activity`` unless the connection sets one.
        """
        conn = self.connection
        login, password, port = conn.login, conn.password, conn.port
        extra = conn.extra_dejson or {}
        if extra.get("iam", False):
            login, password, port = self.get_iam_token(conn)
        args: dict[str, Any] = {
            "host": conn.host or "localhost", "port": port or 5432, "user": login, "password": password,
            "dbname": self.database or conn.schema or "postgres",
        }
        options = getattr(self, "options", None)
        if options:
            args["options"] = options
        for key, value in extra.items():
            if key not in _NOT_CONN_ARGS:
                args[key] = value
        args.setdefault("application_name", application_name)
        hide_from_spark_logs(password, *(str(v) for k, v in args.items() if "pass" in k and v))
        return {k: v for k, v in args.items() if v is not None}
