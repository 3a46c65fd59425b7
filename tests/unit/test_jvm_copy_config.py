"""The driver half of the JVM COPY writer, without Spark: the PgJDBC target it derives from psycopg's
connection parameters and the per-column kinds it sends the Java side."""

from __future__ import annotations

import pytest

from airflow_etl_provider.hooks.postgres_load.jvm_copy import column_kinds, jdbc_target


def test_psycopg_parameters_become_a_jdbc_url_and_properties() -> None:
    url, props = jdbc_target({"host": "db.example", "port": 6432, "dbname": "etl", "user": "u", "password": "p",
                              "sslmode": "require", "connect_timeout": 5, "application_name": "airflow-etl-copy"})
    assert url == "jdbc:postgresql://db.example:6432/etl"
    assert props == {"user": "u", "password": "p", "sslmode": "require", "connectTimeout": "5",
                     "ApplicationName": "airflow-etl-copy"}
    assert jdbc_target({"host": "::1", "dbname": "d"})[0] == "jdbc:postgresql://[::1]:5432/d"


@pytest.mark.parametrize(("args", "reason"), [
    ({"host": "h", "sslkey": "/k.pem"}, "connection parameter(s) PgJDBC has no equivalent for here: sslkey"),
    ({"host": "a,b"}, "a multi-host or Unix-socket connection"),
    ({"host": "/var/run/postgresql"}, "a multi-host or Unix-socket connection"),
])
def test_parameters_pgjdbc_cannot_take_keep_the_python_writer(args, reason) -> None:
    assert jdbc_target(args) == reason


def test_column_kinds_follow_the_spark_types_and_the_utc_targets() -> None:
    types = ["bigint", "string", "varchar(3)", "int", "boolean", "double", "float", "decimal(12,2)", "date",
             "timestamp", "timestamp", "timestamp_ntz", "binary", "tinyint"]
    assert column_kinds(types, to_utc=[9]) == "pssppdfnDTtLbp"
    with pytest.raises(ValueError, match=r"column 0 \(array<int>\) cannot be staged with COPY"):
        column_kinds(["array<int>"], [])
