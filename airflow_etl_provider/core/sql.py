"""Pure SQL builders for the PostgreSQL load engine (``hooks/postgres_load.py``).

Every identifier that reaches these functions is quoted with :func:`quote_identifier` (so it is
validated too); type names come from the target's catalog (``format_type``), never from configuration.
No Airflow, PySpark or driver import here: the functions only build strings and are unit-tested.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from airflow_etl_provider.core.identifiers import quote_identifier

Mode = Literal["append", "overwrite", "upsert"]

#: The staging table's row id column: unique per DataFrame row, deterministic for a deterministic input.
ROW_ID = "_etl_row_id"
#: The dense ordinal of the slow path's work table (chunks and bisection use ranges of it).
ORDINAL = "_etl_n"
ERROR = "_etl_error"
ERROR_CLASS = "_etl_error_class"
STAGING_PREFIX = "_etl_stg_"
#: The default idempotency bookkeeping table (created in the target's schema).
LOAD_LOG_TABLE = "etl_load_log"
#: How the rows reach the staging table: COPY from the executors (the default) or Spark's JDBC writer.
STAGE_METHODS = ("copy", "jdbc")
#: Who renders and sends the rows of COPY staging: Spark's JVM (PgJDBC), the executors' Python workers
#: (Arrow, psycopg), or the JVM where it can run and else Python.
COPY_WRITERS = ("auto", "jvm", "python")
#: The COPY format of the JVM writer: PostgreSQL's binary form where every staging column takes it
#: (:func:`binary_copy_supported`), else CSV; or one of them always. The Python writer always sends CSV.
COPY_FORMATS = ("auto", "binary", "csv")

# Spark SQL simple type strings -> the PostgreSQL type Spark's JDBC writer naturally binds.
_NATURAL = {
    "string": "text",
    "int": "integer",
    "integer": "integer",
    "bigint": "bigint",
    "smallint": "smallint",
    "tinyint": "smallint",
    "double": "double precision",
    "float": "real",
    "boolean": "boolean",
    "date": "date",
    "binary": "bytea",
}
_NUMERIC_NATURAL = {"integer", "bigint", "smallint", "double precision", "real", "numeric"}


def q(name: str, field: str = "column") -> str:
    """Quote one identifier (validated)."""
    return quote_identifier(name, field)


def qualified(schema: str, name: str, field: str = "table") -> str:
    """``"schema"."name"`` (both validated)."""
    return f"{q(schema, field)}.{q(name, field)}"


def staging_table_name(schema: str, table: str, load_id: str) -> str:
    """The staging table's (unquoted) name: derived from the target and the load id, at most 50 chars.

    The same target and load id always give the same name, so a re-run after a crash finds (and
    replaces) the staging table the crashed run left behind.
    """
    digest = hashlib.sha256(f"{schema}.{table}\x00{load_id}".encode()).hexdigest()[:12]
    return f"{STAGING_PREFIX}{table[:24]}_{digest}"


def rejects_table_name(staging: str) -> str:
    """The table that holds the rejected row ids and PostgreSQL's messages for a staging table."""
    return f"{staging}_rej"


def natural_pg_type(spark_type: str) -> str | None:
    """The PostgreSQL type Spark's JDBC writer binds for a Spark SQL type (``DataType.simpleString()``)."""
    spark_type = spark_type.strip().lower()
    if spark_type.startswith("decimal"):
        return "numeric"
    return _NATURAL.get(spark_type)


@dataclass(frozen=True)
class StagedColumn:
    """One column of the load: its name in the target, its staging type, and how it is merged.

    :param name: the target column's name (also the staging column's name).
    :param source: the DataFrame column it comes from.
    :param staging_type: the staging table's column type: the target's type *without* length or
        precision modifiers (so ``varchar(10)`` stages as ``character varying`` and an over-long value
        fails in the merge, where it can be isolated, not in Spark's write), or ``text`` for a Spark
        string that goes to a non-text column, or Spark's own numeric type when it is wider.
    :param target_type: the target column's full type (``format_type`` with modifiers).
    :param cast: whether the merge casts explicitly (text into a non-text column: there is no
        assignment cast from text); otherwise PostgreSQL's assignment cast applies, which raises on
        an over-long string instead of truncating it like an explicit cast to ``varchar(n)`` would.
    """

    name: str
    source: str
    staging_type: str
    target_type: str
    cast: bool = False

    def expr(self, alias: str = "s") -> str:
        ref = f"{alias}.{q(self.name)}"
        return f"CAST({ref} AS {self.target_type})" if self.cast else ref


def staging_column_type(spark_type: str, target_base: str, target_category: str) -> tuple[str, bool]:
    """Choose a staging column type that accepts every value Spark can write.

    :param spark_type: the DataFrame column's ``DataType.simpleString()``.
    :param target_base: the target column's type without modifiers (``format_type(oid, NULL)``).
    :param target_category: ``pg_type.typcategory`` of the target column (``S`` string, ``N`` numeric ...).
    :return: ``(staging type, explicit cast needed in the merge)``.
    """
    if target_base == "bit":  # format_type(bit, NULL) means bit(1) in DDL
        target_base = "bit varying"
    if target_base == "character":  # likewise char(1): stage text, the merge's assignment cast checks the length
        target_base = "text"
    natural = natural_pg_type(spark_type)
    if natural == "text":
        if target_category == "S":
            return target_base, False
        return "text", True
    if natural is None or natural == target_base:
        return target_base, False
    if target_category == "N" and natural in _NUMERIC_NATURAL:
        return natural, False  # e.g. bigint staged, assignment cast to integer raises per row if out of range
    return target_base, False


#: Storage options of the load's own tables: autovacuum never takes them. They live for one load, and a 1M-row
#: staging table is due for an insert-triggered vacuum while the merge runs: the worker then spends a core on
#: a table about to go, and the load's ``DROP TABLE`` waits ``deadlock_timeout`` (1 s) until PostgreSQL
#: cancels it (measured: 2 of 3 rounds of ``benchmarks/bench_load_postgres.py`` lost 1.0 s that way).
WORK_TABLE_OPTIONS = "WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"


def create_staging_sql(staging: str, columns: Sequence[StagedColumn]) -> str:
    """``CREATE UNLOGGED TABLE`` for the staging table: nullable columns, no constraints, no indexes, no
    autovacuum (:data:`WORK_TABLE_OPTIONS`)."""
    cols = ", ".join(f"{q(c.name)} {c.staging_type}" for c in columns)
    return f"CREATE UNLOGGED TABLE {staging} ({q(ROW_ID)} bigint, {cols}) {WORK_TABLE_OPTIONS}"


#: Spark SQL simple type strings whose Arrow form the COPY staging writes as CSV PostgreSQL reads back
#: exactly (``decimal(p,s)``, ``char(n)`` and ``varchar(n)`` are matched by prefix). Anything else --
#: arrays, maps, structs, intervals, variants -- is staged with Spark's JDBC writer instead.
COPY_TYPES = frozenset({
    "string", "int", "integer", "bigint", "smallint", "tinyint", "double", "float", "boolean", "date",
    "timestamp", "timestamp_ntz", "binary",
})


def copy_supported(spark_type: str) -> bool:
    """Whether a column of this Spark type (``DataType.simpleString()``) can be staged with COPY."""
    spark_type = spark_type.strip().lower()
    return spark_type in COPY_TYPES or spark_type.startswith(("decimal(", "char(", "varchar("))


def copy_staging_sql(staging: str, columns: Sequence[StagedColumn], binary: bool = False) -> str:
    """``COPY staging (row id, columns) FROM STDIN`` in CSV format (``binary``: PostgreSQL's binary format).

    CSV, not text: in CSV a NULL is an unquoted empty field and every string is quoted (Arrow's CSV
    writer quotes every string value), so an empty string stays an empty string, and tabs, newlines,
    backslashes and a lone ``\\.`` inside a quoted value are plain data.
    """
    cols = ", ".join([q(ROW_ID), *(q(c.name) for c in columns)])
    return f"COPY {staging} ({cols}) FROM STDIN (FORMAT {'binary' if binary else 'csv'})"


#: Staging types a Spark type's binary COPY form (``jvm/src/.../CopyBinary.java``) also fits, besides its
#: natural type (:func:`natural_pg_type`): the receive functions of these read the same bytes.
_BINARY_ALSO = {
    "string": frozenset({"character varying"}),
    "timestamp": frozenset({"timestamp with time zone", "timestamp without time zone"}),
    "timestamp_ntz": frozenset({"timestamp without time zone"}),
}


def binary_copy_supported(spark_type: str, staging_type: str) -> bool:
    """Whether a Spark column can be sent in binary COPY form into a staging column of this type.

    Binary COPY has no text to convert: a value must arrive in its staging type's own form, so only a
    column staged as its natural type (a string into ``text``, a ``bigint`` into ``bigint``, a ``decimal``
    into ``numeric`` ...) or one of :data:`_BINARY_ALSO` qualifies; anything else (an ``int`` into a ``text``
    column, a domain, an enum) keeps the load on CSV.

    :param spark_type: the DataFrame column's ``DataType.simpleString()``.
    :param staging_type: the staging column's type (:attr:`StagedColumn.staging_type`).
    """
    spark_type = spark_type.strip().lower()
    if spark_type.startswith(("char(", "varchar(")):
        spark_type = "string"
    return staging_type == natural_pg_type(spark_type) or staging_type in _BINARY_ALSO.get(spark_type, frozenset())


#: Staging column types a string key can have without an explicit cast (compared under ``COLLATE "C"``).
_COLLATABLE_STAGING = frozenset({"text", "character varying", "character", "bpchar"})


def create_rejects_sql(rejects: str) -> str:
    return (
        f"CREATE UNLOGGED TABLE {rejects} ({q(ROW_ID)} bigint PRIMARY KEY, {q(ERROR)} text, {q(ERROR_CLASS)} text) "
        f"{WORK_TABLE_OPTIONS}"
    )


def _dedup_exprs(keys: Sequence[str], alias: str = "s") -> list[str]:
    """``DISTINCT ON`` expressions: the keys, plus the row id when a key is NULL (NULL keys never
    collapse: each such row goes to PostgreSQL, which rejects it if the key is NOT NULL)."""
    refs = [f"{alias}.{q(k, 'keys')}" for k in keys]
    any_null = " OR ".join(f"{r} IS NULL" for r in refs)
    return [*refs, f"(CASE WHEN {any_null} THEN {alias}.{q(ROW_ID)} END)"]


def dedup_source_sql(staging: str, keys: Sequence[str], columns: str = "s.*") -> str:
    """The staged rows with one row per key: the one with the highest row id (the last one) wins."""
    exprs = ", ".join(_dedup_exprs(keys))
    return (
        f"SELECT DISTINCT ON ({exprs}) {columns} FROM {staging} s "
        f"ORDER BY {exprs}, s.{q(ROW_ID)} DESC"
    )


def on_conflict_sql(keys: Sequence[str], columns: Sequence[StagedColumn]) -> str:
    """``ON CONFLICT (keys) DO UPDATE SET c = EXCLUDED.c`` for every non-key column.

    When every column is a key, the keys are "updated" to themselves so that the statement's row
    count still counts every applied row (``DO NOTHING`` would not count the conflicting ones).
    """
    conflict = ", ".join(q(k, "keys") for k in keys)
    key_set = set(keys)
    targets = [c.name for c in columns if c.name not in key_set] or list(keys)
    sets = ", ".join(f"{q(n)} = EXCLUDED.{q(n)}" for n in targets)
    return f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"


def insert_prefix(target: str, columns: Sequence[StagedColumn]) -> str:
    return f"INSERT INTO {target} ({', '.join(q(c.name) for c in columns)}) "


def fast_merge_sql(
    mode: Mode, target: str, staging: str, columns: Sequence[StagedColumn], keys: Sequence[str], dedup: bool = True
) -> str:
    """The one set-based statement that moves every staged row into the target (the clean path).

    :param dedup: (upsert) collapse duplicate keys first; ``False`` when the staging has none.
    """
    select = ", ".join(c.expr() for c in columns)
    if mode == "upsert" and not dedup:
        return insert_prefix(target, columns) + f"SELECT {select} FROM {staging} s" + on_conflict_sql(keys, columns)
    if mode == "upsert":
        exprs = ", ".join(_dedup_exprs(keys))
        return (
            insert_prefix(target, columns)
            + f"SELECT DISTINCT ON ({exprs}) {select} FROM {staging} s ORDER BY {exprs}, s.{q(ROW_ID)} DESC"
            + on_conflict_sql(keys, columns)
        )
    return insert_prefix(target, columns) + f"SELECT {select} FROM {staging} s"


def unique_indexes_sql() -> str:
    """Every valid, plain (no predicate, no expression) unique index of the table named by the one
    parameter: ``(column names, checked row by row)`` -- the second ``False`` for a ``DEFERRABLE``
    constraint's index, checked at commit."""
    return (
        "SELECT array_agg(a.attname::text), i.indimmediate FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) "
        "AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL "
        "GROUP BY i.indexrelid, i.indimmediate"
    )


def staging_counts_sql(staging: str, keys: Sequence[str] = (), row_ids: bool = True) -> str:
    """One scan of the staging table: ``count(*)``, distinct row ids, and with ``keys`` (upsert) the rows
    whose key has no NULL and their distinct keys -- equal when no key occurs twice, so the merge needs
    no dedup (rows with a NULL in the key never collapse anyway).

    :param row_ids: count the distinct row ids; ``False`` repeats ``count(*)`` instead, for a caller that
        knows how many rows the writers staged and compares it with ``count(*)`` (the distinct count is a
        sort or hash of every row id: a third of this scan's time for 1M rows).
    """
    rid = q(ROW_ID)
    sql = f"SELECT count(*), count(DISTINCT s.{rid})" if row_ids else "SELECT count(*), count(*)"
    if keys:
        refs = [f"s.{q(k, 'keys')}" for k in keys]
        present = " AND ".join(f"{r} IS NOT NULL" for r in refs)
        key = refs[0] if len(refs) == 1 else f"ROW({', '.join(refs)})"
        sql += f", count(*) FILTER (WHERE {present}), count(DISTINCT {key}) FILTER (WHERE {present})"
    return sql + f" FROM {staging} s"


def merge_upsert_sql(target: str, source: str, columns: Sequence[StagedColumn], keys: Sequence[str]) -> str:
    """``MERGE`` (PostgreSQL 15+) of ``source`` (a table or a parenthesised query, one row per key) into
    ``target``: matched keys update every non-key column, the others are inserted.

    Cheaper than ``INSERT ... ON CONFLICT DO UPDATE`` (no speculative insertion: ~25% less CPU and WAL
    for an upsert into a table holding half the keys), the same result: the join compares a key the
    way the stored key will compare -- the merge's own cast for a column staged as text, otherwise the
    staged value (a string key under ``COLLATE "C"``, bytewise: never coarser than the unique index's
    equality). A key that matches less than ``ON CONFLICT`` would (a rounding numeric key, a
    case-insensitive collation) fails with a unique violation, and the caller then falls back to
    ``INSERT ... ON CONFLICT``: ``MERGE`` never updates a row ``ON CONFLICT`` would not.
    """
    by_name = {c.name: c for c in columns}
    key_set = set(keys)

    def key_ref(k: str) -> str:
        c = by_name[k]
        if not c.cast and c.staging_type in _COLLATABLE_STAGING:
            return f's.{q(k, "keys")} COLLATE "C"'
        return c.expr("s")

    on = " AND ".join(f"t.{q(k, 'keys')} = {key_ref(k)}" for k in keys)
    updated = [c for c in columns if c.name not in key_set] or [by_name[k] for k in keys]
    sets = ", ".join(f"{q(c.name)} = {c.expr('s')}" for c in updated)
    names = ", ".join(q(c.name) for c in columns)
    values = ", ".join(c.expr("s") for c in columns)
    return (f"MERGE INTO {target} AS t USING {source} AS s ON {on} WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})")


def key_order_sample_sql(staging: str, keys: Sequence[str], rows: int) -> str:
    """Of the first ``rows`` staged rows in physical order: how many have a greater key than the row
    before, how many a smaller one, how many have a row before. Rows staged in key order (by any number
    of writers: each fills its own pages) are nearly all one way; rows in random key order half and half."""
    refs = [f"s.{q(k, 'keys')}" for k in keys]
    key = refs[0] if len(refs) == 1 else f"ROW({', '.join(refs)})"
    return (
        "SELECT count(*) FILTER (WHERE k > p), count(*) FILTER (WHERE k < p), count(p) FROM "
        f"(SELECT k, lag(k) OVER (ORDER BY c) AS p FROM (SELECT s.ctid AS c, {key} AS k FROM {staging} s "
        f"LIMIT {int(rows)}) x) y"
    )


def upsert_source_sql(staging: str, keys: Sequence[str], dedup: bool, ordered: bool) -> str:
    """The MERGE source: the staging table itself, or deduplicated (:func:`dedup_source_sql`, which also
    sorts by key), or sorted by key (index locality for rows staged in random key order)."""
    if dedup:
        return f"({dedup_source_sql(staging, keys)})"
    if ordered:
        order = ", ".join(f"s.{q(k, 'keys')}" for k in keys)
        return f"(SELECT s.* FROM {staging} s ORDER BY {order})"
    return staging


def work_table_sql(mode: Mode, work: str, staging: str, keys: Sequence[str]) -> str:
    """The slow path's work table: the rows to apply (deduplicated for upsert) with a dense ordinal."""
    source = dedup_source_sql(staging, keys) if mode == "upsert" else f"SELECT s.* FROM {staging} s"
    return (
        f"CREATE TEMP TABLE {work} ON COMMIT DROP AS SELECT row_number() OVER (ORDER BY w.{q(ROW_ID)}) "
        f"AS {q(ORDINAL)}, w.* FROM ({source}) w"
    )


def range_merge_sql(
    mode: Mode, target: str, work: str, columns: Sequence[StagedColumn], keys: Sequence[str]
) -> str:
    """Apply the work table's rows with ordinal in ``[%s, %s]`` (two parameters)."""
    select = ", ".join(c.expr() for c in columns)
    sql = insert_prefix(target, columns) + f"SELECT {select} FROM {work} s WHERE s.{q(ORDINAL)} BETWEEN %s AND %s"
    if mode == "upsert":
        sql += on_conflict_sql(keys, columns)
    return sql


def superseded_rejects_sql(staging: str, rejects: str, keys: Sequence[str]) -> str:
    """Reject the earlier rows of every key whose last row was rejected (upsert): they were superseded
    by a row that did not load, so the key did not change and none of its rows counts as loaded."""
    on = " AND ".join(f"e.{q(k, 'keys')} = w.{q(k, 'keys')}" for k in keys)
    rid = q(ROW_ID)
    return (
        f"INSERT INTO {rejects} ({rid}, {q(ERROR)}, {q(ERROR_CLASS)}) "
        f"SELECT e.{rid}, 'superseded by rejected row ' || w.{rid} || ' with the same key: ' || r.{q(ERROR)}, "
        f"r.{q(ERROR_CLASS)} FROM {rejects} r JOIN {staging} w ON w.{rid} = r.{rid} "
        f"JOIN {staging} e ON {on} AND e.{rid} < w.{rid} ON CONFLICT DO NOTHING"
    )


def create_load_log_sql(log: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {log} (table_name text NOT NULL, load_id text NOT NULL, "
        "mode text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now(), rows bigint NOT NULL, "
        "rows_read bigint NOT NULL, rows_rejected bigint NOT NULL, PRIMARY KEY (table_name, load_id))"
    )


_LENGTH = re.compile(r"^(?:character varying|character|bit varying|bit)\((\d+)\)$")


def declared_length(full_type: str) -> int | None:
    """The declared length of ``varchar(n)`` / ``char(n)`` (``format_type`` spelling), else ``None``."""
    match = _LENGTH.match(full_type)
    return int(match.group(1)) if match and full_type.startswith("character") else None


_SPACES = re.compile(r"\s+")


def one_line(sql: str) -> str:
    """Collapse whitespace, for logs."""
    return _SPACES.sub(" ", sql).strip()


#: A transaction-local helper (``pg_temp``) that applies rows one by one, each in its own subtransaction (a
#: PL/pgSQL exception block: what a savepoint is), inside the server: one round trip for every suspect row
#: instead of three or four. A data error (SQLSTATE classes 22 and 23: what :func:`classify_postgres` calls
#: ``DATA``) is returned with its row; any other error ends the call (and the load) as it would have before.
APPLY_ROWS_FUNCTION = "pg_temp._etl_apply_rows"


def apply_rows_function_sql() -> str:
    """``CREATE FUNCTION`` of :data:`APPLY_ROWS_FUNCTION` ``(stmt text, ids bigint[])``: runs ``stmt`` (one
    ``$1`` parameter, the row id) for each id in order; one result row per id: ``(row_id, applied, state,
    message, detail, hint)``, the last four NULL unless the statement failed with a data error."""
    return f"""CREATE OR REPLACE FUNCTION {APPLY_ROWS_FUNCTION}(stmt text, ids bigint[])
RETURNS TABLE (row_id bigint, applied bigint, state text, message text, detail text, hint text)
LANGUAGE plpgsql AS $etl$
BEGIN
  FOREACH row_id IN ARRAY ids LOOP
    state := NULL; message := NULL; detail := NULL; hint := NULL;
    BEGIN
      EXECUTE stmt USING row_id;
      GET DIAGNOSTICS applied = ROW_COUNT;
    EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
      applied := 0;
      GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL,
        hint = PG_EXCEPTION_HINT;
    END;
    RETURN NEXT;
  END LOOP;
END
$etl$"""


def server_error_message(message: str, detail: str | None, hint: str | None) -> str:
    """An error's text as psycopg 3 words it (libpq's default verbosity without the severity): the message,
    then ``DETAIL:`` and ``HINT:`` lines when present."""
    lines = [message]
    if detail:
        lines.append(f"DETAIL:  {detail}")
    if hint:
        lines.append(f"HINT:  {hint}")
    return "\n".join(lines).strip()
