"""The pure pass / warn / fail logic: one :class:`RuleResult` per rule from observed counts and values."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import Any

from airflow_etl_provider.core.rules.base import (
    Action,
    Severity,
    Status,
    _CountedRule,
)
from airflow_etl_provider.core.rules.condition import Condition
from airflow_etl_provider.core.rules.jsonable import to_jsonable
from airflow_etl_provider.core.rules.models import (
    ColumnMetricRule,
    FreshnessRule,
    RowCountChangeRule,
    RowCountRule,
    Rule,
    SchemaRule,
    SqlRule,
)
from airflow_etl_provider.core.rules.spark_types import normalize_type


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule.

    :param name: the rule's name.
    :param type: the rule's type.
    :param failing_rows: rows that failed (counted rules); ``None`` for dataset rules.
    :param failure_ratio: ``failing_rows / total`` (0.0 on empty data); ``None`` for dataset rules.
    :param threshold: the threshold or condition, as text.
    :param status: ``pass``, ``warn`` (failed, severity ``warn``) or ``fail``.
    :param severity: the rule's severity.
    :param action: the rule's effective action (what the operator does on failure).
    :param observed: the observed value of a dataset rule (row count, newest timestamp, query value ...).
    :param message: a human-readable explanation.
    :param columns: the rule's columns.
    """

    name: str
    type: str
    failing_rows: int | None
    failure_ratio: float | None
    threshold: str
    status: Status
    severity: Severity
    action: Action
    observed: Any = None
    message: str = ""
    columns: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the rule passed."""
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "type": self.type,
            "columns": list(self.columns),
            "status": self.status,
            "severity": self.severity,
            "action": self.action,
            "failing_rows": self.failing_rows,
            "failure_ratio": self.failure_ratio,
            "threshold": self.threshold,
            "observed": to_jsonable(self.observed),
            "message": self.message,
        }


def _status(passed: bool, rule: Rule) -> Status:
    if passed:
        return "pass"
    return "warn" if rule.severity == "warn" else "fail"


def _result(rule: Rule, passed: bool, threshold: str, **kwargs: Any) -> RuleResult:
    return RuleResult(
        name=rule.rule_name,
        type=rule.type,
        threshold=threshold,
        status=_status(passed, rule),
        severity=rule.severity,
        action=rule.effective_action,
        columns=rule.referenced_columns,
        **kwargs,
    )


def evaluate_threshold(rule: Rule, failing: int, total: int) -> RuleResult:
    """Pass / warn / fail of a counted rule with ``failing`` of ``total`` rows failing.

    The rule passes when ``failing <= max_failures``; or, with ``mostly``, when the passing fraction
    ``1 - failing / total`` is at least ``mostly`` (compared exactly, as fractions; empty data passes);
    otherwise only when ``failing == 0``. A failing rule of severity ``warn`` has status ``warn``.

    :param rule: a counted rule (row-level or ``unique``).
    :param failing: failing rows.
    :param total: rows evaluated.
    """
    if not isinstance(rule, _CountedRule):
        raise TypeError(f"rule {rule.rule_name!r} ({rule.type}) does not count failing rows")
    if failing < 0 or total < 0 or failing > total:
        raise ValueError(f"need 0 <= failing <= total (got failing={failing}, total={total})")
    if rule.max_failures is not None:
        passed = failing <= rule.max_failures
    elif rule.mostly is not None:
        passed = total == 0 or Fraction(total - failing, total) >= Fraction(repr(rule.mostly))
    else:
        passed = failing == 0
    ratio = failing / total if total else 0.0
    message = f"{failing} of {total} rows failed ({ratio:.2%})"
    return _result(
        rule, passed, rule.threshold_text(), failing_rows=failing, failure_ratio=ratio, message=message
    )


def row_count_result(rule: RowCountRule, count: int) -> RuleResult:
    """Pass / fail of a ``row_count`` rule for ``count`` rows."""
    passed = (rule.min is None or count >= rule.min) and (rule.max is None or count <= rule.max)
    bounds = " and ".join(
        part
        for part in (
            f">= {rule.min}" if rule.min is not None else "",
            f"<= {rule.max}" if rule.max is not None else "",
        )
        if part
    )
    return _result(
        rule,
        passed,
        f"row_count {bounds}",
        failing_rows=None,
        failure_ratio=None,
        observed=count,
        message=f"{count} rows",
    )


def _aware(moment: datetime | date) -> datetime:
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time.min)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _age_text(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def freshness_result(
    rule: FreshnessRule, newest: datetime | date | None, reference_time: datetime | None = None
) -> RuleResult:
    """Pass / fail of a ``freshness`` rule.

    :param rule: the rule.
    :param newest: the newest value of the column (naive values are UTC); ``None`` (no data) fails.
    :param reference_time: the run's logical date (naive = UTC); now when ``None``.
    """
    reference = _aware(reference_time) if reference_time is not None else datetime.now(UTC)
    threshold = f"age <= {_age_text(rule.max_age)}"
    if newest is None:
        return _result(
            rule,
            False,
            threshold,
            failing_rows=None,
            failure_ratio=None,
            observed=None,
            message=f"no non-NULL value in {rule.column!r}",
        )
    newest_at = _aware(newest)
    age = (reference - newest_at).total_seconds()
    passed = age <= rule.max_age
    message = (
        f"newest {rule.column!r} is {newest_at.isoformat()}, {_age_text(max(age, 0))} before the reference "
        f"time {reference.isoformat()}"
    )
    return _result(
        rule, passed, threshold, failing_rows=None, failure_ratio=None, observed=newest_at, message=message
    )


def _type_matches(expected: str, actual: str) -> bool:
    want, have = normalize_type(expected), normalize_type(actual)
    return want == have or (want == "decimal" and have.startswith("decimal"))


def schema_result(rule: SchemaRule, actual: Mapping[str, str]) -> RuleResult:
    """Pass / fail of a ``schema`` rule against the data's ``{column: Spark type}``.

    ``observed`` is ``{"missing": [...], "extra": [...], "wrong_type": {col: {"expected", "actual"}}}``.
    """
    missing = [c for c in rule.columns if c not in actual]
    extra = [] if rule.allow_extra else [c for c in actual if c not in rule.columns]
    wrong = {
        c: {"expected": t, "actual": actual[c]}
        for c, t in rule.columns.items()
        if c in actual and not _type_matches(t, actual[c])
    }
    passed = not (missing or extra or wrong)
    parts = []
    if missing:
        parts.append(f"missing: {', '.join(missing)}")
    if extra:
        parts.append(f"extra: {', '.join(extra)}")
    if wrong:
        parts.append(
            "wrong type: "
            + ", ".join(f"{c} is {v['actual']}, expected {v['expected']}" for c, v in wrong.items())
        )
    return _result(
        rule,
        passed,
        f"{len(rule.columns)} columns{'' if rule.allow_extra else ', no extra'}",
        failing_rows=None,
        failure_ratio=None,
        observed={"missing": missing, "extra": extra, "wrong_type": wrong},
        message="; ".join(parts) or "schema matches",
    )


def _condition_result(
    rule: SqlRule | ColumnMetricRule, condition: Condition | None, value: Any, what: str
) -> RuleResult:
    if value is None and rule.accept_none:
        value_for_check: Any = 0
    else:
        value_for_check = value
    if condition is None:
        passed = bool(value_for_check) if value_for_check is not None else False
        threshold = "truthy"
    else:
        passed = condition.matches(value_for_check)
        threshold = condition.describe()
    return _result(
        rule,
        passed,
        threshold,
        failing_rows=None,
        failure_ratio=None,
        observed=value,
        message=f"{what} = {value!r}",
    )


def sql_result(rule: SqlRule, value: Any, rows: int = 1) -> RuleResult:
    """Pass / fail of a ``sql`` rule whose query returned ``value`` (first column of the first row).

    :param rows: rows the query returned (0: the value is missing; more than 1: the rule fails).
    """
    if rows != 1:
        threshold = rule.condition.describe() if rule.condition else "truthy"
        return _result(
            rule,
            rows == 0 and rule.accept_none and (rule.condition is None or rule.condition.matches(0)),
            threshold,
            failing_rows=None,
            failure_ratio=None,
            observed=None,
            message=f"the query returned {rows} rows; it must return exactly one",
        )
    return _condition_result(rule, rule.condition, value, "query result")


def column_metric_result(rule: ColumnMetricRule, value: Any) -> RuleResult:
    """Pass / fail of a ``column_metric`` rule whose metric is ``value``."""
    return _condition_result(rule, rule.condition, value, f"{rule.metric}({rule.column})")


def row_count_change_result(rule: RowCountChangeRule, count: int, history: Sequence[int] = ()) -> RuleResult:
    """Pass / fail of a ``row_count_change`` rule.

    The change is ``|count - baseline| / baseline``; a zero baseline gives change 0 for 0 rows and
    infinity otherwise. Without history (the rule's and the given one, in that order) the rule passes.
    """
    counts = [*rule.history, *history]
    threshold = f"change <= {rule.max_change:.2%} vs {rule.baseline}"
    if not counts:
        return _result(
            rule,
            True,
            threshold,
            failing_rows=None,
            failure_ratio=None,
            observed=count,
            message="no history: nothing to compare with",
        )
    baseline: float
    if rule.baseline == "last":
        baseline = counts[-1]
    elif rule.baseline == "mean":
        baseline = statistics.fmean(counts)
    else:
        baseline = statistics.median(counts)
    change = abs(count - baseline) / baseline if baseline else (0.0 if count == 0 else math.inf)
    return _result(
        rule,
        change <= rule.max_change,
        threshold,
        failing_rows=None,
        failure_ratio=None,
        observed={
            "row_count": count,
            "baseline": baseline,
            "change": change if math.isfinite(change) else None,
        },
        message=f"{count} rows vs baseline {baseline:g} ({'inf' if math.isinf(change) else f'{change:.2%}'} change)",
    )
