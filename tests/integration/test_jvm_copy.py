"""COPY staging rendered on Spark's JVM side (``copy_writer="jvm"``, ``jvm/src/.../PostgresCopyStager.java``)
against the real PostgreSQL and an embedded Spark session: the same table, value for value, as the Python
writer; atomic per task attempt; chosen automatically where it can run and refused with a named reason where
it cannot."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.hooks.postgres_load.jvm_copy import jvm_copy_unavailable

pytestmark = pytest.mark.spark


STRINGS = ["", None, "tab\there", "new\nline", "cr\rlf\r\n", "back\\slash\\", "\\.", "a\n\\.\nb", 'quote"d""',
           "comma,sep", "\\N", "NULL", "  spaces  ", "ü€😀 日本語 e\u0301", "\\x41", ",", '"', "\n"]
DDL = """(id int PRIMARY KEY, s text, v varchar(40), c char(3), n numeric(38,18), d double precision, r real,
    ts timestamptz, local_ts timestamp, ntz timestamp, dt date, b boolean, bin bytea, big bigint, small smallint,
    tiny smallint, m numeric(18,6), z numeric(4,0))"""
SCHEMA = ("id INT, s STRING, v STRING, c STRING, n DECIMAL(38,18), d DOUBLE, r FLOAT, ts TIMESTAMP, local_ts TIMESTAMP, "
          "ntz TIMESTAMP_NTZ, dt DATE, b BOOLEAN, bin BINARY, big BIGINT, small SMALLINT, tiny TINYINT, m DECIMAL(18,6), "
          "z DECIMAL(4,0)")


def _rows() -> list[tuple]:
    nums = [Decimal("12345678901234567890.123456789012345678"), Decimal("-0.000000000000000001"), Decimal(0), None,
            Decimal("99999999999999999999.999999999999999999"), Decimal("-1E-18")]
    doubles = [0.1, 1e300, 5e-324, -0.0, float("nan"), float("inf"), float("-inf"), None, 1 / 3, 123456789.0, 1e-7]
    floats = [0.1, 3.4028234663852886e38, None, -0.0, 1.5e-45, float("nan"), 16777217.0]
    stamps = [datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC), datetime(1850, 1, 1, 12, tzinfo=UTC),
              datetime(2025, 3, 30, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))), None,
              datetime(1970, 1, 1, tzinfo=UTC), datetime(1500, 6, 1, 0, 0, 0, 1, tzinfo=UTC),
              datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
              datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    ntz = [datetime(2024, 3, 10, 2, 30), None, datetime(1582, 10, 10, 12), datetime(1, 1, 1), datetime(2000, 1, 1, 0, 0, 0, 5)]
    dates = [date(2024, 2, 29), date(1, 1, 1), date(9999, 12, 31), None, date(1582, 10, 10), date(1969, 12, 31)]
    bins = [b"\x00\x01\xff,\n\"", b"", None, bytes(range(256))]
    # decimals of precision <= 18 (the JVM writers' unscaled-long path): base-10000 groups across the point
    smalls = [Decimal("999999999999.999999"), Decimal("-999999999999.999999"), Decimal("-0.000001"), Decimal(0),
              None, Decimal("10000.0001"), Decimal("0.5"), Decimal("-1"), Decimal("1234.567800"), Decimal("0.000100")]
    fours = [Decimal(9999), Decimal(-9999), Decimal(0), Decimal(10000 - 1), Decimal(1000), Decimal(-1), None, Decimal(10)]
    rows = []
    for i, s in enumerate(STRINGS * 2):
        rows.append((i, s, s, None if s is None else s[:3], nums[i % len(nums)], doubles[i % len(doubles)],
                     floats[i % len(floats)], stamps[i % len(stamps)], stamps[(i + 3) % len(stamps)], ntz[i % len(ntz)],
                     dates[i % len(dates)], (True, False, None)[i % 3], bins[i % len(bins)],
                     (2**63 - 1, -(2**63), None, 0)[i % 4], (32767, -32768, None)[i % 3], (127, -128, None)[i % 3],
                     smalls[i % len(smalls)], fours[i % len(fours)]))
    return rows


def _table_text(cur, table: str) -> list[str]:
    """Every row as PostgreSQL's own text of it: equal lists mean equal values, byte for byte."""
    cur.execute(f"SELECT t::text FROM {table} t ORDER BY id")
    return [r[0] for r in cur.fetchall()]


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_jvm_and_python_writers_stage_the_same_values(spark, hook, pg, unique, caplog, zone) -> None:
    """The Python writer's CSV, the JVM writer's CSV and its binary COPY (``copy_format``: ``auto`` picks binary
    for these columns) give the same table, value for value."""
    cur, drop = pg
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", zone)
    texts = {}
    try:
        df = spark.createDataFrame(_rows(), SCHEMA).repartition(3)
        for writer, fmt, sent in (("python", "auto", "csv"), ("jvm", "csv", "csv"), ("jvm", "auto", "binary")):
            t = f"jc_{writer}_{fmt}_{unique}"
            cur.execute(f"CREATE TABLE {t} {DDL}")
            drop.append(t)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="airflow_etl_provider"):
                out = PostgresLoader(hook, t, "upsert", keys=["id"], stage_method="copy", copy_writer=writer,
                                     copy_format=fmt).load(df)
            # local[2]: coalesced to 2
            assert f"with COPY ({writer} writer) from 2 partition(s), {sent} format" in caplog.text
            assert (out.stage_method, out.records_read, out.records_loaded, out.records_rejected) == (
                "copy", len(_rows()), len(_rows()), 0)
            texts[f"{writer} {sent}"] = _table_text(cur, t)
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    assert len(texts["python csv"]) == len(_rows())
    assert texts["jvm csv"] == texts["python csv"]
    assert texts["jvm binary"] == texts["python csv"]


def test_jvm_writer_keeps_what_postgres_reads_back(spark, hook, pg, unique) -> None:
    """Not only equal to the Python writer: the values themselves, where Python can say what they must be."""
    cur, drop = pg
    t = f"jv_{unique}"
    cur.execute(f"CREATE TABLE {t} {DDL}")
    drop.append(t)
    rows = _rows()
    PostgresLoader(hook, t, "append", stage_method="copy", copy_writer="jvm").load(spark.createDataFrame(rows, SCHEMA))
    cur.execute(f"SELECT id, s, v, n, ts, ntz, dt, bin, big, m, z FROM {t} ORDER BY id")
    back = {r[0]: r for r in cur.fetchall()}
    for row in rows:
        got = back[row[0]]
        assert got[1:4] == (row[1], row[2], row[4]), row[0]  # "" stays "", None stays NULL, every digit
        assert got[4] == row[7] and got[5] == row[9] and got[6] == row[10], row[0]  # instants, wall times, dates
        assert got[7] == row[12] and got[8] == row[13], row[0]
        assert got[9:] == (row[16], row[17]), row[0]  # numeric(18,6) and numeric(4,0) through binary COPY


def test_a_failing_jvm_attempt_leaves_nothing_and_the_load_fails_with_postgres_message(spark, hook, pg, unique) -> None:
    """A value PostgreSQL refuses inside COPY itself (a NUL character) fails that partition's transaction:
    nothing of it stays in staging and the load raises PostgreSQL's message (no row lost silently)."""
    cur, drop = pg
    t = f"jn_{unique}"
    cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, s text)")
    drop.append(t)
    df = spark.createDataFrame([(i, "ok" if i != 700 else "nul\x00here") for i in range(1000)], "id INT, s STRING")
    with pytest.raises(Exception, match="0x00"):
        PostgresLoader(hook, t, "append", stage_method="copy", copy_writer="jvm").load(df.repartition(1))
    cur.execute(f"SELECT count(*) FROM {t}")
    assert cur.fetchone()[0] == 0


def test_copy_format_binary_names_the_columns_it_cannot_send_and_auto_falls_back_to_csv(
        spark, hook, pg, unique, caplog) -> None:
    """Binary COPY has no text to convert: an ``int`` into a ``text`` column only goes as CSV."""
    cur, drop = pg
    t = f"jb_{unique}"
    cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, s text)")
    drop.append(t)
    df = spark.createDataFrame([(1, 7), (2, None)], "id INT, s INT")
    with pytest.raises(ConfigError, match=r"^copy_format: 'binary' cannot send these column\(s\) in their staging "
                                          r"type's binary form: s \(int into text\)"):
        PostgresLoader(hook, t, "append", stage_method="copy", copy_writer="jvm", copy_format="binary").load(df)
    with pytest.raises(ConfigError, match="^copy_format: 'binary' needs the JVM COPY writer, which cannot run here: "
                                          "copy_writer='python'"):
        PostgresLoader(hook, t, "append", stage_method="copy", copy_writer="python", copy_format="binary").load(df)
    with pytest.raises(ConfigError, match="^copy_format: is not known"):
        PostgresLoader(hook, t, "append", copy_format="text")  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="airflow_etl_provider"):
        out = PostgresLoader(hook, t, "append", stage_method="copy", copy_writer="jvm").load(df)
    assert out.records_loaded == 2 and "(jvm writer) from 2 partition(s), csv format" in caplog.text  # local[2]
    cur.execute(f"SELECT id, s FROM {t} ORDER BY id")
    assert cur.fetchall() == [(1, "7"), (2, None)]


def test_jvm_class_finds_a_class_by_its_whole_name_in_one_request_and_none_for_a_missing_one(spark) -> None:
    """The lookup both JVM writers' availability checks use, against the session's real JVM: a class of our
    jar, of the JDK, and a name no class has (py4j answers a package for it: ``None``)."""
    from py4j.java_gateway import JavaClass

    from airflow_etl_provider.hooks.dead_letter_jvm import PRODUCER_CLASS, PUBLISHER_CLASS
    from airflow_etl_provider.hooks.postgres_load.jvm_copy import STAGER_CLASS
    from airflow_etl_provider.hooks.spark import jvm_class

    for name in (STAGER_CLASS, PUBLISHER_CLASS, PRODUCER_CLASS, "java.util.HashMap"):
        found = jvm_class(spark._jvm, name)
        assert isinstance(found, JavaClass) and found._fqn == name
    assert jvm_class(spark._jvm, "airflow_etl_provider.jvm.NoSuchWriter") is None
    assert jvm_class(spark._jvm, "airflow_etl_provider.jvm") is None  # a package is not a class


def test_auto_picks_the_jvm_writer_on_a_classic_session_with_the_jar(spark, hook, pg, unique, caplog) -> None:
    cur, drop = pg
    t = f"ja_{unique}"
    cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, s text)")
    drop.append(t)
    assert jvm_copy_unavailable(spark) is None
    with caplog.at_level(logging.INFO, logger="airflow_etl_provider"):
        out = PostgresLoader(hook, t, "upsert", keys=["id"], stage_method="copy", copy_writer="auto").load(
            spark.createDataFrame([(1, "a"), (2, "b")], "id INT, s STRING"))
    assert out.records_loaded == 2 and "(jvm writer)" in caplog.text


def _run_script_on(service: str, script: str, pg: tuple, table: str) -> str:
    """Start ``service`` of the stack, create ``table`` (id, s), run ``script`` with the table's name in its own
    process (a session of another kind than the suite's shared one) and return its stdout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([str(root / "scripts/stack.sh"), "up", service], check=True, timeout=240)
    cur, drop = pg
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, s text)")
    drop.append(table)
    out = subprocess.run([sys.executable, "-c", script, f"public.{table}"], capture_output=True, text=True,
                         env=os.environ, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


CONNECT_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.hooks.postgres_load.jvm_copy import jvm_copy_unavailable
from airflow_etl_provider.hooks.spark import SparkSessionHook

hook = SparkPostgresHook(postgres_conn_id="postgres_default")
with SparkSessionHook("spark_connect_default").session() as spark:
    print("UNAVAILABLE", jvm_copy_unavailable(spark))
    df = spark.createDataFrame([(1, "a")], "id INT, s STRING")
    try:
        PostgresLoader(hook, sys.argv[1], "append", stage_method="copy", copy_writer="jvm").load(df)
    except ConfigError as err:
        print("REFUSED", err)
    out = PostgresLoader(hook, sys.argv[1], "append", stage_method="copy", copy_writer="auto").load(df)
    print("LOADED", out.records_loaded)
"""


@pytest.mark.slow
def test_jvm_writer_is_refused_by_name_on_spark_connect(pg, unique) -> None:
    """Spark Connect has no client JVM: ``copy_writer='jvm'`` fails naming the setting, ``auto`` says why it
    uses the Python writer and loads with it."""
    stdout = _run_script_on("spark-connect", CONNECT_SCRIPT, pg, f"jx_{unique}")
    assert "UNAVAILABLE a Spark Connect session (no JVM in the client)" in stdout
    assert "REFUSED copy_writer: 'jvm' cannot run here: a Spark Connect session" in stdout, stdout[-3000:]
    assert "with the Python COPY writer: a Spark Connect session" in stdout
    assert "(python writer)" in stdout and "LOADED 1" in stdout
    cur = pg[0]
    cur.execute(f"SELECT id, s FROM jx_{unique}")
    assert cur.fetchall() == [(1, "a")]


STANDALONE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)
from airflow_etl_provider.hooks.postgres import SparkPostgresHook
from airflow_etl_provider.hooks.postgres_load import PostgresLoader
from airflow_etl_provider.hooks.spark import SparkSessionHook

with SparkSessionHook("spark_standalone").session() as spark:
    print("MASTER", spark.sparkContext.master)
    df = spark.range(0, 5000, 1, 4).selectExpr("CAST(id AS INT) AS id", "concat('v', id) AS s")
    out = PostgresLoader(SparkPostgresHook(postgres_conn_id="postgres_default"), sys.argv[1], "upsert", keys=["id"],
                         stage_method="copy", copy_writer="jvm").load(df)
    print("LOADED", out.records_loaded)
"""


@pytest.mark.slow
def test_jvm_writer_runs_on_a_standalone_cluster_with_the_packaged_jar(pg, unique) -> None:
    """The jar SparkSessionHook puts on ``spark.jars`` reaches a cluster's executors: the writer runs there."""
    stdout = _run_script_on("spark-standalone", STANDALONE_SCRIPT, pg, f"js_{unique}")
    assert "MASTER spark://127.0.0.1:" in stdout and "LOADED 5000" in stdout, stdout[-3000:]
    assert "with COPY (jvm writer) from" in stdout  # on the cluster executors, not the Python writer
    cur = pg[0]
    cur.execute(f"SELECT count(*), count(DISTINCT s) FROM js_{unique}")
    assert cur.fetchone() == (5000, 5000)
