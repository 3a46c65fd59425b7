"""OpenLineage dataset naming (pure), the way the OpenLineage spec and Airflow's OpenLineage provider name them.

* PostgreSQL table: namespace ``postgres://{host}:{port}``, name ``{database}.{schema}.{table}`` (schema
  ``public`` when the table has none), as ``PostgresHook.get_openlineage_database_info`` does;
* Kafka topic: namespace ``kafka://{first bootstrap server}``, name the topic;
* S3 (``s3://``, ``s3a://``, ``s3n://``): namespace ``s3://{bucket}``, name the key (no leading ``/``);
* local file: namespace ``file``, name the absolute path; other URIs: ``{scheme}://{authority}`` and the path.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse


def path_dataset(path: str) -> tuple[str, str]:
    """``(namespace, name)`` of a file-system or object-store path."""
    parsed = urlparse(path)
    if parsed.scheme in ("s3", "s3a", "s3n"):
        return f"s3://{parsed.netloc}", parsed.path.lstrip("/") or "/"
    if parsed.scheme in ("", "file"):
        local = parsed.path if parsed.scheme == "file" else path
        return "file", os.path.abspath(local)
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path or "/"


def postgres_dataset(authority: str, database: str, table: str) -> tuple[str, str]:
    """``(namespace, name)`` of a PostgreSQL table.

    :param authority: ``host:port``.
    :param database: the database name.
    :param table: ``schema.table`` or ``table`` (schema ``public``); quotes are removed.
    """
    parts = [p.strip('"') for p in table.split(".")]
    schema, name = (parts[-2], parts[-1]) if len(parts) > 1 else ("public", parts[0])
    return f"postgres://{authority}", f"{database}.{schema}.{name}"


def kafka_dataset(bootstrap_servers: str, topic: str) -> tuple[str, str]:
    """``(namespace, name)`` of a Kafka topic (the first bootstrap server names the cluster)."""
    first = bootstrap_servers.split(",")[0].strip()
    return f"kafka://{first.split('://')[-1]}", topic
