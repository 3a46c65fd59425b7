"""Rule kinds, the names they use, and the base models every rule shares (fields, columns, thresholds)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Severity = Literal["error", "warn"]
Action = Literal["fail", "warn", "quarantine"]
Status = Literal["pass", "warn", "fail"]

SEVERITIES = ("error", "warn")
ACTIONS = ("fail", "warn", "quarantine")
#: Rules evaluated as one boolean per row, all in one Spark pass.
ROW_LEVEL_TYPES = frozenset(
    {"not_null", "range", "regex", "format", "allowed_values", "length", "expression"}
)
#: Rules that count failing rows and take ``mostly`` / ``max_failures``.
COUNTED_TYPES = ROW_LEVEL_TYPES | {"unique"}
#: Rules that look at the whole dataset and report an observed value.
DATASET_TYPES = frozenset({"row_count", "freshness", "schema", "sql", "row_count_change", "column_metric"})
RULE_TYPES = tuple(sorted(COUNTED_TYPES | DATASET_TYPES))

#: Formats of the ``format`` rule; ``date`` and ``timestamp`` take a Spark datetime ``pattern``.
FORMATS = ("email", "uuid", "date", "timestamp", "numeric")
DEFAULT_DATETIME_PATTERNS = {"date": "yyyy-MM-dd", "timestamp": "yyyy-MM-dd HH:mm:ss"}
#: The regexes behind ``email``, ``uuid`` and ``numeric`` (valid in Java, Python and PostgreSQL POSIX).
FORMAT_REGEXES = {
    "email": r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "numeric": r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$",
}

METRICS = ("null_count", "null_sum", "distinct_count", "duplicate_count", "min", "max")
#: common-sql ``column_mapping`` check names -> the metric of a ``column_metric`` rule. ``null_check`` is
#: ``null_sum`` (common-sql's ``SUM(CASE WHEN col IS NULL THEN 1 ELSE 0 END)``: NULL on empty data).
COLUMN_MAPPING_CHECKS = {
    "null_check": "null_sum",
    "distinct_check": "distinct_count",
    "unique_check": "duplicate_count",
    "min": "min",
    "max": "max",
}

_NO_HINT = ""


# ------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class _RuleBase(_Model):
    """Fields every rule has."""

    type: str
    name: str | None = None
    severity: Severity = "error"
    action: Action | None = None
    description: str | None = None

    #: Whether the rule takes ``column``/``columns`` (list of names), and whether it needs at least one.
    column_param: ClassVar[Literal["none", "optional", "required", "one"]] = "none"

    @model_validator(mode="before")
    @classmethod
    def _columns(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or cls.column_param == "none":
            return data
        data = dict(data)
        if "column" in data and "columns" in data:
            raise ValueError("give 'column' or 'columns', not both")
        if "column" in data:
            column = data.pop("column")
            data["columns"] = (column,)
        elif isinstance(data.get("columns"), list):
            data["columns"] = tuple(data["columns"])
        elif isinstance(data.get("columns"), str):
            data["columns"] = (data["columns"],)
        if cls.column_param == "one" and len(data.get("columns", ())) > 1:
            raise ValueError("takes exactly one column: give 'column': '<name>'")
        return data

    @property
    def effective_action(self) -> Action:
        """``action``, defaulting to ``fail`` for severity ``error`` and ``warn`` for severity ``warn``."""
        if self.action is not None:
            return self.action
        return "fail" if self.severity == "error" else "warn"

    @property
    def counted(self) -> bool:
        """Whether the rule counts failing rows (row-level rules and ``unique``)."""
        return self.type in COUNTED_TYPES

    @property
    def row_level(self) -> bool:
        """Whether the rule is one boolean per row (evaluated in the single pass)."""
        return self.type in ROW_LEVEL_TYPES

    @property
    def referenced_columns(self) -> tuple[str, ...]:
        """The columns the data must have for this rule."""
        columns = getattr(self, "columns", ())
        return tuple(columns) if isinstance(columns, tuple) else ()

    @property
    def rule_name(self) -> str:
        """The name (always set on rules returned by :func:`parse_rules`)."""
        return self.name or self.default_name()

    def default_name(self) -> str:
        """The generated name, e.g. ``not_null(email)``."""
        columns = self.referenced_columns
        return f"{self.type}({','.join(columns)})" if columns else self.type


def _non_empty_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    for column in columns:
        if not column.strip():
            raise ValueError("column names must be non-empty strings")
    if len(set(columns)) != len(columns):
        raise ValueError("lists a column twice")
    return columns


class _CountedRule(_RuleBase):
    """A rule that counts failing rows: thresholds ``mostly`` or ``max_failures``."""

    mostly: float | None = Field(default=None, ge=0, le=1)
    max_failures: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_threshold(self) -> _CountedRule:
        if self.mostly is not None and self.max_failures is not None:
            raise ValueError("give either 'mostly' or 'max_failures', not both")
        return self

    def threshold_text(self) -> str:
        """How the rule's threshold reads in a report."""
        if self.max_failures is not None:
            return f"max_failures={self.max_failures}"
        if self.mostly is not None:
            return f"mostly={self.mostly:g}"
        return "no failing rows"
