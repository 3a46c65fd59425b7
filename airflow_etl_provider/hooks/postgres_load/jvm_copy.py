"""COPY staging on Spark's JVM side: the driver half of ``jvm/src/.../PostgresCopyStager.java``.

On a classic session (embedded ``local[*]``, a standalone or YARN cluster) whose ``spark.jars`` hold
``airflow-etl-jvm.jar`` (``make jvm-jar`` builds it into this package; sessions built by
:class:`~airflow_etl_provider.hooks.spark.SparkSessionHook` get it on ``spark.jars``), the executors render
each partition's rows as the same COPY CSV the Python writer (:mod:`airflow_etl_provider.executor.postgres_copy`)
sends and stream it with PgJDBC's ``CopyManager``, where Spark already holds the rows: no Arrow hand-over, no Python worker. Measured on 1M
orders (``benchmarks/bench_load_postgres.py``) that is most of the staging cost gone (the Arrow hand-over
alone was ~7 CPU-s against ~1 s for the JVM's own scan).

Spark Connect clients cannot reach the JVM, a session without the jar has no such class, and a connection
setting PgJDBC has no equivalent for cannot be passed on: in each case :func:`jvm_copy_unavailable` says
why and the loader uses the Python writer (same rows, same text, same accounting).

Values are rendered by kind (see the Java constants) from Spark's internal rows (strings as UTF-8 bytes,
timestamps as microseconds, dates as days, decimals unscaled: nothing decoded into Java objects, no
``java.sql.Timestamp`` calendar rebasing), with the same rules as the Python writer: strings always quoted,
NULL an unquoted empty field, timestamps into ``timestamptz`` in UTC, other timestamps as the session time
zone's wall time, binary as ``\\x`` hex. Where every staging column's type takes it
(:func:`~airflow_etl_provider.core.sql.binary_copy_supported`; the loader's ``copy_format``), the JVM writer sends
PostgreSQL's binary COPY format instead (``CopyBinary.java``): the same values, no text for PostgreSQL to parse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: The Java class (in ``airflow-etl-jvm.jar``).
STAGER_CLASS = "airflow_etl_provider.jvm.PostgresCopyStager"

#: psycopg connection parameters -> PgJDBC connection properties (the ones with an equivalent). host, port
#: and dbname make the URL. Any other parameter keeps the load on the Python writer, which honours it.
_JDBC_PROPERTIES = {
    "user": "user",
    "password": "password",
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "connect_timeout": "connectTimeout",
    "options": "options",
    "application_name": "ApplicationName",
}
_URL_PARTS = ("host", "port", "dbname")

_INTEGRAL = frozenset({"int", "integer", "bigint", "smallint", "tinyint", "boolean"})


def jdbc_target(conn_args: Mapping[str, Any]) -> tuple[str, dict[str, str]] | str:
    """PgJDBC's URL and properties for the psycopg connection parameters, or the reason there are none.

    :param conn_args: :meth:`SparkPostgresHook.psycopg_conn_args` (they hold the password: never log them).
    :return: ``(url, properties)``, or a message naming the parameter PgJDBC cannot take.
    """
    unknown = sorted(k for k in conn_args if k not in _JDBC_PROPERTIES and k not in _URL_PARTS)
    if unknown:
        return f"connection parameter(s) PgJDBC has no equivalent for here: {', '.join(unknown)}"
    host = str(conn_args.get("host") or "localhost")
    if "," in host or host.startswith("/"):
        return "a multi-host or Unix-socket connection"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    url = f"jdbc:postgresql://{host}:{int(conn_args.get('port') or 5432)}/{conn_args.get('dbname') or 'postgres'}"
    props = {_JDBC_PROPERTIES[k]: str(v) for k, v in conn_args.items() if k in _JDBC_PROPERTIES and v is not None}
    return url, props


def column_kinds(spark_types: Sequence[str], to_utc: Sequence[int]) -> str:
    """One kind letter per staged column (``PostgresCopyStager.KIND_*``), from Spark's simple type strings.

    :param to_utc: positions of ``timestamp`` columns going to ``timestamptz`` (rendered in UTC).
    """
    kinds = []
    utc = frozenset(to_utc)
    for i, spark_type in enumerate(spark_types):
        t = spark_type.strip().lower()
        if t == "string" or t.startswith(("char(", "varchar(")):
            kinds.append("s")
        elif t in _INTEGRAL:
            kinds.append("p")
        elif t == "double":
            kinds.append("d")
        elif t == "float":
            kinds.append("f")
        elif t.startswith("decimal("):
            kinds.append("n")
        elif t == "date":
            kinds.append("D")
        elif t == "timestamp":
            kinds.append("T" if i in utc else "t")
        elif t == "timestamp_ntz":
            kinds.append("L")
        elif t == "binary":
            kinds.append("b")
        else:
            raise ValueError(f"column {i} ({spark_type}) cannot be staged with COPY")
    return "".join(kinds)


def jvm_copy_unavailable(spark: Any) -> str | None:
    """Why the JVM writer cannot run in this session (``None``: it can)."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        return "a Spark Connect session (no JVM in the client)"
    from airflow_etl_provider.hooks.spark import jvm_class

    if jvm_class(jvm, STAGER_CLASS) is None:
        return ("airflow-etl-jvm.jar is not on spark.jars (make jvm-jar builds it into airflow_etl_provider/jars, "
                "which sessions built by SparkSessionHook put there; add it to spark.jars of other sessions)")
    return None


def stage_on_jvm(
    staged: DataFrame, url: str, properties: Mapping[str, str], copy_sql: str, kinds: str, binary: bool = False
) -> list[dict[str, int]]:
    """Run the JVM COPY job over ``staged`` (columns in the COPY statement's order) and return its status
    (``partition``, ``attempt``, ``rows``), one per partition.

    :param staged: the staged DataFrame.
    :param properties: PgJDBC properties (hold the password: never log them).
    :param kinds: :func:`column_kinds` of ``staged``.
    :param binary: send PostgreSQL's binary COPY form (``copy_sql`` says ``FORMAT binary``; every column passed
        :func:`~airflow_etl_provider.core.sql.binary_copy_supported`), else CSV.
    """
    from airflow_etl_provider.hooks.spark import jvm_class

    spark = staged.sparkSession
    jvm = spark._jvm  # type: ignore[attr-defined]
    props = jvm_class(jvm, "java.util.HashMap")()
    for key, value in properties.items():
        props.put(key, value)
    zone = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    stager = jvm_class(jvm, STAGER_CLASS)
    if stager is None:  # jvm_copy_unavailable() was asked first; a session whose jars changed since
        raise RuntimeError(f"{STAGER_CLASS} is not in the session's JVM: {jvm_copy_unavailable(spark)}")
    statuses = stager.stage(staged._jdf, url, props, copy_sql, kinds, zone, binary)
    return [{"partition": int(s[0]), "attempt": int(s[1]), "rows": int(s[2])} for s in statuses]
