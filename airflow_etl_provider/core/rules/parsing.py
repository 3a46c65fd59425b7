"""Parsing rules (lists, mappings, common-sql forms, YAML/JSON files) into models, with errors in the
user's words; naming; checking rules against the data's columns."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.rules.base import (
    ACTIONS,
    COUNTED_TYPES,
    RULE_TYPES,
    SEVERITIES,
    _RuleBase,
)
from airflow_etl_provider.core.rules.common_sql import _from_checks, _from_column_mapping
from airflow_etl_provider.core.rules.condition import CONDITION_KEYS
from airflow_etl_provider.core.rules.models import _MODELS, Rule


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
        raw = [str(x) for x in error["loc"]]
        key = raw[raw.index("condition") + 1] if len(raw) > raw.index("condition") + 1 else ""
        where = f"condition.{key}" if key else where  # the key itself, whatever characters it has
        return where, f"unknown condition key; allowed: {', '.join(CONDITION_KEYS)}"
    if kind == "extra_forbidden":
        if loc and loc[0] in ("mostly", "max_failures"):
            return where, (
                f"applies only to rules that count failing rows ({', '.join(sorted(COUNTED_TYPES))}); "
                f"remove it from this {model.model_fields['type'].default!r} rule"
            )
        allowed = sorted(
            {*model.model_fields, *(("column",) if model.column_param != "none" else ())} - {"type"}
        )
        return (
            where,
            f"unknown key for a {model.model_fields['type'].default!r} rule; allowed: {', '.join(allowed)}",
        )
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


#: Every key some rule takes (``column`` is the one-column spelling of ``columns``).
_RULE_KEYS = frozenset({"column", *(f for model in _MODELS.values() for f in model.model_fields)})


def _parse_entry(data: Any, path: str) -> Rule:
    """:func:`_parse_one`, with errors about a condition given inline (``{"type": "sql", ..., "equal_to": 0}``,
    or a common-sql ``column_mapping`` check) naming the key where the user wrote it, not ``condition``."""
    try:
        return _parse_one(data, path)
    except ConfigError as exc:
        inline = path.startswith("column_mapping.") or (
            isinstance(data, Mapping) and "condition" not in data and any(k in data for k in CONDITION_KEYS)
        )
        head, sep, tail = exc.path.rpartition(".condition")
        if not inline or not sep or (tail and not tail.startswith(".")):
            raise
        raise ConfigError(head + tail, str(exc)[len(exc.path) + 2 :]) from None


def _parse_one(data: Any, path: str) -> Rule:
    if isinstance(data, _RuleBase):
        return data  # type: ignore[return-value]
    if not isinstance(data, Mapping):
        raise ConfigError(path, "a rule must be a mapping with a 'type'", value=data)
    name = data.get("name")
    where = _where(path, name)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{path}.name", "must be a non-empty string", value=name)
    rule_type = data.get("type")
    model = _MODELS.get(rule_type) if isinstance(rule_type, str) else None
    if model is None:
        problem = "is required" if "type" not in data else "unknown rule type"
        unknown = sorted(str(k) for k in data if k not in _RULE_KEYS)
        if unknown:  # a misspelt key is named, even when the type is what is missing
            problem += f" (unknown key(s) given: {', '.join(map(repr, unknown))})"
        if "type" in data:
            raise ConfigError(f"{where}.type", problem, value=rule_type, allowed=RULE_TYPES)
        raise ConfigError(f"{where}.type", problem, allowed=RULE_TYPES)
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

    ``accept_none`` (with ``column_mapping``) is common-sql ``SQLColumnCheckOperator``'s parameter of that
    name: ``True`` (the default, as there) compares a NULL metric (the ``min`` of an all-NULL column) as
    0, ``False`` fails it.

    Every rule gets a unique name: user-given names must be unique; generated names
    (``not_null(email)``) get ``#2``, ``#3`` when they repeat.

    :param obj: the rules.
    :raises ConfigError: naming the rule (index and name), the field, and the fix.
    """
    if isinstance(obj, str | os.PathLike):
        obj = _load_file(Path(obj))
    entries: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        keys = ["rules", "column_mapping", "checks", "accept_none"]
        unknown = sorted(str(k) for k in obj if k not in keys)
        if unknown:
            raise ConfigError(unknown[0] or repr(unknown[0]), "unknown key", allowed=keys)
        rules = obj.get("rules")
        rules = [] if rules is None else rules
        if not isinstance(rules, list | tuple):
            raise ConfigError("rules", "must be a list of rules", value=rules)
        entries += [(f"rules[{i}]", rule) for i, rule in enumerate(rules)]
        accept_none = obj.get("accept_none", True)
        if not isinstance(accept_none, bool):
            raise ConfigError("accept_none", "must be true or false", value=accept_none)
        if "accept_none" in obj and obj.get("column_mapping") is None:
            raise ConfigError(
                "accept_none",
                "applies to the checks of 'column_mapping' (as common-sql's SQLColumnCheckOperator "
                "accept_none): give a column_mapping, or remove it",
            )
        if obj.get("column_mapping") is not None:
            entries += _from_column_mapping(obj["column_mapping"], "column_mapping", accept_none=accept_none)
        if obj.get("checks") is not None:
            entries += _from_checks(obj["checks"], "checks")
    elif isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        entries = [(f"rules[{i}]", rule) for i, rule in enumerate(obj)]
    elif obj is None:
        entries = []
    else:
        raise ConfigError(
            "rules", "must be a list of rules, a mapping with 'rules', or a file path", value=obj
        )
    parsed = [(path, _parse_entry(data, path)) for path, data in entries]
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
