"""airflow-etl-provider: an Apache Airflow 3 provider that makes Spark ETL pipelines survive the real world.

Layout (the import rules are tested in ``tests/unit/test_architecture.py``):

* :mod:`airflow_etl_provider.core` -- pure logic (retry, circuit breaker, rules, envelopes).
  Imports neither Airflow nor PySpark.
* :mod:`airflow_etl_provider.hooks` -- all I/O and connections (Spark, PostgreSQL, Kafka, S3), and what the
  operators share (e.g. :mod:`~airflow_etl_provider.hooks.resilience`): an operator never imports another.
* :mod:`airflow_etl_provider.operators` -- thin, declarative operators that delegate to hooks and core.
* :mod:`airflow_etl_provider.notifications` -- alerting.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
