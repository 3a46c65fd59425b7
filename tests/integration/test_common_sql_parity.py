"""common-sql parity: the quality engine gives the verdict common-sql's own operators give (issue 14).

The oracle is the pinned ``apache-airflow-providers-common-sql``: ``SQLColumnCheckOperator`` and
``SQLTableCheckOperator`` executed against a real PostgreSQL table. The same rows go into a Spark DataFrame,
and the same ``column_mapping`` / ``checks`` go through :func:`parse_rules` and the engine the
``DataQualityOperator`` uses (:func:`~airflow_etl_provider.hooks.quality.evaluate`). Every check type
(null_check, distinct_check, unique_check, min, max) meets every comparison (equal_to, greater_than, geq_to,
less_than, leq_to, and bounded ranges), negative, zero and positive bounds, no tolerance and tolerances 0,
0.1 and 0.5, NULL metrics (an all-NULL column) with ``accept_none`` true and false; the verdicts must agree
one by one.

common-sql runs one operator per check, so one check's outcome never hides another's: a passing
``execute`` is a pass; a failing one raises ``AirflowException("Test failed. ...")`` (the check failed) or,
for a NULL result with ``accept_none=False`` compared with a bound, ``TypeError`` (``None >= -70``: the task
fails too). Any other exception fails the test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_etl_provider.core.rules import parse_rules
from airflow_etl_provider.hooks.quality import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.spark]

COLUMNS = ("pos", "neg", "mixed", "zeros", "allnull")
SPARK_SCHEMA = "pos INT, neg INT, mixed DOUBLE, zeros INT, allnull INT"
PG_DDL = "(pos int, neg int, mixed double precision, zeros int, allnull int)"
ROWS = [
    (10, -70, -5.5, 0, None),
    (20, -50, 0.0, 0, None),
    (20, -50, 0.0, 0, None),
    (30, -20, 4.25, 0, None),
    (None, None, 7.0, 0, None),
]
CHECKS = ("null_check", "distinct_check", "unique_check", "min", "max")
BOUNDS = (-150, -100, -70, -5.5, -1, 0, 1, 3, 7, 30)
TOLERANCES = (None, 0, 0.1, 0.5)
SINGLE = ("equal_to", "greater_than", "geq_to", "less_than", "leq_to")
RANGES = (
    ("geq_to", "leq_to"),
    ("greater_than", "less_than"),
    ("geq_to", "less_than"),
    ("greater_than", "leq_to"),
)

TABLE_CHECKS = {
    "pos_positive": "pos > 0",
    "pos_positive_or_null": "pos IS NULL OR pos > 0",
    "neg_below_zero": "neg < 0",
    "neg_at_least_minus_70": "neg >= -70",
    "neg_above_minus_70": "neg > -70",
    "mixed_at_least": "mixed >= -5.5",
    "zeros_are_zero": "zeros = 0",
    "allnull_is_null": "allnull IS NULL",
    "allnull_positive": "allnull > 0",
    "five_rows": "COUNT(*) = 5",
    "more_than_five_rows": "COUNT(*) > 5",
    "min_neg": "MIN(neg) >= -70",
    "max_pos_below_30": "MAX(pos) < 30",
}


def _grid() -> list[tuple[str, str, dict[str, Any], bool]]:
    """(column, check, condition, accept_none): every combination (about 7,000)."""
    out = []
    for column, check in itertools.product(COLUMNS, CHECKS):
        for tolerance in TOLERANCES:
            extra = {} if tolerance is None else {"tolerance": tolerance}
            for op, bound in itertools.product(SINGLE, BOUNDS):
                out.append((column, check, {op: bound, **extra}, True))
            for (low_op, high_op), (low, high) in itertools.product(
                RANGES, ((-100, -1), (-70, 0), (0, 3), (1, 30))
            ):
                out.append((column, check, {low_op: low, high_op: high, **extra}, True))
    # NULL metrics (min / max of the all-NULL column) and every other check, with accept_none=False
    for column, check in itertools.product(("allnull", "neg"), CHECKS):
        for op, bound, tolerance in itertools.product(SINGLE, (-70, 0, 3), (None, 0.5)):
            extra = {} if tolerance is None else {"tolerance": tolerance}
            out.append((column, check, {op: bound, **extra}, False))
    return out


def _stratum(case: tuple[str, str, dict[str, Any], bool]) -> tuple[Any, ...]:
    """What a case covers: check, comparison(s), the sign of its (lower) bound, tolerance, accept_none and,
    for accept_none=False, whether the metric is NULL (the all-NULL column)."""
    column, check, condition, accept_none = case
    ops = tuple(k for k in condition if k != "tolerance")
    bound = condition[ops[0]]
    sign = (bound > 0) - (bound < 0)
    return check, ops, sign, condition.get("tolerance"), accept_none, column == "allnull" and not accept_none


def _cases() -> list[tuple[str, str, dict[str, Any], bool]]:
    """One case (drawn with a fixed seed) of every stratum of the grid, and the issue's own case: about 700
    checks, so the oracle's one-operator-per-check run stays around 20 s."""
    import random

    strata: dict[tuple[Any, ...], list[tuple[str, str, dict[str, Any], bool]]] = {}
    for case in _grid():
        strata.setdefault(_stratum(case), []).append(case)
    pick = random.Random(14)
    out = [c for key in sorted(strata, key=repr) for c in pick.sample(strata[key], 1)]
    # the case of the issue: min -70 against geq_to -100 with tolerance 0.5 (common-sql: -150, passes)
    return [*out, ("neg", "min", {"geq_to": -100, "tolerance": 0.5}, True)]


CASES = _cases()


@pytest.fixture(scope="module")
def table(unique_module: str) -> Iterator[str]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    name = f"public.csql_parity_{unique_module}"
    pg = PostgresHook(postgres_conn_id="postgres_default")
    pg.run(f"CREATE TABLE {name} {PG_DDL}")
    pg.insert_rows(name, ROWS, target_fields=COLUMNS)
    yield name
    pg.run(f"DROP TABLE {name}")


@pytest.fixture(scope="module")
def empty_table(unique_module: str) -> Iterator[str]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    name = f"public.csql_parity_empty_{unique_module}"
    pg = PostgresHook(postgres_conn_id="postgres_default")
    pg.run(f"CREATE TABLE {name} {PG_DDL}")
    yield name
    pg.run(f"DROP TABLE {name}")


@pytest.fixture(scope="module")
def unique_module() -> str:
    import uuid

    return uuid.uuid4().hex[:10]


def _common_sql_verdict(operator: Any) -> bool:
    from airflow.sdk.exceptions import AirflowException

    try:
        operator.execute(context={})
    except AirflowException as exc:  # AirflowFailException too (retry_on_failure=False)
        assert str(exc).startswith("Test failed."), exc  # the checks failed, not the query
        return False
    except TypeError as exc:  # a NULL result compared with a bound when accept_none=False
        assert "NoneType" in str(exc), exc
        return False
    return True


def _column_verdicts(spark: Any, table: str, rows: list[tuple[Any, ...]], cases: list[Any]) -> dict[str, Any]:
    """common-sql's verdict and ours for every case, keyed by case name (``c<index>``)."""
    from airflow.providers.common.sql.operators.sql import SQLColumnCheckOperator

    expected: dict[str, bool] = {}
    rules = []
    for i, (column, check, condition, accept_none) in enumerate(cases):
        operator = SQLColumnCheckOperator(
            task_id=f"c{i}", conn_id="postgres_default", table=table, accept_none=accept_none,
            column_mapping={column: {check: dict(condition)}},
        )  # fmt: skip
        expected[f"c{i}"] = _common_sql_verdict(operator)
        mapping = {"column_mapping": {column: {check: dict(condition)}}, "accept_none": accept_none}
        (rule,) = parse_rules(mapping)
        rules.append(rule.model_copy(update={"name": f"c{i}"}))
    report = evaluate(spark.createDataFrame(rows, SPARK_SCHEMA), rules, sample_size=0)
    ours = {r.name: r.passed for r in report.results}
    assert len(ours) == len(expected) == len(cases)
    return {"expected": expected, "ours": ours}


def _differing(cases: list[Any], verdicts: dict[str, Any]) -> list[Any]:
    expected, ours = verdicts["expected"], verdicts["ours"]
    return [
        (cases[int(name[1:])], expected[name], ours[name])
        for name in expected
        if ours[name] != expected[name]
    ]


def test_column_mapping_verdicts_match_sql_column_check_operator(spark, table) -> None:
    verdicts = _column_verdicts(spark, table, ROWS, CASES)
    differing = _differing(CASES, verdicts)
    assert not differing, (
        f"{len(differing)} of {len(CASES)} verdicts differ (case, common-sql, ours): {differing[:20]}"
    )
    # the oracle really saw both outcomes, on every check type
    for check in CHECKS:
        seen = {verdicts["expected"][f"c{i}"] for i, case in enumerate(CASES) if case[1] == check}
        assert seen == {True, False}, check


EMPTY_CASES = [
    (column, check, {op: bound}, accept_none)
    for column, check in itertools.product(("pos", "allnull"), CHECKS)
    for op, bound in itertools.product(SINGLE, (-1, 0, 1))
    for accept_none in (True, False)
] + [("pos", check, {"geq_to": -1, "tolerance": 0.5}, False) for check in CHECKS]


def test_column_mapping_verdicts_match_on_an_empty_table(spark, empty_table) -> None:
    """On no rows the metrics are NULL (min, max, common-sql's SUM for null_check) or 0 (the counts)."""
    verdicts = _column_verdicts(spark, empty_table, [], EMPTY_CASES)
    differing = _differing(EMPTY_CASES, verdicts)
    assert not differing, (
        f"{len(differing)} of {len(EMPTY_CASES)} verdicts differ (case, common-sql, ours): {differing}"
    )
    assert set(verdicts["expected"].values()) == {True, False}


def test_table_check_verdicts_match_sql_table_check_operator(spark, table) -> None:
    from airflow.providers.common.sql.operators.sql import SQLTableCheckOperator

    expected = {
        name: _common_sql_verdict(
            SQLTableCheckOperator(
                task_id=name,
                conn_id="postgres_default",
                table=table,
                checks={name: {"check_statement": statement}},
            )
        )
        for name, statement in TABLE_CHECKS.items()
    }
    rules = parse_rules({"checks": {name: {"check_statement": s} for name, s in TABLE_CHECKS.items()}})
    df = spark.createDataFrame(ROWS, SPARK_SCHEMA)
    ours = {r.name: r.passed for r in evaluate(df, rules, sample_size=0).results}
    assert ours == expected
    assert set(expected.values()) == {True, False}
