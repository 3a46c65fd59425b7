"""The load engine's pure SQL builders."""

from __future__ import annotations

import pytest

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError


def test_staging_name_is_deterministic_short_and_per_load() -> None:
    a = S.staging_table_name("public", "orders" * 20, "run-1")
    assert a == S.staging_table_name("public", "orders" * 20, "run-1")
    assert a != S.staging_table_name("public", "orders" * 20, "run-2")
    assert a.startswith("_etl_stg_") and len(S.rejects_table_name(a)) <= 63


@pytest.mark.parametrize(
    ("spark", "base", "cat", "expected"),
    [
        ("string", "character varying", "S", ("character varying", False)),  # no length: checked in the merge
        ("string", "integer", "N", ("text", True)),  # bad casts fail per row in the merge
        ("string", "jsonb", "U", ("text", True)),
        ("bigint", "integer", "N", ("bigint", False)),  # out-of-range fails per row
        ("int", "bigint", "N", ("integer", False)),
        ("decimal(10,2)", "numeric", "N", ("numeric", False)),
        ("timestamp", "timestamp with time zone", "D", ("timestamp with time zone", False)),
        ("int", "bit", "V", ("bit varying", False)),
        ("string", "character", "S", ("text", False)),  # format_type(bpchar, NULL) = char(1) in DDL
    ],
)
def test_staging_column_types_accept_what_spark_writes(spark, base, cat, expected) -> None:
    assert S.staging_column_type(spark, base, cat) == expected


def test_upsert_merge_dedups_last_row_wins_and_updates_non_keys() -> None:
    cols = [S.StagedColumn("id", "id", "integer", "integer"), S.StagedColumn("v", "v", "text", "integer", True)]
    sql = S.fast_merge_sql("upsert", '"public"."t"', '"public"."stg"', cols, ["id"])
    assert sql.startswith('INSERT INTO "public"."t" ("id", "v") SELECT DISTINCT ON (s."id", (CASE WHEN s."id" IS NULL')
    assert 'CAST(s."v" AS integer)' in sql
    assert 's."_etl_row_id" DESC ON CONFLICT ("id") DO UPDATE SET "v" = EXCLUDED."v"' in sql
    only_keys = S.on_conflict_sql(["id"], cols[:1])
    assert only_keys == ' ON CONFLICT ("id") DO UPDATE SET "id" = EXCLUDED."id"'


def test_upsert_without_duplicate_keys_skips_the_dedup() -> None:
    cols = [S.StagedColumn("id", "id", "integer", "integer"), S.StagedColumn("v", "v", "text", "text")]
    assert S.fast_merge_sql("upsert", '"t"', '"stg"', cols, ["id"], dedup=False) == (
        'INSERT INTO "t" ("id", "v") SELECT s."id", s."v" FROM "stg" s ON CONFLICT ("id") DO UPDATE SET "v" = EXCLUDED."v"')
    assert S.staging_counts_sql('"stg"', ["id"]) == (
        'SELECT count(*), count(DISTINCT s."_etl_row_id"), count(*) FILTER (WHERE s."id" IS NOT NULL), '
        'count(DISTINCT s."id") FILTER (WHERE s."id" IS NOT NULL) FROM "stg" s')
    assert 'count(DISTINCT ROW(s."a", s."b")) FILTER (WHERE s."a" IS NOT NULL AND s."b" IS NOT NULL)' in (
        S.staging_counts_sql('"stg"', ["a", "b"]))
    assert S.staging_counts_sql('"stg"') == 'SELECT count(*), count(DISTINCT s."_etl_row_id") FROM "stg" s'


def test_merge_upsert_joins_on_the_stored_key_and_updates_non_keys() -> None:
    cols = [S.StagedColumn("id", "id", "text", "uuid", True), S.StagedColumn("code", "code", "character varying",
                                                                          "character varying(8)"),
            S.StagedColumn("v", "v", "bigint", "integer")]
    sql = S.merge_upsert_sql('"public"."t"', '"public"."stg"', cols, ["id", "code"])
    assert sql == (
        'MERGE INTO "public"."t" AS t USING "public"."stg" AS s ON t."id" = CAST(s."id" AS uuid) AND '
        't."code" = s."code" COLLATE "C" WHEN MATCHED THEN UPDATE SET "v" = s."v" WHEN NOT MATCHED THEN '
        'INSERT ("id", "code", "v") VALUES (CAST(s."id" AS uuid), s."code", s."v")')
    only_keys = S.merge_upsert_sql('"t"', '"stg"', cols[1:2], ["code"])
    assert 'UPDATE SET "code" = s."code" WHEN' in only_keys  # counted as applied, like ON CONFLICT
    assert S.upsert_source_sql('"stg"', ["id"], dedup=False, ordered=False) == '"stg"'
    assert S.upsert_source_sql('"stg"', ["id"], dedup=False, ordered=True) == '(SELECT s.* FROM "stg" s ORDER BY s."id")'
    assert S.upsert_source_sql('"stg"', ["id"], dedup=True, ordered=True).startswith('(SELECT DISTINCT ON (s."id"')
    order = S.key_order_sample_sql('"stg"', ["a", "b"], 500)
    assert 'ROW(s."a", s."b") AS k FROM "stg" s LIMIT 500' in order and "lag(k) OVER (ORDER BY c)" in order
    with pytest.raises(ConfigError, match="^keys: "):
        S.merge_upsert_sql('"t"', '"stg"', [S.StagedColumn('a"b', "a", "text", "text")], ['a"b'])


def test_append_merge_is_a_plain_insert_select() -> None:
    cols = [S.StagedColumn("id", "id", "integer", "integer")]
    assert S.fast_merge_sql("append", '"t"', '"stg"', cols, []) == 'INSERT INTO "t" ("id") SELECT s."id" FROM "stg" s'


def test_builders_quote_and_refuse_injection() -> None:
    with pytest.raises(ConfigError, match="^keys: "):
        S.on_conflict_sql(['id"); DROP TABLE t; --'], [])
    with pytest.raises(ConfigError, match="^column: "):
        S.create_staging_sql('"stg"', [S.StagedColumn('a"b', "a", "text", "text")])


def test_declared_length() -> None:
    assert S.declared_length("character varying(8)") == 8
    assert S.declared_length("character(3)") == 3
    assert S.declared_length("character varying") is None
    assert S.declared_length("bit(3)") is None


def test_copy_staging_sql_lists_the_row_id_and_every_column_in_csv_format() -> None:
    cols = [S.StagedColumn("id", "id", "integer", "integer"), S.StagedColumn("Note", "note", "text", "text")]
    assert S.copy_staging_sql('"public"."stg"', cols) == (
        'COPY "public"."stg" ("_etl_row_id", "id", "Note") FROM STDIN (FORMAT csv)')
    with pytest.raises(ConfigError, match="^column: "):
        S.copy_staging_sql('"stg"', [S.StagedColumn('a" text); DROP TABLE t; --', "a", "text", "text")])
    assert S.copy_staging_sql('"stg"', cols, binary=True) == (
        'COPY "stg" ("_etl_row_id", "id", "Note") FROM STDIN (FORMAT binary)')


@pytest.mark.parametrize(
    ("spark", "staging", "binary"),
    [
        ("string", "text", True), ("varchar(10)", "character varying", True), ("char(3)", "text", True),
        ("bigint", "bigint", True), ("int", "integer", True), ("integer", "integer", True),
        ("smallint", "smallint", True), ("tinyint", "smallint", True), ("boolean", "boolean", True),
        ("double", "double precision", True), ("float", "real", True), ("decimal(12,2)", "numeric", True),
        ("decimal(38,18)", "numeric", True), ("date", "date", True),
        ("timestamp", "timestamp with time zone", True), ("timestamp", "timestamp without time zone", True),
        ("timestamp_ntz", "timestamp without time zone", True), ("binary", "bytea", True),
        # a value whose binary form is not its staging type's: CSV
        ("int", "text", False), ("bigint", "integer", False), ("string", "jsonb", False), ("string", "citext", False),
        ("timestamp", "date", False), ("timestamp_ntz", "timestamp with time zone", False),
        ("double", "numeric", False), ("decimal(10,0)", "bigint", False), ("array<int>", "integer[]", False),
        ("boolean", "text", False),
    ],
)
def test_binary_copy_only_where_the_value_arrives_in_its_staging_types_own_form(spark, staging, binary) -> None:
    assert S.binary_copy_supported(spark, staging) is binary


@pytest.mark.parametrize(
    ("spark", "supported"),
    [
        ("string", True), ("bigint", True), ("int", True), ("tinyint", True), ("double", True), ("float", True),
        ("boolean", True), ("date", True), ("timestamp", True), ("timestamp_ntz", True), ("binary", True),
        ("decimal(38,18)", True), ("varchar(10)", True), ("char(3)", True),
        ("array<int>", False), ("map<string,int>", False), ("struct<a:int>", False),
        ("interval day to second", False), ("void", False), ("variant", False),
    ],
)
def test_copy_supported_types(spark: str, supported: bool) -> None:
    assert S.copy_supported(spark) is supported


def test_unique_indexes_sql_reports_each_index_columns_and_whether_it_is_checked_row_by_row() -> None:
    sql = S.unique_indexes_sql()
    assert sql.startswith("SELECT array_agg(a.attname::text), i.indimmediate FROM pg_index i")
    assert "i.indisunique" in sql and "i.indpred IS NULL AND i.indexprs IS NULL" in sql
    assert sql.count("%s") == 1
