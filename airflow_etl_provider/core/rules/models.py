"""The rule models, one per rule type, and the registry from type name to model."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import validate_identifier
from airflow_etl_provider.core.rules.base import (
    DEFAULT_DATETIME_PATTERNS,
    RULE_TYPES,
    _CountedRule,
    _non_empty_columns,
    _RuleBase,
)
from airflow_etl_provider.core.rules.condition import Condition, _condition_keys
from airflow_etl_provider.core.rules.duration import parse_duration
from airflow_etl_provider.core.rules.sql_text import _strip_literals, validate_select_query


class _ColumnsRule(_CountedRule):
    column_param: ClassVar[Literal["none", "optional", "required", "one"]] = "required"
    columns: Annotated[tuple[str, ...], Field(min_length=1)]

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, columns: tuple[str, ...]) -> tuple[str, ...]:
        return _non_empty_columns(columns)


class NotNullRule(_ColumnsRule):
    """A row fails when any of ``columns`` is NULL."""

    type: Literal["not_null"] = "not_null"


class UniqueRule(_ColumnsRule):
    """``columns`` (one or more) form a key; every row whose key occurs more than once fails.

    ``failing_rows`` counts the rows in duplicate groups (a key seen 3 times gives 3 failing rows).
    Rows with a NULL in any key column are ignored, as by a SQL ``UNIQUE`` constraint.
    """

    type: Literal["unique"] = "unique"


Scalar = int | float | str


class RangeRule(_ColumnsRule):
    """A row fails when a non-NULL value is outside ``[min, max]`` (bounds inclusive by default).

    Bounds are numbers, or ISO strings for date/timestamp columns.
    """

    type: Literal["range"] = "range"
    min: Scalar | None = None
    max: Scalar | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if isinstance(self.min, int | float) and isinstance(self.max, int | float) and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is above 'max' ({self.max})")
        return self


class RegexRule(_ColumnsRule):
    """A row fails when a non-NULL value does not contain a match of ``pattern`` (Java regex, found
    anywhere like Spark's ``rlike`` and PostgreSQL's ``~``: anchor it with ``^...$`` for a full match)."""

    type: Literal["regex"] = "regex"
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        if not pattern:
            raise ValueError("must be a non-empty regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc}); fix the pattern") from None
        return pattern


class FormatRule(_ColumnsRule):
    """A row fails when a non-NULL value is not in ``format``.

    ``email`` / ``uuid`` / ``numeric`` are regexes (:data:`FORMAT_REGEXES`); ``date`` / ``timestamp``
    parse with the Spark datetime ``pattern`` (default ``yyyy-MM-dd`` / ``yyyy-MM-dd HH:mm:ss``).
    """

    type: Literal["format"] = "format"
    format: Literal["email", "uuid", "date", "timestamp", "numeric"]
    pattern: str | None = None

    @model_validator(mode="after")
    def _pattern(self) -> FormatRule:
        if self.pattern is not None and self.format not in DEFAULT_DATETIME_PATTERNS:
            raise ValueError(f"'pattern' applies only to the date and timestamp formats, not {self.format!r}")
        if self.pattern is not None and not self.pattern.strip():
            raise ValueError("'pattern' must be a non-empty Spark datetime pattern, e.g. 'yyyy-MM-dd'")
        return self

    @property
    def datetime_pattern(self) -> str | None:
        """The datetime pattern for ``date``/``timestamp``, else ``None``."""
        if self.format in DEFAULT_DATETIME_PATTERNS:
            return self.pattern or DEFAULT_DATETIME_PATTERNS[self.format]
        return None


class AllowedValuesRule(_ColumnsRule):
    """A row fails when a non-NULL value is not one of ``values``."""

    type: Literal["allowed_values"] = "allowed_values"
    values: Annotated[tuple[bool | int | float | str, ...], Field(min_length=1)]

    @field_validator("values", mode="before")
    @classmethod
    def _tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class LengthRule(_ColumnsRule):
    """A row fails when a non-NULL value's length (characters; elements of an array) is outside
    ``[min, max]`` (inclusive)."""

    type: Literal["length"] = "length"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> LengthRule:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is above 'max' ({self.max})")
        return self


class ExpressionRule(_CountedRule):
    """A row fails when the Spark SQL boolean ``expression`` is false; NULL passes (like SQL ``CHECK``).

    ``columns`` (optional) names the columns it reads: checked against the data and shown in samples.
    """

    column_param: ClassVar[Literal["none", "optional", "required", "one"]] = "optional"
    type: Literal["expression"] = "expression"
    expression: str
    columns: tuple[str, ...] = ()

    @field_validator("expression")
    @classmethod
    def _expression(cls, expression: str) -> str:
        if not expression.strip():
            raise ValueError(
                "must be a non-empty Spark SQL boolean expression, e.g. 'shipped_at >= ordered_at'"
            )
        if ";" in _strip_literals(expression):
            raise ValueError("must be one expression, without ';'")
        return expression

    def default_name(self) -> str:
        text = " ".join(self.expression.split())
        return f"expression({text if len(text) <= 60 else text[:57] + '...'})"


class _DatasetRule(_RuleBase):
    """A rule about the whole dataset: no failing rows, an observed value."""


class RowCountRule(_DatasetRule):
    """The number of rows must be within ``[min, max]`` (inclusive)."""

    type: Literal["row_count"] = "row_count"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCountRule:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is above 'max' ({self.max})")
        return self


class FreshnessRule(_DatasetRule):
    """The newest value of the timestamp ``column`` must be at most ``max_age`` older than the reference
    time (the run's logical date). ``max_age``: ``"24h"``, ``"2d"``, ``"1h30m"`` or seconds."""

    column_param: ClassVar[Literal["none", "optional", "required", "one"]] = "one"
    type: Literal["freshness"] = "freshness"
    columns: Annotated[tuple[str, ...], Field(min_length=1, max_length=1)]
    max_age: float

    @field_validator("max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @property
    def column(self) -> str:
        """The timestamp column."""
        return self.columns[0]


class SchemaRule(_DatasetRule):
    """The data must have ``columns`` ({name: Spark type}); extra columns fail unless ``allow_extra``.

    Types compare after :func:`normalize_type`; ``decimal`` without precision matches any decimal.
    """

    type: Literal["schema"] = "schema"
    columns: Annotated[dict[str, str], Field(min_length=1)]
    allow_extra: bool = True

    @property
    def referenced_columns(self) -> tuple[str, ...]:
        return ()


class SqlRule(_DatasetRule):
    """``query`` (one SELECT over the data, registered as the temporary view ``view``) returns one value,
    compared with ``condition`` (``{"equal_to": 0}``, ``greater_than``, ``geq_to``, ``less_than``,
    ``leq_to``, ``tolerance``; also accepted inline). Without a condition the value must be truthy.
    A NULL or missing value fails unless ``accept_none`` (then it counts as 0, like common-sql)."""

    type: Literal["sql"] = "sql"
    query: str
    view: str = "data"
    condition: Condition | None = None
    accept_none: bool = False

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        return _condition_keys(data)

    @field_validator("query")
    @classmethod
    def _select_only(cls, query: str) -> str:
        return validate_select_query(query)

    @field_validator("view")
    @classmethod
    def _view(cls, view: str) -> str:
        try:
            return validate_identifier(view, "view")
        except ConfigError as exc:
            raise ValueError(str(exc).partition(": ")[2]) from None


class ColumnMetricRule(_DatasetRule):
    """An aggregate of one column compared with ``condition`` (common-sql ``column_mapping`` checks).

    ``metric``: ``null_count`` (0 on empty data), ``null_sum`` (the same as SQL's ``SUM(CASE WHEN col IS NULL
    THEN 1 ELSE 0 END)``, NULL on empty data: common-sql's ``null_check``), ``distinct_count``,
    ``duplicate_count`` (non-NULL values minus distinct ones), ``min`` or ``max``. A NULL metric (``min`` of an
    all-NULL column) fails unless ``accept_none``.
    """

    column_param: ClassVar[Literal["none", "optional", "required", "one"]] = "one"
    type: Literal["column_metric"] = "column_metric"
    columns: Annotated[tuple[str, ...], Field(min_length=1, max_length=1)]
    metric: Literal["null_count", "null_sum", "distinct_count", "duplicate_count", "min", "max"]
    condition: Condition
    accept_none: bool = False

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        return _condition_keys(data)

    @property
    def column(self) -> str:
        """The column."""
        return self.columns[0]

    def default_name(self) -> str:
        return f"{self.metric}({self.column})"


class RowCountChangeRule(_DatasetRule):
    """The row count may differ from the baseline of ``history`` (previous counts, oldest first) by at
    most ``max_change`` (relative: 0.2 = 20 %). ``baseline``: the ``last`` count (default), the ``mean``
    or the ``median``. Without history the rule passes. History may also be passed at evaluation."""

    type: Literal["row_count_change"] = "row_count_change"
    max_change: float = Field(ge=0)
    history: tuple[int, ...] = ()
    baseline: Literal["last", "mean", "median"] = "last"

    @field_validator("history", mode="before")
    @classmethod
    def _tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


Rule = (
    NotNullRule
    | UniqueRule
    | RangeRule
    | RegexRule
    | FormatRule
    | AllowedValuesRule
    | LengthRule
    | ExpressionRule
    | RowCountRule
    | FreshnessRule
    | SchemaRule
    | SqlRule
    | ColumnMetricRule
    | RowCountChangeRule
)

_MODELS: dict[str, type[_RuleBase]] = {
    model.model_fields["type"].default: model
    for model in (
        NotNullRule,
        UniqueRule,
        RangeRule,
        RegexRule,
        FormatRule,
        AllowedValuesRule,
        LengthRule,
        ExpressionRule,
        RowCountRule,
        FreshnessRule,
        SchemaRule,
        SqlRule,
        ColumnMetricRule,
        RowCountChangeRule,
    )
}
assert set(_MODELS) == set(RULE_TYPES)


# ------------------------------------------------------------------------------------------ parsing
