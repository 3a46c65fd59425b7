"""The report of one evaluation: every rule's result, samples, the overall status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_etl_provider.core.rules.base import Status
from airflow_etl_provider.core.rules.jsonable import to_jsonable
from airflow_etl_provider.core.rules.results import RuleResult

_STATUS_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class QualityReport:
    """Every rule's result, samples of failing rows, and the overall status.

    :param results: one :class:`RuleResult` per rule, in rule order.
    :param samples: rule name -> up to ``sample_size`` failing rows (key columns + the rule's columns).
    :param row_count: rows in the data.
    :param reference_time: the reference time of freshness rules.
    :param spark_queries: Spark queries (actions) the evaluation ran.
    """

    results: list[RuleResult]
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    row_count: int | None = None
    reference_time: datetime | None = None
    spark_queries: int = 0

    @property
    def status(self) -> Status:
        """``fail`` if any rule failed, else ``warn`` if any warned, else ``pass``."""
        worst = max((_STATUS_ORDER[r.status] for r in self.results), default=0)
        statuses: tuple[Status, ...] = ("pass", "warn", "fail")
        return statuses[worst]

    @property
    def failed(self) -> list[RuleResult]:
        """Results with status ``fail``."""
        return [r for r in self.results if r.status == "fail"]

    @property
    def warned(self) -> list[RuleResult]:
        """Results with status ``warn``."""
        return [r for r in self.results if r.status == "warn"]

    def __getitem__(self, name: str) -> RuleResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (datetimes ISO 8601, decimals as strings, bytes as hex)."""
        return {
            "status": self.status,
            "row_count": self.row_count,
            "reference_time": to_jsonable(self.reference_time),
            "spark_queries": self.spark_queries,
            "summary": {s: sum(r.status == s for r in self.results) for s in ("pass", "warn", "fail")},
            "rules": [
                {**r.to_dict(), "samples": to_jsonable(self.samples.get(r.name, []))} for r in self.results
            ],
        }
