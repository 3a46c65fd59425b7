"""PostgreSQL I/O for Spark: JDBC options from an Airflow ``postgres`` connection.

Credentials come only from the Airflow connection and are handed to Spark as JDBC properties; they
are never logged and never returned in XCom.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

JDBC_DRIVER = "org.postgresql.Driver"


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

        :param extra: more JDBC options (``batchsize``, ``numPartitions`` ...), stringified.
        """
        conn = self.get_connection(self.get_conn_id())
        options = {
            "url": self.jdbc_url(),
            "user": conn.login or "",
            "password": conn.password or "",
            "driver": JDBC_DRIVER,
            "reWriteBatchedInserts": "true",
        }
        options.update({k: str(v) for k, v in extra.items()})
        return options
