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

from airflow_etl_provider.core.rules.base import (
    ACTIONS,
    COLUMN_MAPPING_CHECKS,
    COUNTED_TYPES,
    DATASET_TYPES,
    DEFAULT_DATETIME_PATTERNS,
    FORMAT_REGEXES,
    FORMATS,
    METRICS,
    ROW_LEVEL_TYPES,
    RULE_TYPES,
    SEVERITIES,
    Action,
    Severity,
    Status,
)
from airflow_etl_provider.core.rules.condition import CONDITION_KEYS, Condition
from airflow_etl_provider.core.rules.duration import parse_duration
from airflow_etl_provider.core.rules.jsonable import to_jsonable
from airflow_etl_provider.core.rules.models import (
    AllowedValuesRule,
    ColumnMetricRule,
    ExpressionRule,
    FormatRule,
    FreshnessRule,
    LengthRule,
    NotNullRule,
    RangeRule,
    RegexRule,
    RowCountChangeRule,
    RowCountRule,
    Rule,
    Scalar,
    SchemaRule,
    SqlRule,
    UniqueRule,
)
from airflow_etl_provider.core.rules.parsing import parse_rules, validate_against_columns
from airflow_etl_provider.core.rules.quality_report import QualityReport
from airflow_etl_provider.core.rules.results import (
    RuleResult,
    column_metric_result,
    evaluate_threshold,
    freshness_result,
    row_count_change_result,
    row_count_result,
    schema_result,
    sql_result,
)
from airflow_etl_provider.core.rules.spark_types import normalize_type
from airflow_etl_provider.core.rules.sql_text import validate_select_query

__all__ = [
    "ACTIONS",
    "COLUMN_MAPPING_CHECKS",
    "CONDITION_KEYS",
    "COUNTED_TYPES",
    "DATASET_TYPES",
    "DEFAULT_DATETIME_PATTERNS",
    "FORMATS",
    "FORMAT_REGEXES",
    "METRICS",
    "ROW_LEVEL_TYPES",
    "RULE_TYPES",
    "SEVERITIES",
    "Action",
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
    "Scalar",
    "SchemaRule",
    "Severity",
    "SqlRule",
    "Status",
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
