"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_etl_provider import __version__


def get_provider_info() -> dict[str, Any]:
    """Return the provider description that ``airflow providers list`` shows.

    Connection types and notifiers are listed here as the package adds them.
    """
    return {
        "package-name": "airflow-etl-provider",
        "name": "Resilient Spark ETL",
        "description": (
            "Resilient Spark loads into PostgreSQL and object storage with retry, a circuit breaker "
            "shared through Airflow Variables and dead-letter queues on Kafka or S3; declarative data "
            "quality; watermarked streaming."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Resilient Spark ETL",
                "external-doc-url": "https://pypi.org/project/airflow-etl-provider/",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Resilient Spark ETL",
                "python-modules": [
                    "airflow_etl_provider.hooks.spark",
                    "airflow_etl_provider.hooks.postgres",
                    "airflow_etl_provider.hooks.dead_letter",
                    "airflow_etl_provider.hooks.circuit_breaker",
                    "airflow_etl_provider.hooks.quality",
                    "airflow_etl_provider.hooks.quality_history",
                    "airflow_etl_provider.hooks.streaming",
                    "airflow_etl_provider.hooks.metrics",
                    "airflow_etl_provider.hooks.observability",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "Resilient Spark ETL",
                "python-modules": [
                    "airflow_etl_provider.operators.load",
                    "airflow_etl_provider.operators.quality",
                    "airflow_etl_provider.operators.streaming",
                ],
            }
        ],
        "extra-links": ["airflow_etl_provider.operators.quality.DataQualityReportLink"],
        "connection-types": [],
        "notifications": [
            "airflow_etl_provider.notifications.etl.WebhookNotifier",
            "airflow_etl_provider.notifications.etl.SummaryNotifier",
        ],
    }
