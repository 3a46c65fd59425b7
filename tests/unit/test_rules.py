"""Data-quality rules (core/rules.py): parsing, naming, validation errors, thresholds and statuses."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.rules import (
    COUNTED_TYPES,
    DATASET_TYPES,
    FORMAT_REGEXES,
    RULE_TYPES,
    ColumnMetricRule,
    Condition,
    ExpressionRule,
    FormatRule,
    FreshnessRule,
    NotNullRule,
    QualityReport,
    RangeRule,
    RowCountChangeRule,
    RowCountRule,
    RuleResult,
    SchemaRule,
    SqlRule,
    UniqueRule,
    column_metric_result,
    evaluate_threshold,
    freshness_result,
    normalize_type,
    parse_duration,
    parse_rules,
    row_count_change_result,
    row_count_result,
    schema_result,
    sql_result,
    to_jsonable,
    validate_against_columns,
    validate_select_query,
)


def one(rule: dict[str, Any]) -> Any:
    (parsed,) = parse_rules([rule])
    return parsed


def error_of(obj: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_rules(obj)
    return str(info.value)


# ------------------------------------------------------------------------------------- every type


VALID: list[dict[str, Any]] = [
    {"type": "not_null", "column": "email"},
    {"type": "not_null", "columns": ["a", "b"]},
    {"type": "unique", "columns": ["a", "b"]},
    {"type": "unique", "column": "id", "mostly": 0.99},
    {"type": "range", "column": "age", "min": 0, "max": 120, "min_inclusive": False},
    {"type": "range", "column": "day", "min": "2024-01-01"},
    {"type": "regex", "column": "code", "pattern": "^[A-Z]{3}$"},
    {"type": "format", "column": "email", "format": "email"},
    {"type": "format", "column": "id", "format": "uuid"},
    {"type": "format", "column": "d", "format": "date", "pattern": "dd/MM/yyyy"},
    {"type": "format", "column": "t", "format": "timestamp"},
    {"type": "format", "column": "n", "format": "numeric"},
    {"type": "allowed_values", "column": "status", "values": ["new", "paid", 3, 1.5, True]},
    {"type": "length", "column": "name", "min": 1, "max": 50},
    {"type": "expression", "expression": "shipped_at >= ordered_at"},
    {"type": "expression", "expression": "a > b", "columns": ["a", "b"]},
    {"type": "row_count", "min": 1},
    {"type": "freshness", "column": "ts", "max_age": "24h"},
    {"type": "schema", "columns": {"id": "int", "email": "string"}, "allow_extra": False},
    {"type": "sql", "query": "SELECT COUNT(*) FROM data WHERE x < 0", "condition": {"equal_to": 0}},
    {"type": "sql", "query": "select max(x) from t", "view": "t", "leq_to": 10, "tolerance": 0.1},
    {"type": "column_metric", "column": "x", "metric": "min", "geq_to": 0},
    {"type": "row_count_change", "max_change": 0.2, "history": [100, 110]},
]


@pytest.mark.parametrize("rule", VALID, ids=lambda r: r["type"])
def test_every_rule_type_parses(rule: dict[str, Any]) -> None:
    parsed = one(rule)
    assert parsed.type == rule["type"]
    assert parsed.name
    assert parsed.severity == "error" and parsed.effective_action == "fail"


def test_rule_types_cover_the_spec() -> None:
    assert set(RULE_TYPES) == {
        "not_null", "unique", "range", "regex", "format", "allowed_values", "length", "row_count", "freshness",
        "schema", "expression", "sql", "row_count_change", "column_metric",
    }
    assert COUNTED_TYPES.isdisjoint(DATASET_TYPES)
    assert {r["type"] for r in VALID} == set(RULE_TYPES)


def test_column_is_shorthand_for_columns() -> None:
    assert one({"type": "not_null", "column": "a"}).columns == ("a",)
    assert one({"type": "not_null", "columns": "a"}).columns == ("a",)
    assert one({"type": "unique", "columns": ["a", "b"]}).columns == ("a", "b")


def test_parsed_models_are_typed_and_frozen() -> None:
    rule = one({"type": "range", "column": "age", "min": 0, "max": 9.5})
    assert isinstance(rule, RangeRule) and rule.min == 0 and rule.max == 9.5
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        rule.min = 3  # type: ignore[misc]


def test_defaults() -> None:
    rule = one({"type": "range", "column": "x", "min": 1})
    assert rule.min_inclusive and rule.max_inclusive and rule.max is None
    assert one({"type": "format", "column": "d", "format": "date"}).datetime_pattern == "yyyy-MM-dd"
    assert one({"type": "format", "column": "d", "format": "timestamp"}).datetime_pattern == "yyyy-MM-dd HH:mm:ss"
    assert one({"type": "format", "column": "d", "format": "email"}).datetime_pattern is None
    assert one({"type": "sql", "query": "select 1"}).view == "data"
    assert one({"type": "schema", "columns": {"a": "int"}}).allow_extra is True


# ------------------------------------------------------------------------------------------ names


def test_generated_names() -> None:
    rules = parse_rules([
        {"type": "not_null", "column": "email"},
        {"type": "unique", "columns": ["a", "b"]},
        {"type": "row_count", "min": 1},
        {"type": "expression", "expression": "a   >=  b"},
        {"type": "column_metric", "column": "x", "metric": "null_count", "equal_to": 0},
        {"type": "freshness", "column": "ts", "max_age": 60},
    ])
    assert [r.name for r in rules] == [
        "not_null(email)", "unique(a,b)", "row_count", "expression(a >= b)", "null_count(x)", "freshness(ts)",
    ]


def test_long_expression_names_are_truncated() -> None:
    name = one({"type": "expression", "expression": "a > 1 and " * 20 + "b"}).name
    assert len(name) <= 75 and name.endswith("...)")


def test_generated_names_are_unique_and_avoid_user_names() -> None:
    rules = parse_rules([
        {"type": "not_null", "column": "email"},
        {"type": "not_null", "column": "email", "severity": "warn"},
        {"name": "not_null(email)#3", "type": "regex", "column": "email", "pattern": "@"},
        {"type": "not_null", "column": "email"},
    ])
    names = [r.name for r in rules]
    assert names == ["not_null(email)", "not_null(email)#2", "not_null(email)#3", "not_null(email)#4"]


def test_user_names_must_be_unique() -> None:
    message = error_of([{"name": "x", "type": "row_count", "min": 1}, {"name": "x", "type": "row_count", "max": 5}])
    assert "rules[1].name" in message and "duplicate rule name 'x'" in message and "rules[0]" in message


def test_user_name_wins_over_generated_collision() -> None:
    rules = parse_rules([{"type": "row_count", "min": 1}, {"name": "row_count", "type": "row_count", "max": 5}])
    assert [r.name for r in rules] == ["row_count#2", "row_count"]


@pytest.mark.parametrize("name", ["", "   ", 5])
def test_bad_names(name: Any) -> None:
    assert "rules[0].name: must be a non-empty string" in error_of([{"name": name, "type": "row_count", "min": 1}])


def test_parsed_rules_pass_through_again() -> None:
    rules = parse_rules([{"type": "not_null", "column": "a"}, {"type": "row_count", "min": 1}])
    assert parse_rules(rules) == rules
    assert parse_rules([NotNullRule(columns=("a",))])[0].name == "not_null(a)"


# ---------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"type": "nope"}, ["rules[0].type", "unknown rule type", "'nope'", "allowed: allowed_values", "not_null"]),
        ({"column": "a"}, ["rules[0].type", "is required", "allowed:"]),
        ({"type": 3}, ["rules[0].type", "unknown rule type"]),
        ({"type": "not_null"}, ["rules[0].column", "is required", "'column': '<name>'"]),
        ({"type": "unique", "columns": []}, ["rules[0].columns", "must not be empty"]),
        ({"type": "not_null", "columns": ["a", "a"]}, ["rules[0].columns", "twice"]),
        ({"type": "not_null", "columns": [""]}, ["rules[0].columns", "non-empty"]),
        ({"type": "not_null", "column": "a", "columns": ["b"]}, ["rules[0]", "'column' or 'columns', not both"]),
        ({"type": "regex", "column": "a", "pattern": "(["}, ["rules[0].pattern", "not a valid regular expression", "(["]),
        ({"type": "regex", "column": "a", "pattern": ""}, ["rules[0].pattern", "non-empty"]),
        ({"type": "regex", "column": "a"}, ["rules[0].pattern", "is required for a 'regex' rule"]),
        ({"type": "not_null", "column": "a", "mostly": 1.5}, ["rules[0].mostly", "out of range", "1.5", "0.0 and 1.0"]),
        ({"type": "not_null", "column": "a", "mostly": -0.1}, ["rules[0].mostly", "out of range"]),
        ({"type": "not_null", "column": "a", "mostly": "0.5"}, ["rules[0].mostly", "valid number"]),
        ({"type": "not_null", "column": "a", "mostly": True}, ["rules[0].mostly"]),
        ({"type": "not_null", "column": "a", "max_failures": -1}, ["rules[0].max_failures", "out of range", ">= 0"]),
        ({"type": "not_null", "column": "a", "max_failures": 1.5}, ["rules[0].max_failures"]),
        ({"type": "not_null", "column": "a", "mostly": 0.5, "max_failures": 3}, ["rules[0]", "either 'mostly' or 'max_failures', not both"]),
        ({"type": "not_null", "column": "a", "severity": "fatal"}, ["rules[0].severity", "unknown severity", "'fatal'", "allowed: error, warn"]),
        ({"type": "not_null", "column": "a", "action": "explode"}, ["rules[0].action", "unknown action", "allowed: fail, warn, quarantine"]),
        ({"type": "not_null", "column": "a", "colum": "b"}, ["rules[0].colum", "unknown key for a 'not_null' rule", "allowed:", "mostly"]),
        ({"type": "row_count", "min": 1, "mostly": 0.9}, ["rules[0].mostly", "applies only to rules that count failing rows", "row_count"]),
        ({"type": "sql", "query": "select 1", "max_failures": 0}, ["rules[0].max_failures", "applies only"]),
        ({"type": "range", "column": "a"}, ["rules[0]", "give 'min', 'max' or both"]),
        ({"type": "range", "column": "a", "min": 5, "max": 1}, ["rules[0]", "'min' (5) is above 'max' (1)"]),
        ({"type": "range", "column": "a", "min": True}, ["rules[0].min"]),
        ({"type": "length", "column": "a", "min": 3, "max": 1}, ["rules[0]", "above"]),
        ({"type": "length", "column": "a", "min": -1}, ["rules[0].min", ">= 0"]),
        ({"type": "row_count", "max": 1, "min": 3}, ["rules[0]", "above"]),
        ({"type": "row_count"}, ["rules[0]", "give 'min', 'max' or both"]),
        ({"type": "format", "column": "a", "format": "phone"}, ["rules[0].format", "must be one of", "'email'"]),
        ({"type": "format", "column": "a", "format": "email", "pattern": "x"}, ["rules[0]", "'pattern' applies only to the date"]),
        ({"type": "allowed_values", "column": "a", "values": []}, ["rules[0].values", "must not be empty"]),
        ({"type": "allowed_values", "column": "a"}, ["rules[0].values", "is required"]),
        ({"type": "expression", "expression": "  "}, ["rules[0].expression", "non-empty"]),
        ({"type": "expression", "expression": "a > 1; drop table x"}, ["rules[0].expression", "without ';'"]),
        ({"type": "freshness", "column": "ts", "max_age": "soon"}, ["rules[0].max_age", "like '24h'", "'soon'"]),
        ({"type": "freshness", "column": "ts", "max_age": 0}, ["rules[0].max_age", "positive"]),
        ({"type": "freshness", "columns": ["a", "b"], "max_age": "1h"}, ["rules[0]", "exactly one column"]),
        ({"type": "freshness", "column": "ts"}, ["rules[0].max_age", "is required"]),
        ({"type": "schema", "columns": {}}, ["rules[0].columns", "must not be empty"]),
        ({"type": "sql", "query": "DROP TABLE data"}, ["rules[0].query", "single SELECT or WITH"]),
        ({"type": "sql", "query": "INSERT INTO t SELECT 1"}, ["rules[0].query", "single SELECT"]),
        ({"type": "sql", "query": "select 1; delete from t"}, ["rules[0].query", "single statement"]),
        ({"type": "sql", "query": "with a as (select 1) insert into t select * from a"}, ["rules[0].query", "INSERT is not allowed"]),
        ({"type": "sql", "query": "select 1", "view": "bad view"}, ["rules[0].view", "not a valid SQL identifier"]),
        ({"type": "sql", "query": "select 1", "equal_to": 0, "condition": {"equal_to": 1}}, ["rules[0]", "inline", "not both"]),
        ({"type": "sql", "query": "select 1", "condition": {}}, ["rules[0].condition", "at least one of"]),
        ({"type": "sql", "query": "select 1", "condition": {"geq_to": 5, "leq_to": 1}}, ["rules[0].condition", "lower bound (5) is above"]),
        ({"type": "sql", "query": "select 1", "condition": {"geq_to": 1, "greater_than": 1}}, ["rules[0].condition", "not both"]),
        ({"type": "sql", "query": "select 1", "condition": {"equal_to": 1, "tolerance": -1}}, ["rules[0].condition.tolerance", ">= 0"]),
        ({"type": "sql", "query": "select 1", "condition": {"equals": 1}}, ["rules[0].condition.equals"]),
        ({"type": "column_metric", "column": "a", "metric": "avg", "equal_to": 0}, ["rules[0].metric", "must be one of"]),
        ({"type": "column_metric", "column": "a", "metric": "min"}, ["rules[0].condition", "is required"]),
        ({"type": "row_count_change", "max_change": -0.1}, ["rules[0].max_change", ">= 0"]),
        ({"type": "row_count_change", "max_change": 0.1, "baseline": "first"}, ["rules[0].baseline", "must be one of"]),
    ],
)
def test_config_errors_name_rule_field_and_fix(rule: dict[str, Any], expected: list[str]) -> None:
    message = error_of([rule])
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_errors_name_the_rule_by_index_and_name() -> None:
    message = error_of([
        {"type": "row_count", "min": 1},
        {"name": "email_ok", "type": "not_null", "column": "email", "mostly": 2},
    ])
    assert message.startswith("rules[1] ('email_ok').mostly:")


def test_a_rule_must_be_a_mapping() -> None:
    assert "rules[0]: a rule must be a mapping" in error_of(["not_null"])


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_rules([{"type": "nope"}])


# ------------------------------------------------------------------------------------------ sources


def test_mapping_with_rules() -> None:
    assert [r.name for r in parse_rules({"rules": [{"type": "row_count", "min": 1}]})] == ["row_count"]
    assert parse_rules({"rules": []}) == [] and parse_rules([]) == [] and parse_rules(None) == []


def test_unknown_top_level_key() -> None:
    message = error_of({"rules": [], "rulez": []})
    assert "rulez: unknown key" in message and "allowed: rules, column_mapping, checks" in message


@pytest.mark.parametrize("obj", [42, {"rules": {"type": "row_count"}}, b"rules"])
def test_bad_sources(obj: Any) -> None:
    assert "rules" in error_of(obj)


def test_column_mapping_is_translated() -> None:
    rules = parse_rules({
        "column_mapping": {
            "email": {"null_check": {"equal_to": 0}, "unique_check": {"equal_to": 0}},
            "amount": {
                "min": {"geq_to": 0, "tolerance": 0.1},
                "max": {"less_than": 1000},
                "distinct_check": {"greater_than": 1, "severity": "warn"},
            },
        }
    })
    by_name = {r.name: r for r in rules}
    assert list(by_name) == [
        "null_check(email)", "unique_check(email)", "min(amount)", "max(amount)", "distinct_check(amount)",
    ]
    assert all(isinstance(r, ColumnMetricRule) and r.accept_none for r in rules)
    assert by_name["null_check(email)"].metric == "null_sum"  # common-sql's SUM: NULL on empty data
    assert by_name["unique_check(email)"].metric == "duplicate_count"
    assert by_name["min(amount)"].condition == Condition(geq_to=0, tolerance=0.1)
    assert by_name["distinct_check(amount)"].metric == "distinct_count"
    assert by_name["distinct_check(amount)"].severity == "warn"


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"a": {"mean_check": {"equal_to": 0}}}, "column_mapping.a.mean_check: unknown column check"),
        ({"a": {"null_check": 0}}, "column_mapping.a.null_check: must be a mapping"),
        ({"a": {"null_check": {}}}, "at least one of"),
        ({"a": {"null_check": {"equal_to": 0, "partition_clause": "x > 1"}}}, "partition_clause: is not supported"),
        ({"a": ["null_check"]}, "column_mapping.a: must be a mapping"),
        (["a"], "column_mapping: must be a mapping"),
    ],
)
def test_column_mapping_errors(mapping: Any, expected: str) -> None:
    assert expected in error_of({"column_mapping": mapping})


def test_checks_are_translated_to_sql_rules() -> None:
    (rule,) = parse_rules({"checks": {"row_count_check": {"check_statement": "COUNT(*) > 0"}}})
    assert isinstance(rule, SqlRule) and rule.name == "row_count_check" and rule.view == "data"
    assert "CASE WHEN COUNT(*) > 0 THEN 1 ELSE 0 END" in rule.query
    assert rule.condition == Condition(equal_to=1)


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ({"c": {"statement": "x"}}, "checks.c: must be a mapping with a 'check_statement'"),
        ({"c": {"check_statement": "1=1; drop table t"}}, "checks.c.check_statement"),
        ({"c": {"check_statement": "x > 0", "partition_clause": "y"}}, "not supported"),
        ({"c": {"check_statement": "x > 0) AS s; DELETE FROM t --"}}, "checks.c.check_statement"),
        ({"c": {"check_statement": "x > 0", "mostly": 0.5}}, "applies only"),
    ],
)
def test_checks_errors(checks: Any, expected: str) -> None:
    assert expected in error_of({"checks": checks})


def test_all_three_forms_together() -> None:
    rules = parse_rules({
        "rules": [{"type": "row_count", "min": 1}],
        "column_mapping": {"a": {"null_check": {"equal_to": 0}}},
        "checks": {"positive": {"check_statement": "a > 0"}},
    })
    assert [r.name for r in rules] == ["row_count", "null_check(a)", "positive"]


def test_yaml_and_json_files(tmp_path: Path) -> None:
    content = {"rules": [{"type": "not_null", "column": "a"}], "checks": {"c": {"check_statement": "a > 0"}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(content))
    (tmp_path / "r.json").write_text(json.dumps(content))
    (tmp_path / "list.yml").write_text(yaml.safe_dump(content["rules"]))
    expected = ["not_null(a)", "c"]
    assert [r.name for r in parse_rules(tmp_path / "r.yaml")] == expected
    assert [r.name for r in parse_rules(str(tmp_path / "r.json"))] == expected
    assert [r.name for r in parse_rules(tmp_path / "list.yml")] == ["not_null(a)"]


def test_file_errors(tmp_path: Path) -> None:
    assert "no such rules file" in error_of(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.json").write_text("{nope")
    assert "cannot parse" in error_of(tmp_path / "bad.json")


# -------------------------------------------------------------------------------------- sql guard


@pytest.mark.parametrize(
    "query",
    [
        "SELECT COUNT(*) FROM data",
        "  select 1;  ",
        "(SELECT 1)",
        "WITH t AS (SELECT * FROM data) SELECT COUNT(*) FROM t",
        "SELECT 'drop table x; insert' AS s FROM data",  # keywords inside a string literal
        "SELECT `update` FROM data -- delete comment",
        "SELECT /* drop */ 1",
        "SELECT date_add(d, 1), replace(s, 'a', 'b') FROM data",
        "select 'it''s' from data",
    ],
)
def test_select_queries_are_accepted(query: str) -> None:
    assert validate_select_query(query) == query


@pytest.mark.parametrize(
    "query",
    [
        "",
        "DROP TABLE data",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO t SELECT 1",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "TRUNCATE TABLE t",
        "ALTER TABLE t ADD COLUMN x INT",
        "WITH x AS (SELECT 1) INSERT OVERWRITE TABLE t SELECT * FROM x",
        "SELECT 1; DROP TABLE t",
        "select 1 ; select 2",
        "CACHE TABLE data",
        "FROM data SELECT *",
        "VALUES (1)",
        "SET spark.sql.ansi.enabled=false",
        "SELECT 1 /* unterminated",
    ],
)
def test_non_select_queries_are_rejected(query: str) -> None:
    if query == "SELECT 1 /* unterminated":
        assert validate_select_query(query)  # a comment to the end is still one SELECT
        return
    with pytest.raises(ValueError):
        validate_select_query(query)


# --------------------------------------------------------------------------------------- columns


def test_validate_against_columns_lists_every_offender() -> None:
    rules = parse_rules([
        {"type": "not_null", "column": "emial"},
        {"type": "unique", "columns": ["id", "Region"]},
        {"type": "freshness", "column": "ts", "max_age": "1h"},
        {"type": "schema", "columns": {"nope": "int"}},  # schema rules report missing columns themselves
        {"type": "expression", "expression": "zzz > 1"},  # not parsed here
        {"type": "expression", "expression": "a > b", "columns": ["a", "b"]},
        {"type": "sql", "query": "select count(*) from data where qqq"},
        {"type": "not_null", "column": "s.inner"},  # nested field of an existing struct
    ])
    with pytest.raises(ConfigError) as info:
        validate_against_columns(rules, ["id", "email", "region", "a", "s"])
    message = str(info.value)
    assert "rule 'not_null(emial)' references column 'emial'" in message
    assert "column 'Region' (did you mean 'region'?)" in message
    assert "rule 'freshness(ts)' references column 'ts'" in message
    assert "rule 'expression(a > b)' references column 'b'" in message
    assert "nope" not in message and "zzz" not in message and "inner" not in message
    assert "allowed: id, email, region, a, s" in message


def test_validate_against_columns_passes() -> None:
    validate_against_columns(parse_rules([{"type": "not_null", "columns": ["a", "b"]}]), ["a", "b", "c"])


# -------------------------------------------------------------------------------------- threshold


def nn(**kwargs: Any) -> Any:
    return one({"type": "not_null", "column": "a", **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "failing", "total", "status"),
    [
        ({}, 0, 100, "pass"),
        ({}, 1, 100, "fail"),
        ({}, 0, 0, "pass"),
        ({"max_failures": 5}, 5, 100, "pass"),
        ({"max_failures": 5}, 6, 100, "fail"),
        ({"max_failures": 0}, 0, 10, "pass"),
        ({"max_failures": 0}, 1, 10, "fail"),
        ({"mostly": 0.9}, 10, 100, "pass"),  # exactly 90% pass: inclusive
        ({"mostly": 0.9}, 11, 100, "fail"),
        ({"mostly": 0.95}, 1, 20, "pass"),  # 0.95 exactly, no float rounding
        ({"mostly": 0.7}, 3, 10, "pass"),  # 1 - 0.3 is 0.7000000000000001 in floats; exact fractions
        ({"mostly": 0.1}, 9, 10, "pass"),
        ({"mostly": 1.0}, 0, 10, "pass"),
        ({"mostly": 1.0}, 1, 10, "fail"),
        ({"mostly": 1}, 1, 10, "fail"),
        ({"mostly": 0.0}, 10, 10, "pass"),
        ({"mostly": 0.5}, 0, 0, "pass"),
        ({"severity": "warn"}, 1, 10, "warn"),
        ({"severity": "warn", "max_failures": 1}, 1, 10, "pass"),
        ({"severity": "warn", "mostly": 0.99}, 5, 10, "warn"),
        ({"action": "quarantine"}, 1, 10, "fail"),
        ({"action": "warn"}, 1, 10, "fail"),  # status follows severity; the action is the operator's
    ],
)
def test_evaluate_threshold(kwargs: dict[str, Any], failing: int, total: int, status: str) -> None:
    result = evaluate_threshold(nn(**kwargs), failing, total)
    assert result.status == status
    assert result.passed is (status == "pass")
    assert result.failing_rows == failing
    assert result.failure_ratio == (failing / total if total else 0.0)


def test_evaluate_threshold_result_fields() -> None:
    result = evaluate_threshold(nn(name="a_present", mostly=0.95, severity="warn", action="quarantine"), 3, 12)
    assert result == RuleResult(
        name="a_present", type="not_null", failing_rows=3, failure_ratio=0.25, threshold="mostly=0.95",
        status="warn", severity="warn", action="quarantine", observed=None,
        message="3 of 12 rows failed (25.00%)", columns=("a",),
    )
    assert evaluate_threshold(nn(max_failures=2), 0, 1).threshold == "max_failures=2"
    assert evaluate_threshold(nn(), 0, 1).threshold == "no failing rows"


def test_effective_action_defaults_from_severity() -> None:
    assert nn().effective_action == "fail"
    assert nn(severity="warn").effective_action == "warn"
    assert nn(severity="warn", action="quarantine").effective_action == "quarantine"
    assert nn(action=None).effective_action == "fail"


def test_evaluate_threshold_guards() -> None:
    with pytest.raises(ValueError):
        evaluate_threshold(nn(), 5, 3)
    with pytest.raises(ValueError):
        evaluate_threshold(nn(), -1, 3)
    with pytest.raises(TypeError):
        evaluate_threshold(one({"type": "row_count", "min": 1}), 0, 3)


def test_unique_counts_like_row_level_rules() -> None:
    rule = one({"type": "unique", "columns": ["a", "b"], "max_failures": 2})
    assert isinstance(rule, UniqueRule) and rule.counted and not rule.row_level
    assert evaluate_threshold(rule, 2, 10).status == "pass"
    assert evaluate_threshold(rule, 3, 10).status == "fail"


# ------------------------------------------------------------------------------------ dataset rules


def test_row_count_result() -> None:
    rule = one({"type": "row_count", "min": 10, "max": 20})
    assert isinstance(rule, RowCountRule)
    assert row_count_result(rule, 10).status == "pass"
    assert row_count_result(rule, 20).status == "pass"
    assert row_count_result(rule, 9).status == "fail"
    result = row_count_result(rule, 21)
    assert result.status == "fail" and result.observed == 21 and result.failing_rows is None
    assert result.threshold == "row_count >= 10 and <= 20"
    assert row_count_result(one({"type": "row_count", "min": 1, "severity": "warn"}), 0).status == "warn"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("24h", 86400), ("2d", 172800), ("1h30m", 5400), ("90s", 90), ("1w", 604800), ("500ms", 0.5),
     (3600, 3600), (1.5, 1.5), ("120", 120), ("1.5h", 5400), ("2 D", 172800)],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "h", "-1h", 0, -5, True, None, [1], "1y"])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_freshness_result() -> None:
    rule = one({"type": "freshness", "column": "ts", "max_age": "24h"})
    assert isinstance(rule, FreshnessRule) and rule.column == "ts" and rule.max_age == 86400
    ref = datetime(2024, 5, 2, 12, tzinfo=UTC)
    assert freshness_result(rule, ref - timedelta(hours=24), ref).status == "pass"  # inclusive
    assert freshness_result(rule, ref - timedelta(hours=24, seconds=1), ref).status == "fail"
    assert freshness_result(rule, ref + timedelta(hours=1), ref).status == "pass"  # future data is fresh
    assert freshness_result(rule, datetime(2024, 5, 1, 13), ref).status == "pass"  # naive = UTC
    assert freshness_result(rule, date(2024, 5, 1), ref).status == "fail"  # midnight UTC: 36 h old
    assert freshness_result(rule, date(2024, 5, 2), ref).status == "pass"
    result = freshness_result(rule, None, ref)
    assert result.status == "fail" and "no non-NULL value" in result.message
    stale = freshness_result(rule, datetime(2024, 4, 30, tzinfo=UTC), datetime(2024, 5, 2, 12))
    assert stale.observed == datetime(2024, 4, 30, tzinfo=UTC) and "2 days, 12:00:00" in stale.message


def test_freshness_defaults_to_now() -> None:
    rule = one({"type": "freshness", "column": "ts", "max_age": 60})
    assert freshness_result(rule, datetime.now(UTC)).status == "pass"
    assert freshness_result(rule, datetime.now(UTC) - timedelta(minutes=5)).status == "fail"


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [("int", "int", True), ("integer", "int", True), ("long", "bigint", True), ("string", "string", True),
     ("varchar(20)", "string", True), ("decimal", "decimal(10,2)", True), ("decimal(10, 2)", "decimal(10,2)", True),
     ("decimal(10,3)", "decimal(10,2)", False), ("timestamp", "timestamp", True), ("timestamp", "timestamp_ntz", False),
     ("bool", "boolean", True), ("int", "bigint", False), ("array<string>", "array<string>", True)],
)
def test_schema_types(expected: str, actual: str, match: bool) -> None:
    rule = one({"type": "schema", "columns": {"c": expected}})
    assert schema_result(rule, {"c": actual}).passed is match


def test_schema_result_reports_missing_extra_and_wrong_type() -> None:
    rule = one({"type": "schema", "columns": {"id": "int", "email": "string", "amount": "double"}, "allow_extra": False})
    assert isinstance(rule, SchemaRule)
    result = schema_result(rule, {"id": "bigint", "email": "string", "note": "string"})
    assert result.status == "fail"
    assert result.observed == {
        "missing": ["amount"], "extra": ["note"], "wrong_type": {"id": {"expected": "int", "actual": "bigint"}},
    }
    assert "missing: amount" in result.message and "extra: note" in result.message and "id is bigint" in result.message
    lenient = one({"type": "schema", "columns": {"email": "string"}})
    assert schema_result(lenient, {"id": "int", "email": "string"}).passed


def test_normalize_type() -> None:
    assert normalize_type(" Integer ") == "int"
    assert normalize_type("DECIMAL(10, 2)") == "decimal(10,2)"
    assert normalize_type("char(3)") == "string"
    assert normalize_type("struct<a:int>") == "struct<a:int>"


@pytest.mark.parametrize(
    ("condition", "value", "ok"),
    [
        ({"equal_to": 0}, 0, True), ({"equal_to": 0}, 1, False), ({"equal_to": 0}, None, False),
        ({"greater_than": 5}, 5, False), ({"geq_to": 5}, 5, True), ({"less_than": 5}, 5, False),
        ({"leq_to": 5}, 5, True), ({"geq_to": 1, "leq_to": 3}, 2, True), ({"geq_to": 1, "leq_to": 3}, 4, False),
        ({"equal_to": 100, "tolerance": 0.1}, 109, True), ({"equal_to": 100, "tolerance": 0.1}, 111, False),
        ({"equal_to": 100, "tolerance": 0.1}, 90, True), ({"geq_to": 100, "tolerance": 0.1}, 90, True),
        ({"greater_than": 100, "tolerance": 0.1}, 90, False), ({"leq_to": 100, "tolerance": 0.1}, 110, True),
        ({"less_than": 100, "tolerance": 0.1}, 111, False), ({"equal_to": 1}, Decimal("1.0"), True),
        ({"equal_to": 1}, "1", True), ({"equal_to": 1}, "x", False), ({"equal_to": 1}, float("nan"), False),
        ({"equal_to": 1}, True, True),
    ],
)
def test_condition(condition: dict[str, Any], value: Any, ok: bool) -> None:
    assert Condition(**condition).matches(value) is ok


@pytest.mark.parametrize(
    ("condition", "value", "ok"),
    [
        # issue 14: common-sql widens a negative bound outward (-100 - 100 * 0.5 = -150); it never tightens it
        ({"geq_to": -100, "tolerance": 0.5}, -70, True), ({"geq_to": -100, "tolerance": 0.5}, -150, True),
        ({"geq_to": -100, "tolerance": 0.5}, -151, False), ({"greater_than": -100, "tolerance": 0.5}, -150, False),
        ({"greater_than": -100, "tolerance": 0.5}, -149, True), ({"leq_to": -100, "tolerance": 0.5}, -50, True),
        ({"leq_to": -100, "tolerance": 0.5}, -49, False), ({"less_than": -100, "tolerance": 0.5}, -50, False),
        ({"less_than": -100, "tolerance": 0.5}, -51, True), ({"equal_to": -100, "tolerance": 0.5}, -150, True),
        ({"equal_to": -100, "tolerance": 0.5}, -50, True), ({"equal_to": -100, "tolerance": 0.5}, -151, False),
        ({"equal_to": -100, "tolerance": 0.5}, -49, False), ({"geq_to": 0, "tolerance": 0.5}, -1, False),
        ({"equal_to": 0, "tolerance": 0.5}, 0, True), ({"leq_to": 0, "tolerance": 2}, 1, False),
        ({"geq_to": -0.5, "leq_to": 0.5, "tolerance": 1}, -1, True), ({"geq_to": 1}, Decimal("0.99"), False),
    ],
)
def test_a_tolerance_widens_negative_and_zero_bounds_like_common_sql(
    condition: dict[str, Any], value: Any, ok: bool
) -> None:
    assert Condition(**condition).matches(value) is ok


def test_condition_describe() -> None:
    assert Condition(equal_to=0).describe() == "== 0"
    assert Condition(geq_to=1, less_than=2.5, tolerance=0.1).describe() == ">= 1 and < 2.5 (tolerance 0.1)"


def test_sql_result() -> None:
    rule = one({"type": "sql", "query": "select count(*) from data where x < 0", "equal_to": 0})
    assert sql_result(rule, 0).passed
    failed = sql_result(rule, 3)
    assert failed.status == "fail" and failed.observed == 3 and failed.threshold == "== 0"
    assert sql_result(rule, None).status == "fail"
    assert "returned 2 rows" in sql_result(rule, 0, rows=2).message
    assert sql_result(rule, None, rows=0).status == "fail"
    lenient = one({"type": "sql", "query": "select 1", "equal_to": 0, "accept_none": True})
    assert sql_result(lenient, None).passed and sql_result(lenient, None, rows=0).passed
    truthy = one({"type": "sql", "query": "select count(*) > 0 from data"})
    assert sql_result(truthy, True).passed and not sql_result(truthy, False).passed
    assert sql_result(truthy, None).status == "fail" and sql_result(truthy, True).threshold == "truthy"
    warn = one({"type": "sql", "query": "select 1", "geq_to": 5, "severity": "warn"})
    assert sql_result(warn, 1).status == "warn"


def test_column_metric_result_and_accept_none() -> None:
    (rule,) = parse_rules({"column_mapping": {"x": {"min": {"geq_to": 0}}}})
    assert column_metric_result(rule, 3).passed and not column_metric_result(rule, -1).passed
    assert column_metric_result(rule, None).passed  # common-sql accept_none: NULL counts as 0
    strict = one({"type": "column_metric", "column": "x", "metric": "min", "geq_to": 0})
    assert column_metric_result(strict, None).status == "fail"


@pytest.mark.parametrize(
    ("rule", "count", "history", "status", "change"),
    [
        ({"max_change": 0.2}, 120, [100], "pass", 0.2),
        ({"max_change": 0.2}, 121, [100], "fail", 0.21),
        ({"max_change": 0.2}, 79, [100], "fail", 0.21),
        ({"max_change": 0.2}, 100, [], "pass", None),
        ({"max_change": 0.2}, 100, [1000, 100], "pass", 0.0),  # baseline: the last count
        ({"max_change": 0.2, "baseline": "mean"}, 100, [50, 150], "pass", 0.0),
        ({"max_change": 0.2, "baseline": "median"}, 100, [10, 100, 1000], "pass", 0.0),
        ({"max_change": 0.2}, 0, [0], "pass", 0.0),
        ({"max_change": 0.2}, 5, [0], "fail", None),
        ({"max_change": 0.2, "history": [100]}, 110, [], "pass", 0.1),
        ({"max_change": 0.2, "history": [1]}, 110, [100], "pass", 0.1),  # given history is more recent
        ({"max_change": 0.2, "severity": "warn"}, 200, [100], "warn", 1.0),
    ],
)
def test_row_count_change_result(
    rule: dict[str, Any], count: int, history: list[int], status: str, change: float | None
) -> None:
    parsed = one({"type": "row_count_change", **rule})
    assert isinstance(parsed, RowCountChangeRule)
    result = row_count_change_result(parsed, count, history)
    assert result.status == status
    if change is not None:
        assert result.observed["change"] == pytest.approx(change)


# ----------------------------------------------------------------------------------------- report


def test_quality_report_status_and_to_dict() -> None:
    ok = evaluate_threshold(nn(name="a"), 0, 2)
    warn = evaluate_threshold(nn(name="b", severity="warn"), 1, 2)
    bad = evaluate_threshold(nn(name="c"), 2, 2)
    ts = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    fresh = freshness_result(one({"type": "freshness", "column": "ts", "max_age": "1h"}), ts, ts)
    assert QualityReport([]).status == "pass"
    assert QualityReport([ok]).status == "pass"
    assert QualityReport([ok, warn]).status == "warn"
    report = QualityReport(
        [ok, warn, bad, fresh],
        samples={"c": [{"a": None, "amount": Decimal("1.50"), "d": date(2024, 1, 2), "ts": ts, "raw": b"\x01"}]},
        row_count=2, reference_time=ts, spark_queries=3,
    )
    assert report.status == "fail" and report.failed == [bad] and report.warned == [warn]
    assert report["b"] is warn
    with pytest.raises(KeyError):
        report["zzz"]
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-able
    assert data["status"] == "fail" and data["summary"] == {"pass": 2, "warn": 1, "fail": 1}
    assert data["reference_time"] == "2024-01-02T03:04:05+00:00"
    rules = {r["name"]: r for r in data["rules"]}
    assert rules["c"]["samples"] == [
        {"a": None, "amount": "1.50", "d": "2024-01-02", "ts": "2024-01-02T03:04:05+00:00", "raw": "01"}
    ]
    assert rules["freshness(ts)"]["observed"] == "2024-01-02T03:04:05+00:00"
    assert rules["a"]["samples"] == [] and rules["a"]["failing_rows"] == 0


def test_to_jsonable() -> None:
    class RowLike:
        def asDict(self, recursive: bool = False) -> dict[str, Any]:  # noqa: N802 - pyspark's Row API
            return {"x": Decimal("2")}

    value = {1: (RowLike(), {1, 2}), "f": float("inf"), "t": timedelta(minutes=1), "o": object}
    out = to_jsonable(value)
    assert out["1"][0] == {"x": "2"} and sorted(out["1"][1]) == [1, 2]
    assert out["f"] == "inf" and out["t"] == 60.0 and isinstance(out["o"], str)


def test_format_regexes_are_python_compatible() -> None:
    import re

    assert re.search(FORMAT_REGEXES["email"], "a.b@example.com")
    assert not re.search(FORMAT_REGEXES["email"], "a b@example.com")
    assert re.search(FORMAT_REGEXES["uuid"], "123e4567-e89b-12d3-a456-426614174000")
    for good in ("1", "-1.5", "+.5", "1e10", "3.", "2.5E-3"):
        assert re.search(FORMAT_REGEXES["numeric"], good), good
    for bad in ("", "abc", "1.2.3", "1e", "--1", " 1"):
        assert not re.search(FORMAT_REGEXES["numeric"], bad), bad


def test_models_can_be_built_directly() -> None:
    assert FormatRule(columns=("a",), format="uuid").default_name() == "format(a)"
    assert ExpressionRule(expression="a > 1").default_name() == "expression(a > 1)"
    assert UniqueRule(columns=("a", "b")).referenced_columns == ("a", "b")


def test_accept_none_is_common_sqls_column_check_parameter() -> None:
    mapping = {"x": {"min": {"geq_to": 0}}}
    (default,) = parse_rules({"column_mapping": mapping})
    (strict,) = parse_rules({"column_mapping": mapping, "accept_none": False})
    assert default.accept_none is True and strict.accept_none is False
    assert column_metric_result(default, None).passed  # NULL compares as 0, as in SQLColumnCheckOperator
    assert not column_metric_result(strict, None).passed
    with pytest.raises(ConfigError, match=r"^accept_none: must be true or false"):
        parse_rules({"column_mapping": mapping, "accept_none": "no"})
    with pytest.raises(ConfigError, match=r"^accept_none: applies to the checks of 'column_mapping'"):
        parse_rules({"checks": {"c": {"check_statement": "x > 0"}}, "accept_none": False})


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        # found by the fuzzing: the key the user wrote, not the internal 'condition'
        ({"column_mapping": {"a": {"min": {"geq_to": 0, "[": 1}}}}, "column_mapping.a.min ('min(a)').[: unknown condition key"),
        ({"column_mapping": {"a": {"min": {"geq_to": "x"}}}}, "column_mapping.a.min ('min(a)').geq_to:"),
        ({"rules": [{"type": "sql", "query": "select 1", "equal_to": 1, "greater_than": 0, "geq_to": 0}]}, "rules[0]: give greater_than or geq_to"),
        ({"rules": [{"tpye": "not_null", "column": "a"}]}, "rules[0].type: is required (unknown key(s) given: 'tpye')"),
        ({"": []}, "'': unknown key"),
        ({"rules": False}, "rules: must be a list of rules (got False)"),
    ],
)  # fmt: skip
def test_rule_errors_name_the_key_as_written(rules: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(rules)
    assert str(info.value).startswith(message), str(info.value)
