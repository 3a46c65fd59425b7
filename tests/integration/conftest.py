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


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return f"127.0.0.1:{os.environ['ETL_STACK_KAFKA_PORT']}"


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One embedded SparkSession for the whole test session (first start ~8 s), built from the
    ``spark_default`` connection exactly as operators build theirs."""
    from pyspark.sql import SparkSession

    from airflow_etl_provider.hooks.spark import SparkSessionHook

    conf = SparkSessionHook(spark_conn_id="spark_default", app_name="pytest").resolve_conf()
    conf["spark.master"] = "local[2]"
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()
    logging.getLogger("py4j").setLevel(logging.WARNING)  # no "closing clientserver" noise at exit
