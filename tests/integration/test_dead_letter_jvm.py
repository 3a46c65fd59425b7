"""Kafka dead letters published inside Spark's JVM (``dead_letter.writer``): the same messages as the Python
workers' path, byte for byte, against the real broker; nothing lost when the broker is unreachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from airflow_etl_provider.core.envelope import DeadLetterEnvelope, RunContext
from airflow_etl_provider.core.errors import ConfigError, DeadLetterUnavailableError
from airflow_etl_provider.executor.dead_letter import read_spool
from tests.integration.conftest import consume_kafka

pytestmark = pytest.mark.spark

SCHEMA = ("order_id BIGINT, tiny TINYINT, small SMALLINT, qty INT, flag BOOLEAN, name STRING, amount DECIMAL(10,2), "
          "big DECIMAL(38,0), rate DECIMAL(12,6), whole DECIMAL(18,0), fine DECIMAL(18,6), day DATE, at TIMESTAMP, "
          "wall TIMESTAMP_NTZ, blob BINARY, _etl_error STRING, _etl_error_class STRING")
LONG_MESSAGE = "é" * 900 + "🦆" * 300 + 'quote " backslash \\ ' + "x" * 3900  # > 4000 code points, multi-byte


def _rows() -> list[tuple]:
    """Edge values of every type the JVM path renders, and the error columns' null / empty / long cases."""
    names = ['plain', '', None, 'quote " and \\ backslash', 'new\nline\ttab\r\x01\x1f\x7f', 'ünïcödé 🦆 \u2028',
             '},{"a":1}', 'x' * 3000]
    rows = []
    for i, name in enumerate(names):
        rows.append((
            [10**15, -(2**63), 2**63 - 1, 0, -1, 7, 8, 9][i],
            [127, -128, None, 0, 1, 2, 3, 4][i],
            [32767, -32768, 0, None, 5, 6, 7, 8][i],
            [2**31 - 1, -(2**31), 0, 1, None, 3, 4, 5][i],
            [True, False, None, True, False, True, False, True][i],
            name,
            [Decimal("584.69"), Decimal("-0.05"), Decimal("0.00"), None, Decimal("99999999.99"), Decimal("1.10"),
             Decimal("-12.00"), Decimal("3.14")][i],
            [Decimal("1" * 38), Decimal("-5"), Decimal(0), None, Decimal(10**20), Decimal(1), Decimal(2), Decimal(3)][i],
            [Decimal("0.000001"), Decimal("-123456.5"), Decimal("0"), Decimal("1.000000"), None, Decimal("2"),
             Decimal("3.5"), Decimal("4")][i],
            [Decimal(10**18 - 1), Decimal(-(10**18 - 1)), Decimal(0), None, Decimal(5), Decimal(-7), Decimal(1),
             Decimal(2)][i],  # the longest unscaled longs, scale 0
            [Decimal("999999999999.999999"), Decimal("-999999999999.999999"), Decimal("-0.000001"),
             Decimal("0.000000"), None, Decimal("12.5"), Decimal("-3"), Decimal("7.000010")][i],
            [date(2025, 6, 1), date(1, 1, 1), date(9999, 12, 31), date(1969, 12, 31), None, date(2000, 2, 29),
             date(1970, 1, 1), date(2024, 3, 10)][i],
            [datetime(2025, 6, 1, 9, 54, 58, tzinfo=UTC), datetime(2025, 6, 1, 9, 54, 58, 250000, tzinfo=UTC),
             datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(1900, 1, 1, tzinfo=UTC), None,
             datetime(2024, 3, 10, 7, 30, tzinfo=UTC), datetime(2024, 11, 3, 5, 30, 0, 1, tzinfo=UTC),
             datetime(1883, 11, 18, 17, 0, tzinfo=UTC)][i],
            [datetime(2025, 6, 1, 9, 54, 58), datetime(1, 1, 1), datetime(1969, 12, 31, 23, 59, 59, 5), None,
             datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(2024, 3, 10, 2, 30), datetime(2000, 1, 1, 0, 0, 0, 10),
             datetime(1970, 1, 1)][i],
            [b"\x00\x01\xff", b"", None, b"abc", bytes(range(256)), b"=", b"\xfb\xff", b"x" * 100][i],
            ['null value in column "customer_id" violates not-null constraint\nDETAIL:  Failing row contains (1).',
             None, "", LONG_MESSAGE, "control \x00 \x01 \x7f \u2028 end", "é" * 999 + "🦆🦆", "ok", "é" * 4001][i],
            ["psycopg.errors.NotNullViolation", None, "", "psycopg.errors.CheckViolation",
             "psycopg.errors.NotNullViolation", 'weird "class"', "psycopg.errors.CheckViolation", None][i],
        ))
    return rows


def _hook(config: dict, spool_dir: str | None = None):
    from airflow_etl_provider.hooks.dead_letter import DeadLetterHook

    rc = RunContext(dag_id="orders_dag", task_id="load_orders", run_id="manual__2026-12-06T10:00:00",
                    try_number=2, pipeline_id="orders-pipeline")
    return DeadLetterHook(config, pipeline_id="orders-pipeline", run_context=rc, spool_dir=spool_dir)


def _messages(msgs: list) -> list[tuple]:
    """(key, value without its timestamp, headers) of each message, sorted: each publish has its own timestamp."""
    out = []
    for msg in msgs:
        doc = json.loads(msg.value())
        stamp = json.dumps(doc["timestamp"]).encode()
        out.append((msg.key(), msg.value().replace(stamp, b'"T"', 1), tuple(msg.headers() or ())))
    return sorted(out)


@pytest.mark.parametrize(("zone", "keys"), [("UTC", ["order_id"]), ("America/New_York", ["name", "flag"]),
                                            ("Asia/Kolkata", [])])
def test_jvm_messages_are_the_python_workers_messages(spark, kafka_bootstrap, unique, zone, keys) -> None:
    """Both writers publish the same rows; an independent consumer reads byte-identical keys, values (but for
    each publish's timestamp) and headers, in three session time zones and with one, two or no key columns."""
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", zone)
    try:
        df = spark.createDataFrame(_rows(), SCHEMA).repartition(2)
        got = {}
        for writer in ("jvm", "python"):
            topic = f"orders.dlq.{writer}.{unique}"
            result = _hook({"type": "kafka", "topic": topic, "writer": writer,
                            "config": {"bootstrap.servers": kafka_bootstrap}}).publish_dataframe(
                df, stage="load", key_columns=keys, source="parquet:/data/orders", target="public.orders")
            assert (result.delivered, result.spooled) == (8, 0)
            got[writer] = _messages(consume_kafka(kafka_bootstrap, topic, 8))
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)

    assert len(got["jvm"]) == len(got["python"]) == 8
    for jvm, python in zip(got["jvm"], got["python"], strict=True):
        assert jvm == python
    envelopes = [DeadLetterEnvelope.from_json(value.replace(b'"T"', b'"2026-12-06T10:00:00.000Z"'))
                 for _key, value, _headers in got["jvm"]]
    messages = sorted(len(e.error_message) for e in envelopes)
    assert messages[-1] == 4000  # the long messages were cut at 4000 characters
    headers = {k: v for _key, _value, hs in got["jvm"] for k, v in hs}
    assert headers["__etl.errors.try.number"] == b"2"


def test_escapes_at_every_offset_of_a_word_are_the_python_workers_messages(spark, kafka_bootstrap, unique) -> None:
    """The JVM writer escapes JSON strings eight bytes at a time (Json.string): each character that needs escaping
    (or is several bytes long) at every offset 0-17 of a string column and of the error message, twice in a row and
    apart, gives byte-identical messages to the Python workers' (json.dumps)."""
    specials = ['"', "\\", "\n", "\x00", "\x01", "\x1f", " ", "\x7f", "é", "🦆", "\u2028"]
    rows = []
    for offset in range(18):
        for s, special in enumerate(specials):
            text = "a" * offset + special + "b" * (s % 9) + special * 2 + "c" * (17 - offset)
            rows.append((len(rows), text, "e" * (17 - offset) + special + text, "psycopg.errors.DataError"))
    df = spark.createDataFrame(rows, "order_id BIGINT, name STRING, _etl_error STRING, _etl_error_class STRING")
    got = {}
    for writer in ("jvm", "python"):
        topic = f"orders.dlq.escapes.{writer}.{unique}"
        result = _hook({"type": "kafka", "topic": topic, "writer": writer,
                        "config": {"bootstrap.servers": kafka_bootstrap}}).publish_dataframe(
            df.repartition(2), stage="load", key_columns=["order_id"], source="s", target="t")
        assert (result.delivered, result.spooled) == (len(rows), 0)
        got[writer] = _messages(consume_kafka(kafka_bootstrap, topic, len(rows)))
    assert len(got["jvm"]) == len(rows) == 18 * len(specials)
    assert got["jvm"] == got["python"]
    names = sorted(DeadLetterEnvelope.from_json(value.replace(b'"T"', b'"2026-12-06T10:00:00.000Z"')).record["name"]
                   for _key, value, _headers in got["jvm"])
    assert names == sorted(row[1] for row in rows)  # and they read back as the very strings


def test_failed_rules_of_a_quality_quarantine_are_the_python_workers_messages(spark, kafka_bootstrap, unique) -> None:
    """Quality quarantine's failed-rules column (null, empty, one name, two with a quote and non-ASCII): the JVM
    writer publishes it (writer "jvm" fails when it cannot), byte for byte the Python workers' messages, with
    the rules header only on the rows that failed rules."""
    rules = [None, [], ["email_not_null"], ["amount_positive", 'quote " rule ünï 🦆']]
    rows = [(*row, rules[k % 4]) for k, row in enumerate(_rows())]
    df = spark.createDataFrame(rows, SCHEMA + ", _etl_failed_rules ARRAY<STRING>").repartition(2)
    got = {}
    for writer in ("jvm", "python"):
        topic = f"orders.dlq.rules.{writer}.{unique}"
        result = _hook({"type": "kafka", "topic": topic, "writer": writer,
                        "config": {"bootstrap.servers": kafka_bootstrap}}).publish_dataframe(
            df, stage="quality", key_columns=["order_id"])
        assert (result.delivered, result.spooled) == (8, 0)
        got[writer] = _messages(consume_kafka(kafka_bootstrap, topic, 8))

    assert len(got["jvm"]) == 8
    assert got["jvm"] == got["python"]
    seen = sorted((json.loads(value)["failed_rules"], dict(headers).get("__etl.errors.rules"))
                  for _key, value, headers in got["jvm"])
    two = ["amount_positive", 'quote " rule ünï 🦆']
    assert seen == [([], None)] * 4 + [(two, ",".join(two).encode())] * 2 + [(["email_not_null"], b"email_not_null")] * 2


def test_jvm_writer_spools_everything_when_the_broker_is_unreachable(spark, kafka_bootstrap, unique,
                                                                     tmp_path) -> None:
    """No broker: every envelope lands in the executor's spool file (none dropped), the publish fails naming the
    spool and the replay command, and the replay delivers them to the real broker."""
    topic = f"orders.dlq.jvm.down.{unique}"
    dead = {"type": "kafka", "topic": topic, "writer": "jvm",
            "config": {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 2000}}
    df = spark.createDataFrame(_rows() * 5, SCHEMA).repartition(2)
    with pytest.raises(DeadLetterUnavailableError) as info:
        _hook(dead, spool_dir=str(tmp_path / "spool")).publish_dataframe(df, stage="load", key_columns=["order_id"])
    assert info.value.rows == 40
    assert "airflow-etl dlq replay-spool" in info.value.replay_command
    files = sorted((tmp_path / "spool").glob("spool-*-jvm-*.jsonl"))
    assert len(files) == 2  # one per partition
    spooled = list(read_spool(str(f) for f in files))  # what replay-spool reads
    assert sorted(e.record["order_id"] for e in spooled) == sorted(r[0] for r in _rows() * 5)

    out = subprocess.run(
        [sys.executable, "-m", "airflow_etl_provider.cli", "dlq", "replay-spool", str(tmp_path / "spool"),
         "--to", "kafka", "--topic", topic, "--bootstrap-servers", kafka_bootstrap],
        capture_output=True, text=True, env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    assert "replayed 40 dead letters" in out.stdout
    assert len(consume_kafka(kafka_bootstrap, topic, 40)) == 40


def test_jvm_writer_fails_the_publish_with_the_spools_own_exception_when_it_cannot_spool(spark, unique,
                                                                                       tmp_path) -> None:
    """No broker and no spool (its directory's path is a file): nothing can be kept, so the publish fails, with
    the very exception the spool threw (``PartitionJob`` rethrows it as it is, not wrapped) naming the path."""
    from py4j.protocol import Py4JJavaError

    blocked = tmp_path / "spool"
    blocked.write_text("a file where the spool directory should be")
    dead = {"type": "kafka", "topic": f"orders.dlq.jvm.nospool.{unique}", "writer": "jvm",
            "config": {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 2000}}
    df = spark.createDataFrame(_rows(), SCHEMA).repartition(1)
    with pytest.raises(Py4JJavaError) as info:
        _hook(dead, spool_dir=str(blocked)).publish_dataframe(df, stage="load", key_columns=["order_id"])
    text = str(info.value)
    assert f"java.nio.file.FileAlreadyExistsException: {blocked}" in text, text[:3000]
    assert "UncheckedIOException" not in text


def test_writer_jvm_refuses_what_it_cannot_render_and_auto_falls_back(spark, kafka_bootstrap, unique) -> None:
    """A floating-point column: ``writer="jvm"`` fails naming the setting and the column; ``"auto"`` publishes
    from the Python workers."""
    df = spark.createDataFrame([(1, 0.1, "bad"), (2, float("nan"), "bad")], "order_id INT, score DOUBLE, _etl_error STRING")
    config = {"type": "kafka", "topic": f"orders.dlq.auto.{unique}", "config": {"bootstrap.servers": kafka_bootstrap}}
    with pytest.raises(ConfigError, match=r"dead_letter\.writer: 'jvm' cannot run here: column 'score' is double"):
        _hook({**config, "writer": "jvm"}).publish_dataframe(df, stage="load")
    result = _hook(config).publish_dataframe(df, stage="load", key_columns=["order_id"])
    assert (result.delivered, result.spooled) == (2, 0)
    scores = [json.loads(m.value())["record"]["score"] for m in consume_kafka(kafka_bootstrap, config["topic"], 2)]
    assert sorted(scores, key=str) == [0.1, "NaN"]


@pytest.mark.slow
def test_the_p7_benchmark_and_kafkas_floor_deliver_and_verify_every_message() -> None:
    """benchmarks/bench_dlq_kafka.py, small: ours (the JVM writer) read back and compared byte for byte with
    the envelope path, Kafka's floor (kafka_floor/KafkaFloor.java: the same messages resent by Kafka's own
    producer with the writer's settings) delivering every message, and both comparison lines printed. The
    script exits 1 on any lost, duplicated or differing message; no timing is checked."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "bench_dlq_kafka.py"), "--rows", "2000", "--peer-rows",
         "100", "--warmup", "1", "--rounds", "1", "--writers", "jvm"],
        capture_output=True, text=True, env=os.environ, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "verified (jvm): 2,000 messages, keys unique and complete" in out.stdout
    floor = [line for line in out.stdout.splitlines() if line.startswith("  floor  round ")]
    assert len(floor) == 2  # one warm-up + one measured round, every message acknowledged (else exit 1)
    assert [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("bench ")] == [
        "bench dlq_kafka_vs_kafka_floor", "bench dlq_kafka_vs_sync_send"]
