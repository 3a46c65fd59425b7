"""The data-quality engine: evaluates :mod:`~airflow_etl_provider.core.rules` on a Spark DataFrame.

Queries (Spark actions) per :func:`evaluate`, whatever the number of row-level rules:

* **one scan** counts the row count, every row-level rule's failing rows
  (``sum(when(failed, 1))``), the newest value of every ``freshness`` column and every
  ``column_metric`` aggregate and, on Spark 4.2+, picks every row-level rule's ``sample_size`` failing
  rows with the smallest keys (see :func:`_scan_with_samples`: the aggregates are observed on every row,
  the failing rows go on to an observed ``min_by(row, key, k)`` per rule);
* **one query per distinct key set** of the ``unique`` rules (identical key sets are evaluated once): the
  groupBy's duplicate-row count and ``sample_size`` duplicated keys (``min_by(..., k)`` in the same
  aggregation on Spark 4.2+; before, a window query);
* **one query per** ``sql`` **rule**, against the DataFrame registered as a temporary view;
* **one samples query**, when some row-level rule failed, only before Spark 4.2, with a ``column_metric``
  needing a DISTINCT aggregate (those cannot be observed) or with ``sample_size`` over 100,000: then the
  scan above is a plain aggregation, and the rows failing any rule are exploded per failed rule and
  limited per rule with ``row_number() <= sample_size``. Same rows either way;
* ``schema`` rules read ``df.schema``: no query.

With adaptive query execution a query with a shuffle runs as more than one Spark job; the counts
above still do not depend on the number of row-level rules (``tests/integration`` checks it).

:func:`split_rows` marks the rows failing row-level and ``unique`` rules, for the quarantine action.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.rules import (
    FORMAT_REGEXES,
    AllowedValuesRule,
    ColumnMetricRule,
    ExpressionRule,
    FormatRule,
    FreshnessRule,
    LengthRule,
    NotNullRule,
    QualityReport,
    RangeRule,
    RegexRule,
    RowCountChangeRule,
    RowCountRule,
    Rule,
    RuleResult,
    SchemaRule,
    SqlRule,
    UniqueRule,
    column_metric_result,
    evaluate_threshold,
    freshness_result,
    parse_rules,
    row_count_change_result,
    row_count_result,
    schema_result,
    sql_result,
    validate_against_columns,
)
from airflow_etl_provider.hooks.dead_letter import ERROR_COLUMN, FAILED_RULES_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

_RULE = "_etl_rule"
_RN = "_etl_rn"
_COUNT = "_etl_count"
_TOTAL = "_etl_total"
_FLAG = "_etl_failed_"
_MAX_BOTTOM_K = 100_000  # min_by(x, ord, k): k <= 100,000

__all__ = ["ERROR_COLUMN", "FAILED_RULES_COLUMN", "evaluate", "failure_condition", "profile", "split_rows"]


def _rules(rules: Any) -> list[Rule]:
    return parse_rules(rules)  # parsed rules pass through (names checked / generated)


def _col(df: DataFrame, name: str) -> Column:
    """A column by name: top-level names back-quoted (dots and spaces allowed), else a nested path."""
    from pyspark.sql import functions as F

    if name in df.columns:
        return F.col("`" + name.replace("`", "``") + "`")
    return F.col(name)


@contextmanager
def _session_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set a SQL conf for the queries run inside the block, then restore it (also on Spark Connect)."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _data_type(df: DataFrame, name: str) -> Any:
    for field in df.schema.fields:
        if field.name == name:
            return field.dataType
    return None


def _any(conditions: Iterable[Column]) -> Column:
    from pyspark.sql import functions as F

    result: Column | None = None
    for condition in conditions:
        result = condition if result is None else (result | condition)
    return result if result is not None else F.lit(False)


def failure_condition(df: DataFrame, rule: Rule) -> Column:
    """The boolean (never NULL) Spark column that is true on the rows failing a row-level rule.

    NULL values pass every rule but ``not_null``; an ``expression`` that is NULL passes.

    :param df: the data (for column types).
    :param rule: a row-level rule.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def per_column(check: Any) -> Column:
        return _any(F.coalesce(check(c, _col(df, c)), F.lit(False)) for c in rule.referenced_columns)

    if isinstance(rule, NotNullRule):
        return per_column(lambda _n, c: c.isNull())
    if isinstance(rule, RangeRule):

        def outside(_name: str, c: Column) -> Column:
            inside = F.lit(True)
            if rule.min is not None:
                inside = inside & (c >= F.lit(rule.min) if rule.min_inclusive else c > F.lit(rule.min))
            if rule.max is not None:
                inside = inside & (c <= F.lit(rule.max) if rule.max_inclusive else c < F.lit(rule.max))
            return c.isNotNull() & ~inside

        return per_column(outside)
    if isinstance(rule, RegexRule):
        return per_column(lambda _n, c: c.isNotNull() & ~c.cast("string").rlike(rule.pattern))
    if isinstance(rule, FormatRule):
        pattern = rule.datetime_pattern

        def bad_format(name: str, c: Column) -> Column:
            if pattern is None:
                return c.isNotNull() & ~c.cast("string").rlike(FORMAT_REGEXES[rule.format])
            if isinstance(_data_type(df, name), T.DateType | T.TimestampType | T.TimestampNTZType):
                return F.lit(False)  # typed values are valid dates / timestamps
            return c.isNotNull() & F.try_to_timestamp(c.cast("string"), F.lit(pattern)).isNull()

        return per_column(bad_format)
    if isinstance(rule, AllowedValuesRule):
        return per_column(lambda _n, c: c.isNotNull() & ~c.isin(list(rule.values)))
    if isinstance(rule, LengthRule):

        def bad_length(name: str, c: Column) -> Column:
            kind = _data_type(df, name)
            if isinstance(kind, T.ArrayType | T.MapType):
                length = F.size(c)
            elif isinstance(kind, T.BinaryType):
                length = F.length(c)  # bytes
            else:
                length = F.length(c.cast("string"))  # characters
            ok = F.lit(True)
            if rule.min is not None:
                ok = ok & (length >= rule.min)
            if rule.max is not None:
                ok = ok & (length <= rule.max)
            return c.isNotNull() & ~ok

        return per_column(bad_length)
    if isinstance(rule, ExpressionRule):
        return F.coalesce(~F.expr(rule.expression), F.lit(False))
    raise TypeError(f"rule {rule.rule_name!r} ({rule.type}) is not a row-level rule")


def _check_expressions(df: DataFrame, rules: Sequence[Rule]) -> None:
    """Analyse every expression rule (no Spark job): unknown columns or a non-boolean result -> ConfigError."""
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    expressions = [r for r in rules if isinstance(r, ExpressionRule)]
    if not expressions:
        return
    try:
        fields = df.select(*[F.expr(r.expression).alias(f"e{i}") for i, r in enumerate(expressions)]).schema.fields
    except PySparkException:
        fields = []
        for rule in expressions:
            try:
                fields += df.select(F.expr(rule.expression).alias("e")).schema.fields
            except PySparkException as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"rule {rule.rule_name!r}.expression",
                    f"is not a valid Spark SQL expression on this data: {first_line}",
                    value=rule.expression,
                ) from None
    for rule, spark_field in zip(expressions, fields, strict=True):
        if not isinstance(spark_field.dataType, T.BooleanType):
            raise ConfigError(
                f"rule {rule.rule_name!r}.expression",
                f"must be a boolean expression, but it is {spark_field.dataType.simpleString()}: compare "
                "values, e.g. 'shipped_at >= ordered_at'",
                value=rule.expression,
            )


def _newest(df: DataFrame, rule: FreshnessRule) -> Column:
    """An aggregate giving the newest value: epoch microseconds for timestamps and strings, else the max."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    c = _col(df, rule.column)
    kind = _data_type(df, rule.column)
    if isinstance(kind, T.TimestampType):
        return F.unix_micros(F.max(c))
    if isinstance(kind, T.DateType | T.TimestampNTZType):
        return F.max(c)
    return F.unix_micros(F.max(F.try_to_timestamp(c.cast("string"))))


def _metric(df: DataFrame, rule: ColumnMetricRule) -> Column:
    from pyspark.sql import functions as F

    c = _col(df, rule.column)
    match rule.metric:
        case "null_count":
            return F.coalesce(F.sum(F.when(c.isNull(), 1).otherwise(0)), F.lit(0))
        case "null_sum":  # common-sql's null_check: a SUM, so NULL (not 0) on empty data
            return F.sum(F.when(c.isNull(), 1).otherwise(0))
        case "distinct_count":
            return F.count_distinct(c)
        case "duplicate_count":
            return F.count(c) - F.count_distinct(c)
        case "min":
            return F.min(c)
        case _:
            return F.max(c)


def _from_micros(value: Any) -> Any:
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1_000_000, UTC)
    return value


def _record(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {c: row[c] for c in columns if c in row}


def _sample_columns(df: DataFrame, rules: Sequence[Rule], key_columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The columns a sample row keeps (keys + the rules' columns; every column when a rule names none and
    there are no keys) and the columns samples are ordered by (the keys, else the first kept column;
    columns Spark cannot order, maps and variants, are left out: no order then means any rows)."""
    wanted: list[str] = list(dict.fromkeys(key_columns))
    everything = False
    for rule in rules:
        columns = rule.referenced_columns
        everything |= not columns and not key_columns
        wanted += [c for c in columns if c not in wanted]
    if everything:
        wanted = list(df.columns)
    order = list(dict.fromkeys(key_columns)) or wanted[:1]
    return wanted, [c for c in order if _orderable(_field_type(df, c))]


def _field_type(df: DataFrame, name: str) -> Any:
    """The type of a top-level column or a nested path (``a.b``)."""
    kind = _data_type(df, name)
    return kind if kind is not None else df.select(_col(df, name)).schema.fields[0].dataType


def _orderable(kind: Any) -> bool:
    from pyspark.sql import types as T

    if isinstance(kind, T.MapType) or type(kind).__name__ == "VariantType":
        return False
    if isinstance(kind, T.ArrayType):
        return _orderable(kind.elementType)
    if isinstance(kind, T.StructType):
        return all(_orderable(f.dataType) for f in kind.fields)
    return True


def _scan_with_samples(
    source: DataFrame,
    aggregates: Sequence[Column],
    flags: Mapping[str, str],
    wanted: Sequence[str],
    order: Sequence[str],
    sample_size: int,
) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    """One scan (Spark 4.2+) that returns the aggregates and, per row-level rule, the ``sample_size`` failing
    rows with the smallest ``order`` values (NULLs first).

    ``source`` carries one boolean column per rule (``flags``: rule name -> column), computed once per row.
    The aggregates are observed (``DataFrame.observe``) on every row; behind that, only the rows failing
    some rule go on, to a second observation holding one ``min_by(row, key, k)`` per rule, and end in
    Spark's ``noop`` sink (only a constant column is written, so the scan still reads just the columns the
    rules use). Pure JVM: no Python worker.

    Why this shape, measured on the P5 benchmark (1M rows, 18 row-level rules, ``local[2]``, warm): a
    second query for the samples re-evaluates every condition (regexes included) and costs as much as the
    aggregation itself (+2.3 s); ``min_by(..., k)`` inside the aggregation takes it out of code generation
    (as slow); ``min_by`` observed on every row costs +0.8 s; a ``mapInArrow`` top-k costs the same as this
    shape warm, but +1.5 s more on a session's first run (Python workers start). This shape: +0.5 s.
    The counts stay exact: the observations run in the query's result stage, and Spark applies a result
    task's accumulator updates once (a re-executed or speculative copy of a shuffle map task would have
    its observed metrics counted twice, which is why the aggregation is not observed behind a shuffle).
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    totals_seen, samples_seen = Observation(), Observation()
    flag_columns = list(flags.values())
    row = F.struct(*[_col(source, c).alias(c) for c in wanted])
    key = F.struct(*[_col(source, c) for c in order]) if order else F.struct(F.lit(0))
    smallest = [
        F.min_by(F.when(F.col(flag), row), F.when(F.col(flag), key), sample_size).alias(f"s{i}")
        for i, flag in enumerate(flag_columns)
    ]
    (
        source.observe(totals_seen, *aggregates)
        .where(_any(F.col(f) for f in flag_columns))
        .observe(samples_seen, *smallest)
        .select(F.lit(0).alias("_"))
        .write.format("noop").mode("overwrite").save()
    )
    totals, found = totals_seen.get, samples_seen.get
    per_rule = {
        name: [r.asDict(recursive=True) for r in found[f"s{i}"]]
        for i, name in enumerate(flags) if found[f"s{i}"]
    }
    return totals, per_rule


def _spark_version(spark: SparkSession) -> tuple[int, ...]:
    """The Spark version of the session's server (major, minor)."""
    parts = [int(p) for p in spark.version.split(".")[:2] if p.isdigit()]
    return tuple(parts)


def evaluate(
    df: DataFrame,
    rules: Any,
    *,
    sample_size: int = 10,
    key_columns: Sequence[str] = (),
    reference_time: datetime | None = None,
    spark: SparkSession | None = None,
    row_count_history: Sequence[int] = (),
) -> QualityReport:
    """Evaluate ``rules`` on ``df`` in as few Spark queries as possible (see the module docstring).

    :param df: the data. Evaluation reads it several times (aggregation, unique, sql, samples): cache or
        checkpoint it first when it is expensive to recompute or not deterministic.
    :param rules: parsed rules, or anything :func:`~airflow_etl_provider.core.rules.parse_rules` accepts.
    :param sample_size: failing rows kept per rule (key columns + the rule's columns; all columns
        when both are empty); 0 disables samples.
    :param key_columns: business-key columns included in every sample.
    :param reference_time: the run's logical date, for ``freshness`` (naive = UTC; ``None`` = now).
    :param spark: the session for ``sql`` rules (default: ``df.sparkSession``).
    :param row_count_history: previous row counts (oldest first) for ``row_count_change`` rules.
    :raises ConfigError: a rule references a column the data lacks, or an expression is invalid.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parsed = _rules(rules)
    validate_against_columns(parsed, df.columns)
    missing_keys = [k for k in key_columns if k not in df.columns]
    if missing_keys:
        raise ConfigError("key_columns", "columns not in the data", value=missing_keys, allowed=df.columns)
    _check_expressions(df, parsed)
    reference = reference_time if reference_time is not None else datetime.now(UTC)
    reference = reference if reference.tzinfo is not None else reference.replace(tzinfo=UTC)
    queries = 0

    # ---- 1. one scan: row count, every row-level rule, freshness, column metrics (+ the rules' samples)
    row_level = [r for r in parsed if r.row_level]
    by_name = {r.rule_name: r for r in row_level}
    conditions = {r.rule_name: failure_condition(df, r) for r in row_level}
    fresh = [r for r in parsed if isinstance(r, FreshnessRule)]
    metrics = [r for r in parsed if isinstance(r, ColumnMetricRule)]
    # One scan for aggregates and samples needs min_by(x, ord, k) (Spark 4.2+; k <= 100,000), and no DISTINCT
    # aggregate (observed metrics cannot hold one); otherwise the samples take a query of their own.
    bottom_k = 0 < sample_size <= _MAX_BOTTOM_K and _spark_version(spark or df.sparkSession) >= (4, 2)
    one_scan = bottom_k and bool(row_level) and not any(
        r.metric in ("distinct_count", "duplicate_count") for r in metrics
    )
    # the sample columns and their order come from every row-level rule, in both shapes: the same rows
    wanted, order = _sample_columns(df, row_level, key_columns)

    def aggregates(failed_when: Mapping[str, Column]) -> list[Column]:
        found = [F.count(F.lit(1)).alias("n")]
        found += [
            F.coalesce(F.sum(F.when(cond, 1).otherwise(0)), F.lit(0)).alias(f"r{i}")
            for i, cond in enumerate(failed_when.values())
        ]
        found += [_newest(df, r).alias(f"f{i}") for i, r in enumerate(fresh)]
        return found + [_metric(df, r).alias(f"m{i}") for i, r in enumerate(metrics)]

    sampled: dict[str, list[dict[str, Any]]] = {}
    if one_scan:
        flags = {name: f"{_FLAG}{i}" for i, name in enumerate(conditions)}
        source = df.select("*", *[cond.alias(flags[name]) for name, cond in conditions.items()])
        totals, sampled = _scan_with_samples(
            source, aggregates({n: F.col(flags[n]) for n in conditions}), flags, wanted, order, sample_size
        )
    else:
        totals = df.agg(*aggregates(conditions)).collect()[0]
    queries += 1
    total = int(totals["n"])
    failing = {name: int(totals[f"r{i}"]) for i, name in enumerate(conditions)}
    newest = {r.rule_name: _from_micros(totals[f"f{i}"]) for i, r in enumerate(fresh)}
    metric_values = {r.rule_name: totals[f"m{i}"] for i, r in enumerate(metrics)}

    samples: dict[str, list[dict[str, Any]]] = {}

    # ---- 2. unique: one groupBy per distinct key set
    unique_counts: dict[tuple[str, ...], int] = {}
    unique_samples: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for rule in parsed:
        if not isinstance(rule, UniqueRule):
            continue
        keys = tuple(sorted(rule.columns))
        if keys not in unique_counts:
            cols = [_col(df, c) for c in keys]
            groups = (
                df.where(~_any(c.isNull() for c in cols))
                .groupBy(*[c.alias(k) for c, k in zip(cols, keys, strict=True)])
                .agg(F.count(F.lit(1)).alias(_COUNT))
                .where(F.col(_COUNT) > 1)
            )
            key_cols = [F.col("`" + k.replace("`", "``") + "`") for k in keys]  # groups' literal names
            records: list[dict[str, Any]]  # the sampled groups, then the total {_COUNT: n, _RULE: True}
            if bottom_k:
                # Count and samples in one aggregation: min_by(..., k) (Spark 4.2+) keeps the k smallest keys
                # per partition, so only k groups per partition reach the final aggregation.
                smallest = F.min_by(F.struct(*key_cols, F.col(_COUNT)), F.struct(*key_cols), sample_size)
                found = groups.agg(F.coalesce(F.sum(_COUNT), F.lit(0)).alias(_COUNT), smallest.alias(_RULE))
                row = found.collect()[0]
                records = [r.asDict(recursive=True) for r in row[_RULE] or []]
                records.append({_COUNT: row[_COUNT], _RULE: True})
            elif sample_size > 0:
                # Before Spark 4.2 (no bottom-k min_by): one query, the duplicated keys moved to one partition
                # (a window without PARTITION BY: one task sorts every duplicated key) for their total and the
                # first keys.
                picked = (
                    groups.select(*key_cols, _COUNT, F.sum(_COUNT).over(Window.partitionBy()).alias(_TOTAL),
                                  F.row_number().over(Window.orderBy(*key_cols)).alias(_RN))
                    .where(F.col(_RN) <= sample_size)
                    .collect()
                )
                records = [r.asDict(recursive=True) for r in picked]
                records.append({_COUNT: picked[0][_TOTAL] if picked else 0, _RULE: True})
            else:
                records = [{_COUNT: groups.agg(F.coalesce(F.sum(_COUNT), F.lit(0)).alias(_COUNT)).collect()[0][0],
                            _RULE: True}]
            queries += 1
            unique_counts[keys] = int(records[-1][_COUNT])
            if unique_counts[keys] and sample_size > 0:
                unique_samples[keys] = [
                    {**_record(r, rule.columns), "occurrences": r[_COUNT]} for r in records if not r.get(_RULE)
                ]
        if keys in unique_samples:
            samples[rule.rule_name] = unique_samples[keys]
        failing[rule.rule_name] = unique_counts[keys]

    # ---- 3. sql rules: one query each, against the DataFrame as a temporary view
    sql_values: dict[str, tuple[Any, int]] = {}
    sql_rules = [r for r in parsed if isinstance(r, SqlRule)]
    if sql_rules:
        session = spark or df.sparkSession
        for view in dict.fromkeys(r.view for r in sql_rules):
            df.createOrReplaceTempView(view)
        try:
            for rule in sql_rules:
                rows = session.sql(rule.query).limit(2).collect()
                queries += 1
                sql_values[rule.rule_name] = (rows[0][0] if rows and len(rows[0]) else None, len(rows))
        finally:
            for view in dict.fromkeys(r.view for r in sql_rules):
                session.catalog.dropTempView(view)

    # ---- 4. samples of the row-level rules that failed: part of the scan above, or one query
    failed_names = [name for name, n in failing.items() if n and name in conditions]
    if failed_names and sample_size > 0 and not one_scan:
        rule_names = F.filter(
            F.array(*[F.when(conditions[name], F.lit(name)) for name in failed_names]), lambda x: x.isNotNull()
        )
        picked = (
            df.where(_any(conditions[name] for name in failed_names))
            .select(*[_col(df, c).alias(c) for c in wanted], F.explode(rule_names).alias(_RULE))
            .withColumn(_RN, F.row_number().over(
                Window.partitionBy(_RULE).orderBy(*([_col(df, c) for c in order] or [F.lit(1)]))))
            .where(F.col(_RN) <= sample_size)
        )
        # With the rules' conditions OR-ed in a filter, Spark's constraint propagation takes time and memory
        # exponential in their number to plan this query (14 failed rules: 30 s; 18: minutes, then out of
        # heap). It only infers extra filters, useless here: it is off for this one query.
        with _session_conf(spark or df.sparkSession, "spark.sql.constraintPropagation.enabled", "false"):
            rows = picked.collect()
        queries += 1
        for row in rows:
            data = row.asDict(recursive=True)
            sampled.setdefault(data[_RULE], []).append(data)
    for name in failed_names:
        if name in sampled:
            shown = list(dict.fromkeys([*key_columns, *by_name[name].referenced_columns])) or list(df.columns)
            samples[name] = [_record(data, shown) for data in sampled[name]]

    # ---- results, in rule order
    actual_schema = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    results: list[RuleResult] = []
    for rule in parsed:
        name = rule.rule_name
        if rule.counted:
            results.append(evaluate_threshold(rule, failing[name], total))
        elif isinstance(rule, RowCountRule):
            results.append(row_count_result(rule, total))
        elif isinstance(rule, FreshnessRule):
            results.append(freshness_result(rule, newest[name], reference))
        elif isinstance(rule, SchemaRule):
            results.append(schema_result(rule, actual_schema))
        elif isinstance(rule, SqlRule):
            value, n = sql_values[name]
            results.append(sql_result(rule, value, n))
        elif isinstance(rule, ColumnMetricRule):
            results.append(column_metric_result(rule, metric_values[name]))
        elif isinstance(rule, RowCountChangeRule):
            results.append(row_count_change_result(rule, total, row_count_history))
    report = QualityReport(
        results=results, samples=samples, row_count=total, reference_time=reference, spark_queries=queries
    )
    log.info(
        "Data quality: %s (%d rules: %d pass, %d warn, %d fail) on %d rows in %d Spark queries",
        report.status, len(results), len(results) - len(report.failed) - len(report.warned),
        len(report.warned), len(report.failed), total, queries,
    )
    return report


def split_rows(df: DataFrame, rules: Any, only: Iterable[str] | None = None) -> tuple[DataFrame, DataFrame]:
    """Split ``df`` into rows passing every row-level and ``unique`` rule, and the rows failing any.

    The failing rows keep their columns plus ``_etl_failed_rules`` (array of rule names) and
    ``_etl_error`` (``failed quality rules: a, b``), ready for
    :meth:`~airflow_etl_provider.hooks.dead_letter.DeadLetterHook.publish_dataframe`. Every row of a
    duplicate key fails ``unique``. Dataset rules (row_count, sql ...) are ignored. Both results are lazy
    and each recomputes ``df``: cache or checkpoint ``df`` first if it is not deterministic, so that
    ``passing + failing == total`` holds.

    :param df: the data.
    :param rules: parsed rules, or anything :func:`~airflow_etl_provider.core.rules.parse_rules` accepts.
    :param only: names of the rules that decide the split (default: all). A row failing only other rules
        passes; ``_etl_failed_rules`` of a failing row still lists every given rule it fails.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parsed = _rules(rules)
    deciding = set(only) if only is not None else None
    if deciding is not None and deciding - {r.rule_name for r in parsed}:
        raise ConfigError("only", "names rules that were not given", value=sorted(deciding - {r.rule_name
                                                                                        for r in parsed}))
    validate_against_columns([r for r in parsed if r.counted], df.columns)
    _check_expressions(df, parsed)
    marks: list[tuple[str, Column]] = [(r.rule_name, failure_condition(df, r)) for r in parsed if r.row_level]
    for rule in parsed:
        if isinstance(rule, UniqueRule):
            cols = [_col(df, c) for c in rule.columns]
            dup = F.count(F.lit(1)).over(Window.partitionBy(*cols)) > 1
            marks.append((rule.rule_name, ~_any(c.isNull() for c in cols) & dup))
    if not marks:
        return df, df.where(F.lit(False)).withColumns(
            {FAILED_RULES_COLUMN: F.array().cast("array<string>"), ERROR_COLUMN: F.lit(None).cast("string")}
        )
    names = F.filter(F.array(*[F.when(cond, F.lit(name)) for name, cond in marks]), lambda x: x.isNotNull())
    marked = df.withColumn(FAILED_RULES_COLUMN, names)
    if deciding is None:
        fails = F.size(FAILED_RULES_COLUMN) > 0
    else:
        fails = F.exists(FAILED_RULES_COLUMN, lambda x: x.isin(sorted(deciding)))
    passing = marked.where(~fails).drop(FAILED_RULES_COLUMN)
    failing = marked.where(fails).withColumn(
        ERROR_COLUMN, F.concat(F.lit("failed quality rules: "), F.array_join(FAILED_RULES_COLUMN, ", "))
    )
    return passing, failing


#: Top values are computed only for columns with at most this many (approximate) distinct values, or at
#: most 10 % of their non-null rows: the top values of an id column are all "1 occurrence".
TOP_VALUES_MAX_DISTINCT = 10_000


def profile(df: DataFrame, columns: Sequence[str] | None = None, *, top_n: int = 5) -> dict[str, Any]:
    """Column profiles in two Spark queries: one aggregation for every statistic, one for top values.

    Per column: ``null_ratio``, ``approx_distinct`` (HyperLogLog++, 5 % relative error), ``min``/``max``
    (numbers, strings, dates, timestamps), ``mean``/``stddev`` (numbers), ``min_length``/``max_length``
    (strings) and the ``top_n`` most frequent values with their counts (for columns that are not
    near-unique, see :data:`TOP_VALUES_MAX_DISTINCT`). Nested columns (arrays, maps, structs) get only
    the null ratio.

    :param df: the data (cache it: it is read twice).
    :param columns: the columns to profile (default: all).
    :param top_n: most frequent values kept per column; 0 skips the second query.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    names = list(columns) if columns is not None else list(df.columns)
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ConfigError("profile.columns", "columns not in the data", value=missing, allowed=df.columns)
    kinds = {f.name: f.dataType for f in df.schema.fields}
    numeric = (T.NumericType,)
    atomic = (T.NumericType, T.StringType, T.DateType, T.TimestampType, T.TimestampNTZType, T.BooleanType)
    aggs = [F.count(F.lit(1)).alias("n")]
    for i, name in enumerate(names):
        c, kind = _col(df, name), kinds[name]
        aggs.append(F.sum(F.when(c.isNull(), 1).otherwise(0)).alias(f"null{i}"))
        if not isinstance(kind, atomic):
            continue
        aggs.append(F.approx_count_distinct(c).alias(f"dist{i}"))
        if not isinstance(kind, T.BooleanType):
            aggs += [F.min(c).alias(f"min{i}"), F.max(c).alias(f"max{i}")]
        if isinstance(kind, numeric):
            aggs += [F.mean(c).alias(f"mean{i}"), F.stddev(c).alias(f"std{i}")]
        if isinstance(kind, T.StringType):
            aggs += [F.min(F.length(c)).alias(f"minlen{i}"), F.max(F.length(c)).alias(f"maxlen{i}")]
    row = df.agg(*aggs).collect()[0].asDict()
    total = int(row["n"])
    result: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        nulls = int(row[f"null{i}"] or 0)
        entry: dict[str, Any] = {"type": kinds[name].simpleString(), "null_count": nulls,
                                 "null_ratio": nulls / total if total else 0.0}
        for key, alias in (("approx_distinct", "dist"), ("min", "min"), ("max", "max"), ("mean", "mean"),
                           ("stddev", "std"), ("min_length", "minlen"), ("max_length", "maxlen")):
            if f"{alias}{i}" in row:
                entry[key] = row[f"{alias}{i}"]
        result[name] = entry

    wanted = [
        name for name in names
        if "approx_distinct" in result[name] and result[name]["approx_distinct"]
        and (result[name]["approx_distinct"] <= TOP_VALUES_MAX_DISTINCT
             or result[name]["approx_distinct"] <= 0.1 * (total - result[name]["null_count"]))
    ]
    if top_n > 0 and wanted:
        pairs = F.explode(F.array(*[F.struct(F.lit(n).alias("c"), _col(df, n).cast("string").alias("v"))
                                    for n in wanted]))
        counted = (df.select(pairs.alias("p")).where(F.col("p.v").isNotNull())
                   .groupBy(F.col("p.c").alias("c"), F.col("p.v").alias("v")).agg(F.count(F.lit(1)).alias("k")))
        ranked = counted.withColumn("r", F.row_number().over(Window.partitionBy("c").orderBy(F.desc("k"), "v")))
        for r in ranked.where(F.col("r") <= top_n).orderBy("c", "r").collect():
            result[r["c"]].setdefault("top_values", []).append({"value": r["v"], "count": int(r["k"])})
    return {"row_count": total, "columns": result}
