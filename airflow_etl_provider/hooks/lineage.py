"""OpenLineage for the operators: ``get_openlineage_facets_on_complete`` builds an ``OperatorLineage`` from the
operator's configuration and its run summary.

Inputs and outputs are named like the OpenLineage provider names them (:mod:`airflow_etl_provider.core.lineage`:
PostgreSQL through ``PostgresHook.get_openlineage_database_info``, Kafka topics by their first bootstrap server,
S3 and file paths); the dead-letter queue is an extra output. The run gets the custom facet ``etlRowAccounting``
(rows read / loaded / dead-lettered / quarantined / late, the dead letters' location, the outcome); the checked
input gets the standard ``dataQualityAssertions`` facet (one assertion per rule, ``success`` = the rule passed).
Requires ``apache-airflow-providers-openlineage`` (extra ``lineage``); connection look-ups go through the Task SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attr

from airflow_etl_provider.core.lineage import kafka_dataset, path_dataset, postgres_dataset

try:  # the facet class needs the client at import time; without it lineage is simply not offered
    from openlineage.client.facet_v2 import RunFacet
except ImportError:  # pragma: no cover - the lineage extra is not installed
    RunFacet = object  # type: ignore[assignment,misc]

FACET_NAME = "etlRowAccounting"


@attr.define
class EtlRowAccountingRunFacet(RunFacet):  # type: ignore[misc,valid-type]
    """Row accounting of one run of an airflow-etl-provider operator."""

    rowsRead: int = attr.field(default=0)  # noqa: N815 (OpenLineage facets are camelCase)
    rowsLoaded: int = attr.field(default=0)  # noqa: N815
    rowsDeadLettered: int = attr.field(default=0)  # noqa: N815
    rowsQuarantined: int = attr.field(default=0)  # noqa: N815
    lateRows: int = attr.field(default=0)  # noqa: N815
    deadLetterLocation: str | None = attr.field(default=None)  # noqa: N815
    outcome: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return "https://pypi.org/project/airflow-etl-provider/#etlRowAccountingRunFacet"


def _postgres(conn_id: str, table: str) -> tuple[str, str]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    info = hook.get_openlineage_database_info(hook.get_connection(conn_id))
    return postgres_dataset(info.authority, info.database, table)


def _kafka(conn_id: str | None, topic: str, config: Mapping[str, Any] | None = None) -> tuple[str, str]:
    servers = (config or {}).get("bootstrap.servers")
    if not servers:
        from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

        servers = (
            KafkaBaseHook(kafka_config_id=conn_id or "kafka_default")._build_config().get("bootstrap.servers")
        )
    return kafka_dataset(str(servers), topic)


def source_dataset(source: Mapping[str, Any]) -> tuple[str, str] | None:
    """The dataset a source reads (``None`` for a query or a catalog table)."""
    fmt = source.get("format") or source.get("type")
    if fmt == "kafka":
        return _kafka(source.get("conn_id"), source["topic"])
    if fmt == "jdbc" and source.get("table"):
        return _postgres(source.get("conn_id") or "postgres_default", source["table"])
    if source.get("path"):
        return path_dataset(str(source["path"]))
    return None


def target_dataset(target: Mapping[str, Any]) -> tuple[str, str] | None:
    """The dataset a load target / streaming sink / quality output writes."""
    kind = target.get("type")
    if kind == "postgres":
        return _postgres(target.get("conn_id") or "postgres_default", target["table"])
    if kind == "kafka":
        return _kafka(target.get("conn_id"), target["topic"])
    if target.get("path"):
        return path_dataset(str(target["path"]))
    return None


def dead_letter_dataset(dlq: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The dead-letter queue as a dataset (Kafka topic, S3 prefix or directory)."""
    if not dlq:
        return None
    from airflow_etl_provider.core.config import parse_dead_letter

    cfg: Any = parse_dead_letter(dlq)
    if cfg is None:
        return None
    if cfg.type == "kafka":
        return _kafka(cfg.conn_id, cfg.topic, cfg.config)
    if cfg.type == "s3":
        return f"s3://{cfg.bucket}", cfg.prefix
    return path_dataset(cfg.path)


def assertions_facet(summary: Mapping[str, Any]) -> Any:
    """The standard ``dataQualityAssertions`` facet from the summary's rule results (``None`` without rules)."""
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dq

    rules = summary.get("rule_results") or []
    if not rules:
        return None
    return dq.DataQualityAssertionsDatasetFacet(
        assertions=[
            dq.Assertion(
                assertion=str(r.get("type") or r.get("name")),
                success=r.get("status") == "pass",
                column=",".join(r.get("columns") or []) or None,
                severity=r.get("severity"),
                name=r.get("name"),
                expected=None if r.get("threshold") is None else str(r.get("threshold")),
                actual=str(r.get("failing_rows") or 0),
            )
            for r in rules
        ]
    )


def operator_lineage(
    summary: Mapping[str, Any] | None,
    inputs: list[tuple[str, str] | None],
    outputs: list[tuple[str, str] | None],
) -> Any:
    """``OperatorLineage`` with the datasets, the row-accounting run facet and, on the first input, the
    data-quality assertions."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    summary = summary or {}
    assertions = assertions_facet(summary)
    ins = []
    for i, ds in enumerate(d for d in inputs if d is not None):
        facets = {"dataQualityAssertions": assertions} if i == 0 and assertions is not None else {}
        ins.append(InputDataset(namespace=ds[0], name=ds[1], inputFacets=facets))
    outs = [
        OutputDataset(namespace=ds[0], name=ds[1])
        for ds in dict.fromkeys(o for o in outputs if o is not None)
    ]
    facet = EtlRowAccountingRunFacet(
        rowsRead=int(summary.get("rows_read") or 0),
        rowsLoaded=int(summary.get("rows_loaded") or 0),
        rowsDeadLettered=int(summary.get("rows_dead_lettered") or 0),
        rowsQuarantined=int(summary.get("rows_quarantined") or 0),
        lateRows=int(summary.get("late_rows") or 0),
        deadLetterLocation=summary.get("dead_letter_location"),
        outcome=summary.get("outcome"),
    )
    return OperatorLineage(inputs=ins, outputs=outs, run_facets={FACET_NAME: facet})
