"""common-sql's ``column_mapping`` and table ``checks``, translated into rule mappings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.rules.base import COLUMN_MAPPING_CHECKS
from airflow_etl_provider.core.rules.sql_text import _strip_literals


def _from_column_mapping(mapping: Any, path: str, *, accept_none: bool = True) -> list[tuple[str, Any]]:
    """common-sql ``column_mapping`` -> (path, rule dict) pairs.

    :param accept_none: as common-sql's ``SQLColumnCheckOperator(accept_none=...)`` (default ``True``
        there too): a NULL metric compares as 0; ``False``: it fails.
    """
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
                        "accept_none": accept_none,
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
            raise ConfigError(
                f"{where}.partition_clause", "is not supported: filter the DataFrame before the check"
            )
        if ";" in _strip_literals(statement) or not statement.strip():
            raise ConfigError(
                f"{where}.check_statement", "must be one boolean SQL expression", value=statement
            )
        query = (
            "SELECT MIN(check_result) FROM "
            f"(SELECT CASE WHEN {statement} THEN 1 ELSE 0 END AS check_result FROM data) AS sq"
        )
        out.append((where, {"type": "sql", "name": str(name), "query": query, "equal_to": 1, **check}))
    return out
