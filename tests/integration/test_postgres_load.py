"""The PostgreSQL load engine against the real local PostgreSQL and an embedded Spark session."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError, RowAccountingError
from airflow_etl_provider.executor.postgres_copy import copy_writer
from airflow_etl_provider.hooks.postgres_load import PostgresLoader

pytestmark = pytest.mark.spark


def _rows(cur, table: str) -> list[tuple]:
    cur.execute(f"SELECT * FROM {table} ORDER BY 1")
    return [tuple(r) for r in cur.fetchall()]


def _staging_tables(cur, table: str) -> list[str]:
    cur.execute("SELECT relname FROM pg_class WHERE relname LIKE %s", (f"\\_etl\\_stg\\_{table[:24]}%",))
    return [r[0] for r in cur.fetchall()]


def _make(cur, drop: list[str], name: str, ddl: str) -> str:
    cur.execute(f"CREATE TABLE {name} {ddl}")
    drop.append(name)
    return name


def _upsert_with_staging(spark, hook, cur, drop: list[str], name: str) -> tuple:
    """A table ``(id int PRIMARY KEY, val text)``, an upsert loader on ``id`` and its plan, the staging
    tables created (the caller drops them with ``loader._drop_staging(plan)``)."""
    t = _make(cur, drop, name, "(id int PRIMARY KEY, val text)")
    df = spark.createDataFrame([(1, "x")], "id INT, val STRING")
    loader = PostgresLoader(hook, t, "upsert", keys=["id"])
    plan = loader._prepare(loader._df_columns(df))
    loader._create_staging(plan)
    return t, loader, plan


# ------------------------------------------------------------------------------------------ upsert


@pytest.mark.parametrize("stage_method", ["copy", "jdbc"])
def test_upsert_updates_existing_keys_inserts_new_and_is_idempotent(spark, hook, pg, unique, stage_method) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lu_{stage_method}_{unique}", "(id int PRIMARY KEY, val text NOT NULL, qty int)")
    cur.execute(f"INSERT INTO {t} SELECT g, 'old', 0 FROM generate_series(1, 50) g")
    df = spark.createDataFrame([(i, f"new{i}", i) for i in range(26, 101)], "id INT, val STRING, qty INT")

    out = PostgresLoader(hook, t, "upsert", keys=["id"], load_id="run-1", stage_method=stage_method).load(df)
    assert (out.records_read, out.records_loaded, out.records_rejected) == (75, 75, 0)
    assert out.stage_method == stage_method
    assert out.rejected is None and not out.skipped and not out.isolated
    expected = [(i, "old", 0) for i in range(1, 26)] + [(i, f"new{i}", i) for i in range(26, 101)]
    assert _rows(cur, t) == expected
    assert _staging_tables(cur, t) == []

    again = PostgresLoader(hook, t, "upsert", keys=["id"], load_id="run-1").load(df)  # same load id: no-op
    assert again.skipped and (again.records_read, again.records_loaded, again.records_rejected) == (75, 75, 0)
    redo = PostgresLoader(hook, t, "upsert", keys=["id"], load_id="run-2").load(df)  # a redo: same result
    assert (redo.records_read, redo.records_loaded) == (75, 75)
    assert _rows(cur, t) == expected


def test_upsert_in_batch_duplicate_keys_last_row_wins(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"ld_{unique}", "(id int PRIMARY KEY, val text, qty int CHECK (qty >= 0))")
    cur.execute(f"INSERT INTO {t} VALUES (3, 'before', 0)")
    rows = [(1, "a", 1), (2, "b", 1), (1, "c", 1), (1, "d", 1), (3, "x", 1), (3, "y", -1)]
    df = spark.createDataFrame(rows, "id INT, val STRING, qty INT").coalesce(1)  # DataFrame order = row id order

    out = PostgresLoader(hook, t, "upsert", keys=["id"]).load(df)
    # key 1: "d" (the last) wins, "a" and "c" are superseded and count as loaded; key 3: the last row
    # breaks the CHECK, so key 3 keeps its old value and both of its rows are rejected.
    assert _rows(cur, t) == [(1, "d", 1), (2, "b", 1), (3, "before", 0)]
    assert (out.records_read, out.records_loaded, out.records_rejected) == (6, 4, 2)
    assert out.records_superseded == 3
    rejected = {r["val"]: r for r in out.rejected.collect()}
    assert set(rejected) == {"x", "y"}
    assert 'violates check constraint' in rejected["y"]["_etl_error"]
    assert rejected["y"]["_etl_error_class"] == "psycopg.errors.CheckViolation"
    assert rejected["x"]["_etl_error"].startswith("superseded by rejected row")


def _count_insert_triggers(cur, drop: list[str], t: str) -> str:
    """A BEFORE INSERT row trigger on ``t`` counting its calls: MERGE fires it for the inserted rows only,
    INSERT ... ON CONFLICT for every row (conflicting ones too) -- so it tells which statement applied them."""
    calls = _make(cur, drop, f"{t}_calls", "(n int)")
    cur.execute(f"CREATE FUNCTION {t}_count() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN INSERT INTO {calls} VALUES (1); RETURN NEW; END $$")
    cur.execute(f"CREATE TRIGGER {t}_count BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_count()")
    return calls


def _calls(cur, calls: str) -> int:
    cur.execute(f"SELECT count(*) FROM {calls}")
    n = int(cur.fetchone()[0])
    cur.execute(f"TRUNCATE {calls}")
    return n


def test_upsert_is_one_merge_sorted_or_deduplicated_as_needed_else_insert_on_conflict(spark, hook, pg, unique) -> None:
    """Upserts run as MERGE: rows in random key order are sorted by key first, duplicate keys collapsed
    (last row wins) only when there are any. A key that only matches once stored (a rounded numeric, a
    case-insensitive collation) or a target MERGE cannot take (a rule) goes through INSERT ... ON CONFLICT:
    same rows, same counts."""
    cur, drop = pg
    t = _make(cur, drop, f"lm_{unique}", "(id int PRIMARY KEY, val text NOT NULL)")
    calls = _count_insert_triggers(cur, drop, t)
    try:
        _merge_or_on_conflict(spark, hook, cur, drop, unique, t, calls)
    finally:
        cur.execute(f"DROP FUNCTION IF EXISTS {t}_count() CASCADE")


def _merge_or_on_conflict(spark, hook, cur, drop: list[str], unique: str, t: str, calls: str) -> None:
    import random

    cur.execute(f"INSERT INTO {t} SELECT g, 'old' FROM generate_series(2, 3000, 2) g")
    _calls(cur, calls)
    keys = list(range(1, 3001))
    random.Random(7).shuffle(keys)  # random key order: the MERGE source is sorted by key
    df = spark.createDataFrame([(k, f"new{k}") for k in keys], "id INT, val STRING").coalesce(1)
    out = PostgresLoader(hook, t, "upsert", keys=["id"]).load(df)
    assert (out.records_read, out.records_loaded, out.records_rejected, out.records_superseded) == (3000, 3000, 0, 0)
    assert _rows(cur, t) == [(k, f"new{k}") for k in range(1, 3001)]
    assert _calls(cur, calls) == 1500  # MERGE: only the 1500 new keys were inserted

    dups = spark.createDataFrame([(1, "a"), (5001, "b"), (1, "c"), (5001, "d"), (7, "e")], "id INT, val STRING").coalesce(1)
    out = PostgresLoader(hook, t, "upsert", keys=["id"]).load(dups)
    assert (out.records_read, out.records_loaded, out.records_superseded) == (5, 5, 2)
    assert [r for r in _rows(cur, t) if r[0] in (1, 7, 5001)] == [(1, "c"), (7, "e"), (5001, "d")]
    assert _calls(cur, calls) == 1  # still MERGE (deduplicated): one new key

    cur.execute(f"CREATE RULE {t}_r AS ON DELETE TO {t} DO ALSO NOTHING")  # MERGE refuses tables with rules
    out = PostgresLoader(hook, t, "upsert", keys=["id"]).load(dups)
    assert (out.records_read, out.records_loaded, out.records_superseded) == (5, 5, 2)
    assert _calls(cur, calls) == 3  # INSERT ... ON CONFLICT: one trigger call per deduplicated row

    n = _make(cur, drop, f"ln_{unique}", "(k numeric(6,1) PRIMARY KEY, v text)")
    cur.execute(f"INSERT INTO {n} VALUES (1.0, 'old'), (2.0, 'old')")
    df = spark.createDataFrame([(Decimal("1.04"), "new"), (Decimal("3.00"), "new")], "k DECIMAL(6,2), v STRING")
    out = PostgresLoader(hook, n, "upsert", keys=["k"]).load(df)  # 1.04 matches no key but is stored as 1.0
    assert (out.records_read, out.records_loaded, out.records_rejected) == (2, 2, 0)
    assert _rows(cur, n) == [(Decimal("1.0"), "new"), (Decimal("2.0"), "old"), (Decimal("3.0"), "new")]

    cur.execute("CREATE COLLATION IF NOT EXISTS etl_test_ci (provider = icu, locale = 'und-u-ks-level2', "
                "deterministic = false)")
    c = _make(cur, drop, f"lci_{unique}", "(code text COLLATE etl_test_ci PRIMARY KEY, v int)")
    cur.execute(f"INSERT INTO {c} VALUES ('ABC', 0)")
    df = spark.createDataFrame([("abc", 1), ("xyz", 1)], "code STRING, v INT")
    out = PostgresLoader(hook, c, "upsert", keys=["code"]).load(df)  # 'abc' = 'ABC' only case-insensitively
    assert (out.records_read, out.records_loaded, out.records_rejected) == (2, 2, 0)
    assert sorted(_rows(cur, c)) == [("ABC", 1), ("xyz", 1)]


def test_copy_upsert_merges_before_counting_and_lets_the_counts_decide_otherwise(
    spark, hook, pg, unique, caplog
) -> None:
    """Staged by COPY, a clean upsert is MERGEd first and checked after (no count of distinct keys). A key
    twice in the batch (one the target holds, one new), a bad row, a trigger that drops rows, a DEFERRABLE
    key: the MERGE is rolled back (or not tried) and the counts decide -- same rows, same numbers as ever;
    a MERGE that failed on a bad row is not run a second time."""
    import logging

    caplog.set_level(logging.DEBUG, logger="airflow_etl_provider")
    cur, drop = pg
    t = _make(cur, drop, f"lf_{unique}", "(id int PRIMARY KEY, val text NOT NULL)")
    cur.execute(f"INSERT INTO {t} SELECT g, 'old' FROM generate_series(2, 40, 2) g")
    schema = "id INT, val STRING"

    def load(rows, table=t):
        caplog.clear()
        df = spark.createDataFrame(rows, schema).coalesce(1)  # DataFrame order = row id order
        out = PostgresLoader(hook, table, "upsert", keys=["id"], stage_method="copy").load(df)
        assert out.stage_method == "copy"
        return (out.records_read, out.records_loaded, out.records_rejected, out.records_superseded), caplog.text

    numbers, text = load([(k, f"a{k}") for k in range(40, 0, -1)])  # descending keys: sorted first
    assert numbers == (40, 40, 0, 0)
    assert "40 row(s) merged before the counts" in text
    assert _rows(cur, t) == [(k, f"a{k}") for k in range(1, 41)]

    numbers, text = load([(2, "b"), (3, "c"), (2, "d")])  # key 2 is in the target: MERGE touches it twice
    assert numbers == (3, 3, 0, 1)
    assert "MERGE before the counts failed (psycopg.errors.CardinalityViolation)" in text
    assert "merged before the counts" not in text
    numbers, text = load([(100, "x"), (7, "e"), (100, "y")])  # key 100 is new: the second insert collides
    assert numbers == (3, 3, 0, 1)
    assert "MERGE before the counts failed (psycopg.errors.UniqueViolation)" in text
    assert [r for r in _rows(cur, t) if r[0] in (2, 3, 7, 100)] == [(2, "d"), (3, "c"), (7, "e"), (100, "y")]

    caplog.clear()
    df = spark.createDataFrame([(5, "f"), (6, None), (200, "g")], schema).coalesce(1)
    out = PostgresLoader(hook, t, "upsert", keys=["id"], stage_method="copy").load(df)
    assert (out.records_read, out.records_loaded, out.records_rejected) == (3, 2, 1)
    assert "MERGE before the counts failed (psycopg.errors.NotNullViolation)" in caplog.text
    assert "failed before the counts already (psycopg.errors.NotNullViolation): not run again" in caplog.text
    assert [r["id"] for r in out.rejected.collect()] == [6]
    assert [r for r in _rows(cur, t) if r[0] in (5, 6, 200)] == [(5, "f"), (6, "a6"), (200, "g")]  # 6 keeps its value

    # a trigger that silently drops rows: MERGE counts fewer rows than were staged, the counts then fail it
    cur.execute(f"CREATE FUNCTION {t}_drop() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN IF NEW.id % 7 = 0 THEN RETURN NULL; END IF; RETURN NEW; END $$")
    try:
        cur.execute(f"CREATE TRIGGER {t}_drop BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {t}_drop()")
        before = _rows(cur, t)
        with pytest.raises(RowAccountingError, match=r"10 row\(s\) to apply but 9 applied \+ 0 rejected"):
            load([(k, "t") for k in range(311, 321)])  # 315 = 7 * 45: dropped
        assert "MERGE before the counts applied 9 row(s), the writers staged 10: rolled back" in caplog.text
        assert _rows(cur, t) == before
    finally:
        cur.execute(f"DROP FUNCTION IF EXISTS {t}_drop() CASCADE")

    # a DEFERRABLE key is checked at commit only: a key twice would pass the MERGE, so the counts go first
    d = _make(cur, drop, f"lfd_{unique}",
              "(id int, val text, CONSTRAINT lfd_pk_" + unique + " PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED)")
    numbers, text = load([(1, "a"), (2, "b"), (1, "c")], table=d)
    assert numbers == (3, 3, 0, 1)
    assert "before the counts" not in text
    assert _rows(cur, d) == [(1, "c"), (2, "b")]


def test_upsert_without_unique_index_on_keys_is_refused(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lk_{unique}", "(id int PRIMARY KEY, code text, val text)")
    df = spark.createDataFrame([(1, "a", "x")], "id INT, code STRING, val STRING")
    with pytest.raises(ConfigError, match=r"keys: .*no primary key or unique index on exactly \(code\)"):
        PostgresLoader(hook, t, "upsert", keys=["code"]).load(df)


# ------------------------------------------------------------------------------------------ append


def test_append_with_load_id_rerun_is_a_noop(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"la_{unique}", "(id int, val text)")
    df = spark.createDataFrame([(i, f"v{i}") for i in range(40)], "id INT, val STRING")
    first = PostgresLoader(hook, t, "append", load_id="2026-11-25").load(df)
    second = PostgresLoader(hook, t, "append", load_id="2026-11-25").load(df)
    assert (first.records_read, first.records_loaded, first.skipped) == (40, 40, False)
    assert (second.records_read, second.records_loaded, second.skipped) == (40, 40, True)
    cur.execute(f"SELECT count(*) FROM {t}")
    assert cur.fetchone()[0] == 40
    cur.execute("SELECT rows, rows_read, rows_rejected, mode FROM etl_load_log WHERE table_name = %s AND "
                "load_id = %s", (f"public.{t}", "2026-11-25"))
    assert cur.fetchone() == (40, 40, 0, "append")
    third = PostgresLoader(hook, t, "append", load_id="2026-11-26").load(df)  # another load id loads
    assert third.records_loaded == 40


def test_crash_between_staging_and_merge_or_mid_merge_never_duplicates(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lc_{unique}", "(id int, val text)")
    df = spark.createDataFrame([(i, f"v{i}") for i in range(30)], "id INT, val STRING").repartition(3)

    # 1. the run stages its rows, then "dies" before the merge (staging left behind, possibly twice).
    crashed = PostgresLoader(hook, t, "append", load_id="L1")
    plan = crashed._prepare(crashed._df_columns(df))
    crashed._create_staging(plan)
    crashed._stage(df, plan)
    crashed._stage(df, plan)  # e.g. a Spark job retried after a partial failure: same row ids twice
    assert _staging_tables(cur, t)
    cur.execute(f"SELECT count(*) FROM {t}")
    assert cur.fetchone()[0] == 0

    # 2. the re-run dies mid-merge (after the INSERT, before the commit): everything rolls back. The "death"
    # is real: a trigger on the load log raises when the merge records its counts, its last statement.
    cur.execute(f"CREATE FUNCTION kill_merge_{unique}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'killed mid-merge'; END $$")
    cur.execute(f"CREATE TRIGGER kill_merge_{unique} BEFORE UPDATE ON public.etl_load_log FOR EACH ROW "
                f"WHEN (NEW.load_id = 'L1') EXECUTE FUNCTION kill_merge_{unique}()")
    try:
        with pytest.raises(Exception, match="killed mid-merge"):
            PostgresLoader(hook, t, "append", load_id="L1").load(df)
    finally:
        cur.execute(f"DROP TRIGGER kill_merge_{unique} ON public.etl_load_log")
        cur.execute(f"DROP FUNCTION kill_merge_{unique}()")
    cur.execute(f"SELECT count(*) FROM {t}")
    assert cur.fetchone()[0] == 0
    assert _staging_tables(cur, t) == []  # dropped also on failure

    # 3. a staged-but-not-merged run again, then the real re-run: exactly one copy of each row.
    crashed._create_staging(plan)
    crashed._stage(df, plan)
    out = PostgresLoader(hook, t, "append", load_id="L1").load(df)
    assert (out.records_read, out.records_loaded, out.records_rejected) == (30, 30, 0)
    assert sorted(_rows(cur, t)) == [(i, f"v{i}") for i in range(30)]

    # 4. the merge ran twice on a leftover staging table (the first merge "crashed" after its commit).
    crashed._create_staging(plan)
    crashed._stage(df, plan)
    try:
        assert crashed._merge(plan).skipped
    finally:
        crashed._drop_staging(plan)
    assert len(_rows(cur, t)) == 30
    assert _staging_tables(cur, t) == []


def test_staging_and_rejects_tables_are_never_taken_by_autovacuum(spark, hook, pg, unique) -> None:
    """The load's own tables (and their TOAST tables) opt out of autovacuum: an insert-triggered vacuum of a
    big staging table would run during the merge and make the load's DROP wait ``deadlock_timeout``."""
    cur, drop = pg
    _, loader, plan = _upsert_with_staging(spark, hook, cur, drop, f"lv_{unique}")
    try:
        cur.execute(
            "SELECT c.relname, c.reloptions, x.reloptions FROM pg_class c JOIN pg_class x ON x.oid = c.reltoastrelid "
            "WHERE c.oid IN (to_regclass(%s), to_regclass(%s)) ORDER BY c.relname",
            (plan.staging, plan.rejects),
        )
        rows = cur.fetchall()
    finally:
        loader._drop_staging(plan)
    assert len(rows) == 2, rows  # the staging and the rejects table, each with its TOAST table
    for name, options, toast_options in rows:
        assert options == ["autovacuum_enabled=false"], (name, options)
        assert toast_options == ["autovacuum_enabled=false"], (name, toast_options)


def test_merge_that_counts_its_own_rows_twice_reports_duplicate_stage(spark, hook, pg, unique) -> None:
    """A staging table holding a Spark task's rows twice (same row ids) loads each row once."""
    cur, drop = pg
    t = _make(cur, drop, f"ls_{unique}", "(id int PRIMARY KEY, val text)")
    df = spark.createDataFrame([(i, "v") for i in range(10)], "id INT, val STRING")
    loader = PostgresLoader(hook, t, "append")
    plan = loader._prepare(loader._df_columns(df))
    loader._create_staging(plan)
    loader._stage(df, plan)
    loader._stage(df, plan)
    try:
        result = loader._merge(plan)
    finally:
        loader._drop_staging(plan)
    assert (result.read, result.loaded, result.rejected) == (10, 10, 0)
    assert len(_rows(cur, t)) == 10


# --------------------------------------------------------------------------------------- overwrite


@pytest.mark.parametrize("method", ["delete", "truncate"])
def test_overwrite_is_atomic_for_a_concurrent_reader(spark, hook, pg, unique, method) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lo_{method[:3]}_{unique}", "(id int PRIMARY KEY, val text)")
    cur.execute(f"INSERT INTO {t} SELECT g, 'old' FROM generate_series(1, 3000) g")
    df = spark.range(20000).selectExpr("CAST(id AS INT) AS id", "'new' AS val")
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        conn = hook.get_conn()
        conn.autocommit = True
        c = conn.cursor()
        while not stop.is_set():
            c.execute(f"SELECT count(*) FROM {t}")
            seen.append(c.fetchone()[0])
        conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.2)
        out = PostgresLoader(hook, t, "overwrite", overwrite_method=method).load(df)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert out.records_loaded == 20000
    assert seen and set(seen) <= {3000, 20000}, sorted(set(seen))
    assert seen[0] == 3000 and seen[-1] == 20000


# ----------------------------------------------------------------------------------- poison rows


@pytest.mark.parametrize("screenable_only", [True, False], ids=["screened", "bisected"])
def test_poison_rows_of_each_kind_are_isolated_with_postgres_messages(spark, hook, pg, unique, screenable_only) -> None:
    """NOT NULL, CHECK, FK and length violations are caught by the set-based screen; a bad cast and unique
    violations (in the batch and against the table) only by chunks + bisection: both paths, same result."""
    cur, drop = pg
    cat = _make(cur, drop, f"lpc_{unique}", "(id int PRIMARY KEY)")
    cur.execute(f"INSERT INTO {cat} VALUES (1), (2)")
    t = _make(cur, drop, f"lp_{unique}", f"""(id int PRIMARY KEY, name varchar(8) NOT NULL,
        qty int CHECK (qty >= 0), cat_id int REFERENCES {cat} (id), code int)""")
    cur.execute(f"INSERT INTO {t} VALUES (1000, 'exists', 0, 1, 0)")
    good = [(i, f"n{i}", i, 1 + i % 2, str(i)) for i in range(200)]
    bad = {
        900: ((900, None, 1, 1, "1"), "NotNullViolation", 'null value in column "name"'),
        901: ((901, "n901", -5, 1, "1"), "CheckViolation", f'violates check constraint "{t}_qty_check"'),
        902: ((902, "n902", 1, 99, "1"), "ForeignKeyViolation", f'violates foreign key constraint "{t}_cat_id_fkey"'),
        903: ((903, "much-too-long", 1, 1, "1"), "StringDataRightTruncation",
              "value too long for type character varying(8)"),
        1000: ((1000, "clash", 1, 1, "1"), "UniqueViolation", f'duplicate key value violates unique constraint "{t}_pkey"'),
        904: ((904, "n904", 1, 1, "12x"), "InvalidTextRepresentation", 'invalid input syntax for type integer: "12x"'),
    }
    in_batch_dup = [(5, "dup5", 1, 1, "5")]  # a second row with key 5, later in the batch than the first
    if screenable_only:
        del bad[1000], bad[904]
        in_batch_dup = []
    rows = good[:100] + [b[0] for b in bad.values()] + good[100:] + in_batch_dup
    df = spark.createDataFrame(rows, "id INT, name STRING, qty INT, cat_id INT, code STRING").coalesce(2)

    out = PostgresLoader(hook, t, "append", chunk_rows=64).load(df)

    assert out.isolated
    assert (out.records_read, out.records_loaded, out.records_rejected) == (len(rows), 200, len(bad) + len(in_batch_dup))
    assert out.records_read == out.records_loaded + out.records_rejected
    expected = sorted([(i, n, q, c, int(s)) for i, n, q, c, s in good] + [(1000, "exists", 0, 1, 0)])
    assert _rows(cur, t) == expected
    rejected = {(r["id"], r["name"]): r.asDict() for r in out.rejected.collect()}
    assert set(rejected) == {(v[0][0], v[0][1]) for v in bad.values()} | {r[:2] for r in in_batch_dup}
    for key, (row, cls, message) in bad.items():
        r = rejected[(row[0], row[1])]
        assert (r["id"], r["name"], r["qty"], r["cat_id"], r["code"]) == row  # original columns, original types
        assert r["_etl_error_class"] == f"psycopg.errors.{cls}", key
        assert message in r["_etl_error"], (key, r["_etl_error"])
    if in_batch_dup:
        assert "Key (id)=(5) already exists" in rejected[(5, "dup5")]["_etl_error"]
    else:  # the screen isolated them: one statement for the rest + one savepoint per suspect, no bisection
        assert out.statements < 40, out.statements
    assert list(out.rejected.columns) == ["id", "name", "qty", "cat_id", "code", "_etl_error", "_etl_error_class"]
    assert _staging_tables(cur, t) == []


# ----------------------------------------------------------------------------------- bad config


def test_schema_mismatch_lists_every_problem(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lm_{unique}", "(id int PRIMARY KEY, name text NOT NULL, region text NOT NULL, "
              "created timestamptz NOT NULL DEFAULT now(), note text)")
    df = spark.createDataFrame([(1, "x", 2.0)], "id INT, colour STRING, weight DOUBLE")
    with pytest.raises(ConfigError) as info:
        PostgresLoader(hook, t, "append").load(df)
    message = str(info.value)
    assert message.startswith("columns: ")
    assert f"DataFrame column(s) not in table public.{t}: colour, weight" in message
    assert "without a default missing from the DataFrame: name, region" in message
    assert "created" not in message and "note" not in message
    assert _staging_tables(cur, t) == []


def test_injection_attempts_in_names_are_rejected(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"li_{unique}", "(id int PRIMARY KEY, val text)")
    with pytest.raises(ConfigError, match=r"^table: "):
        PostgresLoader(hook, f'{t}; DROP TABLE {t} --', "append")
    with pytest.raises(ConfigError, match=r"^table: "):
        PostgresLoader(hook, f'public."{t}"', "append")
    with pytest.raises(ConfigError, match=r"^keys: "):
        PostgresLoader(hook, t, "upsert", keys=["id) DO NOTHING; DROP TABLE x; --"])
    with pytest.raises(ConfigError, match=r"^mode: "):
        PostgresLoader(hook, t, "merge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^stage_method: "):
        PostgresLoader(hook, t, "append", stage_method="bulk")  # type: ignore[arg-type]
    df = spark.createDataFrame([(1, "x")], ["id", 'val" text); DROP TABLE x; --'])
    with pytest.raises(ConfigError, match=r"^columns: "):
        PostgresLoader(hook, t, "append").load(df)
    cur.execute(f"SELECT count(*) FROM {t}")
    assert cur.fetchone()[0] == 0


# ------------------------------------------------------------------------------------ COPY staging

#: Strings COPY must carry verbatim: CSV quoting, NULL vs empty, escapes, the end-of-data marker, Unicode.
EDGE_STRINGS = [
    "", None, "tab\there", "new\nline", "cr\rlf\r\n", "back\\slash\\", "\\.", "a\n\\.\nb", 'quote"d""', "comma,sep",
    "\\N", "NULL", "  spaces  ", "ü€😀 日本語 e\u0301", "\\x41", ",", '"', "\n",
]


@pytest.mark.parametrize("stage_method", ["copy", "jdbc"])
def test_staging_round_trips_edge_values_exactly(spark, hook, pg, unique, stage_method) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"le_{stage_method}_{unique}", """(id int PRIMARY KEY, s text, v varchar(40),
        n numeric(38,18), d double precision, r real, ts timestamptz, dt date, b boolean, bin bytea, j jsonb,
        big bigint)""")
    nums = [Decimal("12345678901234567890.123456789012345678"), Decimal("-0.000000000000000001"), Decimal(0), None,
            Decimal("99999999999999999999.999999999999999999")]
    doubles = [0.1, 1e300, 5e-324, -0.0, math.nan, math.inf, -math.inf, None, 1 / 3]
    stamps = [datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC), datetime(1850, 1, 1, 12, tzinfo=UTC),
              datetime(2025, 3, 30, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))), None,
              datetime(1970, 1, 1, tzinfo=UTC)]
    dates = [date(2024, 2, 29), date(1, 1, 1), date(9999, 12, 31), None]
    bins = [b"\x00\x01\xff,\n\"", b"", None]
    rows = []
    for i, s in enumerate(EDGE_STRINGS):
        rows.append((i, s, s, nums[i % len(nums)], doubles[i % len(doubles)], 0.1 if i % 2 else None,
                     stamps[i % len(stamps)], dates[i % len(dates)], (True, False, None)[i % 3], bins[i % len(bins)],
                     None if s is None else f'{{"s": {__import__("json").dumps(s)}}}', (2**63 - 1, -(2**63), None)[i % 3]))
    schema = ("id INT, s STRING, v STRING, n DECIMAL(38,18), d DOUBLE, r FLOAT, ts TIMESTAMP, dt DATE, b BOOLEAN, "
              "bin BINARY, j STRING, big BIGINT")
    df = spark.createDataFrame(rows, schema).repartition(3)

    out = PostgresLoader(hook, t, "upsert", keys=["id"], stage_method=stage_method).load(df)

    assert out.stage_method == stage_method
    assert (out.records_read, out.records_loaded, out.records_rejected) == (len(rows), len(rows), 0)
    cur.execute(f"SELECT id, s, v, n, d, r::text, ts, dt, b, bin, j ->> 's', big FROM {t} ORDER BY id")
    got = [tuple(r) for r in cur.fetchall()]
    assert len(got) == len(rows)
    for row, back in zip(rows, got, strict=True):
        i, s, v, n, d, r, ts, dt, b, bin_, _, big = row
        assert back[1] == s and back[2] == v, (i, back[1], s)  # "" stays "", None stays NULL
        assert back[3] == n, (i, back[3], n)  # all 38 digits
        if d is not None and math.isnan(d):
            assert math.isnan(back[4])
        else:
            assert back[4] == d and (d is None or math.copysign(1, back[4]) == math.copysign(1, d)), (i, back[4], d)
        assert back[5] == (None if r is None else "0.1")
        assert back[6] == ts, (i, back[6], ts)  # the same instant, to the microsecond
        assert back[7:10] == (dt, b, bin_), (i, back[7:10])
        assert back[10] == s and back[11] == big


def test_copy_writes_spark_timestamps_as_session_wall_clock_into_timestamp_columns(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lz_{unique}", "(id int PRIMARY KEY, local_ts timestamp, ts timestamptz, ntz timestamp)")
    instant = datetime(2024, 7, 1, 12, 0, 0, 123456, tzinfo=UTC)
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        df = spark.createDataFrame([(1, instant, instant, datetime(2024, 7, 1, 12, 0, 0, 123456))],
                                   "id INT, local_ts TIMESTAMP, ts TIMESTAMP, ntz TIMESTAMP_NTZ")
        out = PostgresLoader(hook, t, "append", stage_method="copy").load(df)
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert out.stage_method == "copy"
    cur.execute(f"SELECT local_ts, ts, ntz FROM {t}")
    local_ts, ts, ntz = cur.fetchone()
    assert local_ts == datetime(2024, 7, 1, 8, 0, 0, 123456)  # 12:00 UTC is 08:00 in New York (EDT)
    assert ts == instant
    assert ntz == datetime(2024, 7, 1, 12, 0, 0, 123456)  # no time zone: as is


def test_columns_copy_cannot_render_fall_back_to_jdbc(spark, hook, pg, unique) -> None:
    cur, drop = pg
    t = _make(cur, drop, f"lf_{unique}", "(id int PRIMARY KEY, tags integer[])")
    df = spark.createDataFrame([(1, [1, 2]), (2, None)], "id INT, tags ARRAY<INT>")
    out = PostgresLoader(hook, t, "upsert", keys=["id"], stage_method="copy").load(df)
    assert out.stage_method == "jdbc" and out.records_loaded == 2
    assert _rows(cur, t) == [(1, [1, 2]), (2, None)]


def test_copy_partition_attempt_is_atomic_and_a_rerun_is_deduplicated(spark, hook, pg, unique) -> None:
    """A task attempt that dies mid-COPY leaves no row behind; a partition written twice (a retried or
    speculative task that had committed) shares its row ids and loads once."""
    import pyarrow as pa

    cur, drop = pg
    t, loader, plan = _upsert_with_staging(spark, hook, cur, drop, f"lr_{unique}")
    names = [S.ROW_ID, "id", "val"]
    batches = [pa.RecordBatch.from_arrays([pa.array(range(k, k + 50), pa.int64()), pa.array(range(k, k + 50), pa.int32()),
                                           pa.array([f"v{j}" for j in range(k, k + 50)])], names=names)
               for k in (0, 50, 100)]
    writer = copy_writer(loader.copy_conn_args(), S.copy_staging_sql(plan.staging, plan.columns), [], [])

    def dies_midway():
        yield batches[0]
        yield batches[1]
        raise RuntimeError("executor lost")

    try:
        with pytest.raises(RuntimeError, match="executor lost"):
            list(writer(dies_midway()))
        cur.execute(f"SELECT count(*) FROM {plan.staging}")
        assert cur.fetchone()[0] == 0  # rolled back: nothing of the failed attempt
        statuses = [list(writer(iter(batches))), list(writer(iter(batches)))]  # the attempt and its re-run
        assert [b[0].column("rows")[0].as_py() for b in statuses] == [150, 150]
        plan.staged_rows = 150
        result = loader._merge(plan)
    finally:
        loader._drop_staging(plan)
    assert (result.read, result.loaded, result.rejected) == (150, 150, 0)
    assert _rows(cur, t) == [(j, f"v{j}") for j in range(150)]


# ------------------------------------------------------------------------ dead-letter delivery state


def _dlq_log(cur, schema: str, t: str, load_id: str) -> tuple:
    cur.execute(f"SELECT dead_letter_state, dead_letter_spooled, dead_letter_spool, dead_letter_location "
                f"FROM {schema}.etl_load_log WHERE table_name = %s AND load_id = %s", (f"{schema}.{t}", load_id))
    return tuple(cur.fetchone())


def test_rejected_rows_are_kept_until_the_dead_letter_queue_confirmed_them(spark, hook, pg, unique) -> None:
    """The rejected rows commit with the load into etl_load_rejects (state 'pending'); a re-run with the same
    load id loads nothing but hands the very same rejected rows over again, until record_dead_letters(delivered=
    True) marks them delivered and drops them. A load log created by an earlier version (without the
    dead-letter columns, rows with a NULL state) is migrated in place and its old loads count as delivered."""
    from airflow_etl_provider.core.sql import create_load_log_sql

    cur, _ = pg
    schema = f"dl_{unique}"
    cur.execute(f"CREATE SCHEMA {schema}")
    cur.execute(create_load_log_sql(f"{schema}.etl_load_log"))  # the log as the previous version made it
    cur.execute(f"INSERT INTO {schema}.etl_load_log (table_name, load_id, mode, rows, rows_read, rows_rejected) "
                "VALUES (%s, 'old', 'append', 5, 6, 1)", (f"{schema}.t",))
    t = "t"
    cur.execute(f"CREATE TABLE {schema}.{t} (id int PRIMARY KEY, name varchar(5) NOT NULL, "
                "ts timestamptz, amount numeric(12,4), score double precision, raw bytea, tags int[], "
                "qty int CHECK (qty >= 0))")
    ts = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    rows = [(i, f"n{i}", ts, Decimal("1234.5678"), 0.1, b"\x00\xff", [1, 2], i) for i in range(20)]
    bad = [(100, "much-too-long", ts, Decimal("-0.0001"), math.nan, b"'\\\"", [3], 1),
           (101, "ok", None, None, math.inf, None, None, -1),
           (102, "it's", ts, Decimal("99999999.9999"), -0.0, b"", [], -2)]
    schema_ddl = ("id INT, name STRING, ts TIMESTAMP, amount DECIMAL(12,4), score DOUBLE, raw BINARY, "
                  "tags ARRAY<INT>, qty INT")
    df = spark.createDataFrame(rows[:10] + bad + rows[10:], schema_ddl).repartition(2)

    old = PostgresLoader(hook, f"{schema}.{t}", "append", load_id="old").load(df)  # logged before: delivered
    assert old.skipped and old.rejected is None and old.dead_letter_state == "delivered"
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attname LIKE 'dead_letter%%'",
                (f"{schema}.etl_load_log",))
    assert {r[0] for r in cur.fetchall()} == {"dead_letter_state", "dead_letter_spooled", "dead_letter_spool",
                                              "dead_letter_location", "dead_letter_at"}

    first = PostgresLoader(hook, f"{schema}.{t}", "append", load_id="L1").load(df)
    assert (first.records_read, first.records_loaded, first.records_rejected) == (23, 20, 3)
    assert first.dead_letter_state == "pending" and first.dead_letters_pending
    assert _dlq_log(cur, schema, t, "L1") == ("pending", 0, None, None)
    handed = sorted((tuple(r) for r in first.rejected.collect()), key=lambda r: r[0])
    for got, row in zip(handed, bad, strict=True):  # original columns and values, exactly
        assert got[:2] == row[:2] and got[2] == (None if row[2] is None else row[2].replace(tzinfo=None))
        assert got[3] == row[3] and got[5:8] == (None if row[5] is None else bytearray(row[5]), row[6], row[7])
        assert (math.isnan(got[4]) and math.isnan(row[4])) or (got[4] == row[4] and math.copysign(1, got[4])
                                                                 == math.copysign(1, row[4]))
    assert {r[9].split(".")[-1] for r in handed} == {"StringDataRightTruncation", "CheckViolation"}

    # the DLQ did not confirm them: a re-run with the load id loads nothing and hands over the same rows
    loader = PostgresLoader(hook, f"{schema}.{t}", "append", load_id="L1")
    again = loader.load(df)
    assert again.skipped and again.dead_letters_pending and again.records_rejected == 3
    assert [repr(r) for r in sorted((tuple(r) for r in again.rejected.collect()), key=lambda r: r[0])] \
        == [repr(r) for r in handed]  # repr: NaN equals itself
    loader.record_dead_letters(delivered=False, location="kafka topic x", spooled=2, spool_paths=["/s/a.jsonl"])
    assert _dlq_log(cur, schema, t, "L1") == ("pending", 2, ["/s/a.jsonl"], "kafka topic x")
    third = PostgresLoader(hook, f"{schema}.{t}", "append", load_id="L1").load(df)
    assert (third.dead_letter_spooled, third.dead_letter_spool) == (2, ["/s/a.jsonl"])

    # confirmed: delivered, and PostgreSQL lets go of the rows
    loader.record_dead_letters(delivered=True, location="kafka topic x")
    assert _dlq_log(cur, schema, t, "L1") == ("delivered", 0, None, "kafka topic x")
    cur.execute(f"SELECT count(*) FROM {schema}.etl_load_rejects WHERE load_id = 'L1'")
    assert cur.fetchone()[0] == 0
    done = PostgresLoader(hook, f"{schema}.{t}", "append", load_id="L1").load(df)
    assert done.skipped and done.rejected is None and done.dead_letter_state == "delivered"
    cur.execute(f"SELECT count(*) FROM {schema}.{t}")
    assert cur.fetchone()[0] == 20
    clean = PostgresLoader(hook, f"{schema}.{t}", "upsert", keys=["id"], load_id="L2").load(df.where("qty >= 0 "
                                                                                                     "AND id < 100"))
    assert clean.dead_letter_state == "none" and _dlq_log(cur, schema, t, "L2")[0] == "none"
    with pytest.raises(RuntimeError, match=r"needs a load\(\)"):
        PostgresLoader(hook, f"{schema}.{t}", "append").record_dead_letters(delivered=True)
    cur.execute(f"DROP SCHEMA {schema} CASCADE")


# ------------------------------------------------------------------------------------ progress log


def _slow_rows(spark, n: int, partitions: int, sleep_s: float):
    """``n`` rows whose partitions each take ``sleep_s`` to produce (a Python step that sleeps)."""

    def slow(batches):
        import time

        for batch in batches:
            time.sleep(sleep_s)
            yield batch

    return (spark.range(0, n, 1, partitions).selectExpr("CAST(id AS INT) AS id", "concat('v', id) AS val")
            .mapInArrow(slow, "id INT, val STRING"))


@pytest.mark.parametrize("stage_method", ["jdbc", "copy"])
def test_staging_logs_its_progress_at_the_interval(spark, hook, pg, unique, caplog, stage_method) -> None:
    import logging
    import re

    cur, drop = pg
    t = _make(cur, drop, f"lg_{stage_method}_{unique}", "(id int PRIMARY KEY, val text)")
    df = _slow_rows(spark, 4000, 4, 1.5)
    with caplog.at_level(logging.INFO, logger="airflow_etl_provider.hooks.postgres_load"):
        out = PostgresLoader(hook, t, "append", stage_method=stage_method, progress_interval_s=0.25).load(df)
    assert out.records_loaded == 4000 and out.stage_method == stage_method
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"Staging public.{t} ")]
    assert len(lines) >= 4, lines
    progress = [re.search(r"(\d+)/(\d+) partitions done, (\d+) running; ([\d,]+) row\(s\) in staging so far", ln)
                for ln in lines]
    seen = [(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4).replace(",", "")))
            for m in progress if m]
    assert seen, lines
    assert all(total == seen[0][1] and 0 <= done <= total and 0 <= rows <= 4000 for done, total, _, rows in seen)
    assert seen[0][1] == 2 and any(done < total for done, total, _, _ in seen), lines  # caught mid-staging
    # (tasks running show up too, once Spark's listener bus has posted their start: seconds late on a busy box)
    assert [d for d, *_ in seen] == sorted(d for d, *_ in seen)  # partitions done only grow
    assert [r for *_, r in seen] == sorted(r for *_, r in seen)  # and so do the rows
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None  # the job group is restored


def test_progress_interval_is_validated_and_zero_disables_it(spark, hook, pg, unique, caplog) -> None:
    import logging

    with pytest.raises(ConfigError, match=r"^progress_interval_s: must be a number of seconds >= 0"):
        PostgresLoader(hook, "public.x", "append", progress_interval_s=-1)
    cur, drop = pg
    t = _make(cur, drop, f"lg0_{unique}", "(id int PRIMARY KEY, val text)")
    with caplog.at_level(logging.INFO, logger="airflow_etl_provider.hooks.postgres_load"):
        PostgresLoader(hook, t, "append", progress_interval_s=0).load(_slow_rows(spark, 100, 2, 0.5))
    assert not [r for r in caplog.records if r.getMessage().startswith(f"Staging public.{t} ")]


#: Spark Connect has no SparkContext: the progress log says so once and reports the rows (own process).
CONNECT_PROGRESS = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.hooks.spark import SparkSessionHook

def slow(batches):
    import time
    for batch in batches:
        time.sleep(1.5)
        yield batch

with SparkSessionHook("spark_connect_default").session() as spark:
    df = (spark.range(0, 2000, 1, 2).selectExpr("CAST(id AS INT) AS id", "concat('v', id) AS val")
          .mapInArrow(slow, "id INT, val STRING"))
    out = PostgresLoader(SparkPostgresHook(postgres_conn_id="postgres_default"), sys.argv[1], "append",
                         progress_interval_s=0.25).load(df)
    print("LOADED", out.records_loaded)
"""


@pytest.mark.slow
def test_staging_progress_on_spark_connect_reports_rows_only(hook, pg, unique) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([str(root / "scripts/stack.sh"), "up", "spark-connect"], check=True, timeout=240)
    cur, drop = pg
    t = _make(cur, drop, f"lgc_{unique}", "(id int PRIMARY KEY, val text)")
    out = subprocess.run([sys.executable, "-c", CONNECT_PROGRESS, f"public.{t}"], capture_output=True, text=True,
                         env=os.environ, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "LOADED 2000" in out.stdout
    assert out.stdout.count("partitions are not available on Spark Connect") == 1, out.stdout[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if f"Staging public.{t} (jdbc, " in ln]
    assert len(lines) >= 3 and all("row(s) in staging so far" in ln and "partitions done" not in ln
                                   for ln in lines), lines
