"""Data-quality rules: definitions, parsing, validation and the pure pass / warn / fail logic.

The rule format is a contract shared by the ``DataQualityOperator`` (issue #5), its YAML/JSON files and
the Spark engine (:mod:`airflow_etl_provider.hooks.quality`). A rule is a mapping::

    {"name": "email_present",          # optional; generated when missing, e.g. "not_null(email)"
     "type": "not_null",                # see RULE_TYPES
     "column": "email",                 # or "columns": ["a", "b"]
     "mostly": 0.99,                    # or "max_failures": 10 (row-level rules and unique only)
     "severity": "error",               # "error" (default) | "warn"
     "action": "fail"}                  # "fail" | "warn" | "quarantine"; default from severity

Two kinds of rules:

* **counted** rules count failing rows and take a threshold (``mostly`` or ``max_failures``; by default
  a rule passes only with no failing row). The row-level ones (:data:`ROW_LEVEL_TYPES`) are a boolean per
  row; ``unique`` counts the rows whose key occurs more than once.
* **dataset** rules look at the whole dataset (``row_count``, ``freshness``, ``schema``, ``sql``,
  ``row_count_change``, ``column_metric``) and report an observed value instead of failing rows.

NULL semantics: ``not_null`` fails on NULL; every other row-level rule passes on NULL (a value that is
absent is ``not_null``'s business), and ``expression`` treats a NULL result as a pass, like a SQL
``CHECK`` constraint. ``unique`` ignores rows whose key has a NULL part (SQL ``UNIQUE`` semantics).

This module is pure: no Airflow, no PySpark; the engine turns rules into Spark expressions.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import validate_identifier

__all__ = [
    "COUNTED_TYPES",
    "DATASET_TYPES",
    "ROW_LEVEL_TYPES",
    "RULE_TYPES",
    "AllowedValuesRule",
    "ColumnMetricRule",
    "Condition",
    "ExpressionRule",
    "FormatRule",
    "FreshnessRule",
    "LengthRule",
    "NotNullRule",
    "QualityReport",
    "RangeRule",
    "RegexRule",
    "RowCountChangeRule",
    "RowCountRule",
    "Rule",
    "RuleResult",
    "SchemaRule",
    "SqlRule",
    "UniqueRule",
    "column_metric_result",
    "evaluate_threshold",
    "freshness_result",
    "normalize_type",
    "parse_duration",
    "parse_rules",
    "row_count_change_result",
    "row_count_result",
    "schema_result",
    "sql_result",
    "to_jsonable",
    "validate_against_columns",
    "validate_select_query",
]

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

METRICS = ("null_count", "distinct_count", "duplicate_count", "min", "max")
#: common-sql ``column_mapping`` check names -> the metric of a ``column_metric`` rule.
COLUMN_MAPPING_CHECKS = {
    "null_check": "null_count",
    "distinct_check": "distinct_count",
    "unique_check": "duplicate_count",
    "min": "min",
    "max": "max",
}

_NO_HINT = ""


# ------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Condition(_Model):
    """A comparison of one observed value, as in Airflow common-sql's column and value checks.

    ``tolerance`` widens the bounds exactly like common-sql: ``geq_to``/``greater_than`` by
    ``x (1 - tolerance)``, ``leq_to``/``less_than`` by ``x (1 + tolerance)``, ``equal_to`` to the range
    ``[v (1 - tolerance), v (1 + tolerance)]``. Several bounds must all hold.
    """

    equal_to: float | None = None
    greater_than: float | None = None
    geq_to: float | None = None
    less_than: float | None = None
    leq_to: float | None = None
    tolerance: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Condition:
        if all(v is None for v in (self.equal_to, self.greater_than, self.geq_to, self.less_than, self.leq_to)):
            raise ValueError("give at least one of equal_to, greater_than, geq_to, less_than, leq_to")
        if self.greater_than is not None and self.geq_to is not None:
            raise ValueError("give greater_than or geq_to, not both")
        if self.less_than is not None and self.leq_to is not None:
            raise ValueError("give less_than or leq_to, not both")
        low = self.greater_than if self.greater_than is not None else self.geq_to
        high = self.less_than if self.less_than is not None else self.leq_to
        if low is not None and high is not None and low > high:
            raise ValueError(f"the lower bound ({low:g}) is above the upper bound ({high:g})")
        return self

    def matches(self, value: Any) -> bool:
        """Whether ``value`` (a number; ``None`` never matches) satisfies every bound."""
        if value is None:
            return False
        try:
            x = float(value)
        except (TypeError, ValueError):
            return False
        if math.isnan(x):
            return False
        tol = self.tolerance
        ok = True
        if self.geq_to is not None:
            ok &= x >= (self.geq_to * (1 - tol) if tol is not None else self.geq_to)
        if self.greater_than is not None:
            ok &= x > (self.greater_than * (1 - tol) if tol is not None else self.greater_than)
        if self.leq_to is not None:
            ok &= x <= (self.leq_to * (1 + tol) if tol is not None else self.leq_to)
        if self.less_than is not None:
            ok &= x < (self.less_than * (1 + tol) if tol is not None else self.less_than)
        if self.equal_to is not None:
            if tol is not None:
                ok &= self.equal_to * (1 - tol) <= x <= self.equal_to * (1 + tol)
            else:
                ok &= x == self.equal_to
        return ok

    def describe(self) -> str:
        """E.g. ``>= 0 and <= 100 (tolerance 0.1)``."""
        parts = [
            f"{op} {value:g}"
            for op, value in (
                ("==", self.equal_to),
                (">", self.greater_than),
                (">=", self.geq_to),
                ("<", self.less_than),
                ("<=", self.leq_to),
            )
            if value is not None
        ]
        text = " and ".join(parts)
        return f"{text} (tolerance {self.tolerance:g})" if self.tolerance is not None else text


CONDITION_KEYS = tuple(Condition.model_fields)


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
        if (
            isinstance(self.min, int | float)
            and isinstance(self.max, int | float)
            and self.min > self.max
        ):
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
            raise ValueError("must be a non-empty Spark SQL boolean expression, e.g. 'shipped_at >= ordered_at'")
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


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """Seconds from ``"24h"``, ``"2d"``, ``"1h30m"``, ``"90s"``, ``"500ms"``, ``"1w"`` or a number of seconds.

    :raises ValueError: for anything else, or a duration that is not positive.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration like '24h', '2d', '30m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_DURATION.pattern})+", text, re.IGNORECASE):
            seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _DURATION.findall(text))
        else:
            raise ValueError("must be a duration like '24h', '2d', '1h30m', '90s' or a number of seconds")
    else:
        raise ValueError("must be a duration like '24h', '2d', '30m' or a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a positive duration")
    return seconds


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


_TYPE_ALIASES = {
    "int": "int",
    "integer": "int",
    "int32": "int",
    "long": "bigint",
    "bigint": "bigint",
    "int64": "bigint",
    "short": "smallint",
    "smallint": "smallint",
    "byte": "tinyint",
    "tinyint": "tinyint",
    "str": "string",
    "string": "string",
    "text": "string",
    "varchar": "string",
    "bool": "boolean",
    "boolean": "boolean",
    "float": "float",
    "real": "float",
    "float32": "float",
    "double": "double",
    "float64": "double",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_ltz": "timestamp",
    "timestamp_ntz": "timestamp_ntz",
    "binary": "binary",
    "decimal": "decimal",
    "numeric": "decimal",
}


def normalize_type(type_name: str) -> str:
    """A Spark type name in canonical form: ``integer`` -> ``int``, ``long`` -> ``bigint``,
    ``decimal(10, 2)`` -> ``decimal(10,2)``, ``varchar(20)`` -> ``string``; others lower-cased."""
    text = re.sub(r"\s+", "", type_name.strip().lower())
    base, _, rest = text.partition("(")
    if base in ("varchar", "char"):
        return "string"
    if base in ("decimal", "numeric"):
        return f"decimal({rest}" if rest else "decimal"
    return _TYPE_ALIASES.get(text, text)


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


def _strip_literals(sql: str) -> str:
    """``sql`` with comments removed and string literals / quoted identifiers blanked."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\" and ch != "`":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            out.append(" '' ")
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_FORBIDDEN_SQL = re.compile(
    r"\b(insert|update|delete|merge|create|drop|alter|truncate|grant|revoke|msck|refresh|cache|uncache"
    r"|load|overwrite|directory)\b",
    re.IGNORECASE,
)


def validate_select_query(query: str) -> str:
    """Return ``query`` if it is one ``SELECT`` (or ``WITH ... SELECT``) statement, else raise ``ValueError``.

    Comments and string literals are ignored; a trailing ``;`` is allowed. DDL, DML and commands
    (``INSERT``, ``UPDATE``, ``DELETE``, ``MERGE``, ``CREATE``, ``DROP``, ``ALTER``, ``TRUNCATE``, ``CACHE``
    ...) are refused anywhere in the text, so a column named like one of them must be back-quoted.
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("must be a non-empty SELECT query")
    code = _strip_literals(query).strip()
    code = code[:-1].rstrip() if code.endswith(";") else code
    if ";" in code:
        raise ValueError("must be a single statement: remove the ';' between statements")
    first = re.match(r"[\s(]*([A-Za-z]+)", code)
    if first is None or first.group(1).lower() not in ("select", "with"):
        raise ValueError("must be a single SELECT or WITH ... SELECT query (no DDL, DML or commands)")
    forbidden = _FORBIDDEN_SQL.search(code)
    if forbidden:
        raise ValueError(
            f"must only read data: {forbidden.group(1).upper()} is not allowed in a quality query "
            "(back-quote a column with that name)"
        )
    return query


def _condition_keys(data: Any) -> Any:
    """Move inline condition keys (``{"equal_to": 0, ...}``) into ``condition``."""
    if not isinstance(data, Mapping):
        return data
    inline = {k: data[k] for k in CONDITION_KEYS if k in data}
    if not inline:
        return data
    if "condition" in data:
        raise ValueError(f"give the condition inline ({', '.join(inline)}) or as 'condition', not both")
    rest = {k: v for k, v in data.items() if k not in inline}
    return {**rest, "condition": inline}


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

    ``metric``: ``null_count``, ``distinct_count``, ``duplicate_count`` (non-NULL values minus distinct
    ones), ``min`` or ``max``. A NULL metric (``min`` of an all-NULL column) fails unless ``accept_none``.
    """

    column_param: ClassVar[Literal["none", "optional", "required", "one"]] = "one"
    type: Literal["column_metric"] = "column_metric"
    columns: Annotated[tuple[str, ...], Field(min_length=1, max_length=1)]
    metric: Literal["null_count", "distinct_count", "duplicate_count", "min", "max"]
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


def _where(path: str, name: Any) -> str:
    return f"{path} ({name!r})" if isinstance(name, str) and name else path


_FIXES = {
    "mostly": "give a fraction between 0.0 and 1.0 (0.95 = at least 95% of rows must pass)",
    "max_failures": "give a whole number of failing rows allowed, >= 0",
    "columns": "give 'column': '<name>' or 'columns': ['<a>', '<b>']",
}


def _problem(error: Mapping[str, Any], model: type[_RuleBase]) -> tuple[str, str]:
    """(field, problem) of one pydantic error, in the user's words."""
    loc = [str(x) for x in error["loc"] if not isinstance(x, int)]
    # Union members and function-validator frames show up in loc; keep the field names only.
    if loc and loc[0] in model.model_fields:
        loc = [loc[0], *(x for x in loc[1:2] if loc[0] == "condition" and "[" not in x)]
    else:
        loc = loc[:1]
    where = ".".join(loc)
    ctx = error.get("ctx", {})
    kind = error["type"]
    given = "" if kind == "missing" else f" (got {error.get('input')!r})"
    if kind == "missing":
        if loc and loc[0] == "columns":
            return "column", f"is required: {_FIXES['columns']}"
        return where, f"is required for a {model.model_fields['type'].default!r} rule"
    if kind == "extra_forbidden" and loc[:1] == ["condition"]:
        return where, f"unknown condition key; allowed: {', '.join(CONDITION_KEYS)}"
    if kind == "extra_forbidden":
        if loc and loc[0] in ("mostly", "max_failures"):
            return where, (
                f"applies only to rules that count failing rows ({', '.join(sorted(COUNTED_TYPES))}); "
                f"remove it from this {model.model_fields['type'].default!r} rule"
            )
        allowed = sorted({*model.model_fields, *(("column",) if model.column_param != "none" else ())} - {"type"})
        return where, f"unknown key for a {model.model_fields['type'].default!r} rule; allowed: {', '.join(allowed)}"
    if kind == "literal_error":
        return where, f"must be one of {ctx.get('expected')}{given}"
    if kind in ("greater_than_equal", "less_than_equal") and loc and loc[0] in _FIXES:
        return where, f"is out of range{given}: {_FIXES[loc[0]]}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = next(iter(ctx.items()), ("", ""))
        op = {"ge": ">=", "le": "<=", "gt": ">", "lt": "<"}.get(bound[0], bound[0])
        return where, f"must be {op} {bound[1]}{given}"
    if kind == "value_error":
        reason = str(ctx.get("error", error["msg"]))
        return where, (reason if not where or not given else f"{reason}{given}")
    if kind == "too_short":
        return where, f"must not be empty{given}"
    if kind == "too_long":
        return where, f"has too many items{given}"
    message: str = error["msg"]
    return where, f"{message[:1].lower()}{message[1:]}{given}"


def _parse_one(data: Any, path: str) -> Rule:
    if isinstance(data, _RuleBase):
        return data  # type: ignore[return-value]
    if not isinstance(data, Mapping):
        raise ConfigError(path, "a rule must be a mapping with a 'type'", value=data)
    name = data.get("name")
    where = _where(path, name)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{path}.name", "must be a non-empty string", value=name)
    if "type" not in data:
        raise ConfigError(f"{where}.type", "is required", allowed=RULE_TYPES)
    rule_type = data["type"]
    model = _MODELS.get(rule_type) if isinstance(rule_type, str) else None
    if model is None:
        raise ConfigError(f"{where}.type", "unknown rule type", value=rule_type, allowed=RULE_TYPES)
    for key, allowed in (("severity", SEVERITIES), ("action", ACTIONS)):
        if key in data and data[key] not in allowed and not (key == "action" and data[key] is None):
            raise ConfigError(f"{where}.{key}", f"unknown {key}", value=data[key], allowed=allowed)
    try:
        return model.model_validate(dict(data))  # type: ignore[return-value]
    except ValidationError as exc:
        problems = [_problem(e, model) for e in exc.errors(include_url=False)]
        (field_name, first), *others = problems
        text = "; ".join([first, *(f"{f}: {p}" for f, p in others)])
        raise ConfigError(f"{where}.{field_name}" if field_name else where, text) from None
    except ValueError as exc:  # raised by a "before" validator outside pydantic's wrapping
        raise ConfigError(where, str(exc)) from None


def _from_column_mapping(mapping: Any, path: str) -> list[tuple[str, Any]]:
    """common-sql ``column_mapping`` -> (path, rule dict) pairs."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(path, "must be a mapping {column: {check: {condition}}}", value=mapping)
    out: list[tuple[str, Any]] = []
    for column, checks in mapping.items():
        if not isinstance(checks, Mapping):
            raise ConfigError(f"{path}.{column}", "must be a mapping {check: {condition}}", value=checks)
        for check, condition in checks.items():
            where = f"{path}.{column}.{check}"
            if check not in COLUMN_MAPPING_CHECKS:
                raise ConfigError(where, "unknown column check", allowed=list(COLUMN_MAPPING_CHECKS))
            if not isinstance(condition, Mapping):
                raise ConfigError(where, "must be a mapping like {'equal_to': 0}", value=condition)
            condition = dict(condition)
            if "partition_clause" in condition:
                raise ConfigError(
                    f"{where}.partition_clause", "is not supported: filter the DataFrame before the check"
                )
            extra = {k: condition.pop(k) for k in ("severity", "action", "description") if k in condition}
            out.append(
                (
                    where,
                    {
                        "type": "column_metric",
                        "name": f"{check}({column})",
                        "column": column,
                        "metric": COLUMN_MAPPING_CHECKS[check],
                        "condition": condition,
                        "accept_none": True,
                        **extra,
                    },
                )
            )
    return out


def _from_checks(checks: Any, path: str) -> list[tuple[str, Any]]:
    """common-sql table ``checks`` -> ``sql`` rule dicts with common-sql's semantics: the check passes
    when ``check_statement`` holds for every row (or for the aggregate, e.g. ``COUNT(*) > 0``)."""
    if not isinstance(checks, Mapping):
        raise ConfigError(path, "must be a mapping {name: {'check_statement': ...}}", value=checks)
    out: list[tuple[str, Any]] = []
    for name, check in checks.items():
        where = f"{path}.{name}"
        if not isinstance(check, Mapping) or not isinstance(check.get("check_statement"), str):
            raise ConfigError(where, "must be a mapping with a 'check_statement' string", value=check)
        check = dict(check)
        statement = check.pop("check_statement")
        if "partition_clause" in check:
            raise ConfigError(f"{where}.partition_clause", "is not supported: filter the DataFrame before the check")
        if ";" in _strip_literals(statement) or not statement.strip():
            raise ConfigError(f"{where}.check_statement", "must be one boolean SQL expression", value=statement)
        query = (
            "SELECT MIN(check_result) FROM "
            f"(SELECT CASE WHEN {statement} THEN 1 ELSE 0 END AS check_result FROM data) AS sq"
        )
        out.append((where, {"type": "sql", "name": str(name), "query": query, "equal_to": 1, **check}))
    return out


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError("rules", "no such rules file", value=str(path))
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError("rules", f"cannot parse {path}: {exc}") from None


def parse_rules(obj: Any) -> list[Rule]:
    """Parse rules from a list of rule mappings, a mapping with ``rules`` / ``column_mapping`` /
    ``checks`` (common-sql forms, translated into rules), or a YAML/JSON file path.

    Every rule gets a unique name: user-given names must be unique; generated names
    (``not_null(email)``) get ``#2``, ``#3`` when they repeat.

    :param obj: the rules.
    :raises ConfigError: naming the rule (index and name), the field, and the fix.
    """
    if isinstance(obj, str | os.PathLike):
        obj = _load_file(Path(obj))
    entries: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        unknown = sorted(set(obj) - {"rules", "column_mapping", "checks"})
        if unknown:
            raise ConfigError(unknown[0], "unknown key", allowed=["rules", "column_mapping", "checks"])
        rules = obj.get("rules") or []
        if not isinstance(rules, list | tuple):
            raise ConfigError("rules", "must be a list of rules", value=rules)
        entries += [(f"rules[{i}]", rule) for i, rule in enumerate(rules)]
        if obj.get("column_mapping") is not None:
            entries += _from_column_mapping(obj["column_mapping"], "column_mapping")
        if obj.get("checks") is not None:
            entries += _from_checks(obj["checks"], "checks")
    elif isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        entries = [(f"rules[{i}]", rule) for i, rule in enumerate(obj)]
    elif obj is None:
        entries = []
    else:
        raise ConfigError("rules", "must be a list of rules, a mapping with 'rules', or a file path", value=obj)
    parsed = [(path, _parse_one(data, path)) for path, data in entries]
    return _name_rules(parsed)


def _name_rules(parsed: Sequence[tuple[str, Rule]]) -> list[Rule]:
    seen: dict[str, str] = {}
    for path, rule in parsed:
        if rule.name is not None:
            if rule.name in seen:
                raise ConfigError(
                    f"{path}.name",
                    f"duplicate rule name {rule.name!r} (also {seen[rule.name]}): rule names must be unique",
                )
            seen[rule.name] = path
    out: list[Rule] = []
    for path, rule in parsed:
        if rule.name is None:
            base = rule.default_name()
            name, n = base, 1
            while name in seen:
                n += 1
                name = f"{base}#{n}"
            seen[name] = path
            rule = rule.model_copy(update={"name": name})
        out.append(rule)
    return out


def validate_against_columns(rules: Iterable[Rule], columns: Iterable[str]) -> None:
    """Raise if any rule references a column the data does not have.

    Top-level names compare exactly; ``a.b`` is accepted when ``a`` exists (a nested field).
    ``schema`` rules are not checked (reporting missing columns is their job), nor ``sql`` queries and
    expressions (only an expression rule's optional ``columns``).

    :raises ConfigError: listing every offending rule and column, with the data's columns.
    """
    available = list(columns)
    present = set(available)
    lowered = {c.lower(): c for c in available}
    problems = []
    for rule in rules:
        for column in rule.referenced_columns:
            if column in present or column.split(".")[0] in present:
                continue
            hint = f" (did you mean {lowered[column.lower()]!r}?)" if column.lower() in lowered else ""
            problems.append(f"rule {rule.rule_name!r} references column {column!r}{hint}")
    if problems:
        raise ConfigError(
            "rules",
            "columns not in the data: " + "; ".join(problems) + ". Fix the rules or the data",
            allowed=available,
        )


# ------------------------------------------------------------------------------------------ results


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
        for part in (f">= {rule.min}" if rule.min is not None else "", f"<= {rule.max}" if rule.max is not None else "")
        if part
    )
    return _result(
        rule, passed, f"row_count {bounds}", failing_rows=None, failure_ratio=None, observed=count,
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
            rule, False, threshold, failing_rows=None, failure_ratio=None, observed=None,
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
        parts.append("wrong type: " + ", ".join(f"{c} is {v['actual']}, expected {v['expected']}" for c, v in wrong.items()))
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
        rule, passed, threshold, failing_rows=None, failure_ratio=None, observed=value,
        message=f"{what} = {value!r}",
    )


def sql_result(rule: SqlRule, value: Any, rows: int = 1) -> RuleResult:
    """Pass / fail of a ``sql`` rule whose query returned ``value`` (first column of the first row).

    :param rows: rows the query returned (0: the value is missing; more than 1: the rule fails).
    """
    if rows != 1:
        threshold = rule.condition.describe() if rule.condition else "truthy"
        return _result(
            rule, rows == 0 and rule.accept_none and (rule.condition is None or rule.condition.matches(0)),
            threshold, failing_rows=None, failure_ratio=None, observed=None,
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
            rule, True, threshold, failing_rows=None, failure_ratio=None, observed=count,
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
        rule, change <= rule.max_change, threshold, failing_rows=None, failure_ratio=None,
        observed={"row_count": count, "baseline": baseline, "change": change if math.isfinite(change) else None},
        message=f"{count} rows vs baseline {baseline:g} ({'inf' if math.isinf(change) else f'{change:.2%}'} change)",
    )


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


def to_jsonable(value: Any) -> Any:
    """``value`` converted for ``json.dumps``: datetimes/dates/times ISO 8601, ``Decimal`` and ``UUID`` as
    strings, ``timedelta`` in seconds, bytes as hex, non-finite floats as strings, rows (``asDict``),
    mappings and sequences recursively; anything else unknown as ``str``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    as_dict = getattr(value, "asDict", None)
    if callable(as_dict):
        return to_jsonable(as_dict(recursive=True))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return str(value)
