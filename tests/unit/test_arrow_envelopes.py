"""The column-wise Kafka messages of failed Arrow rows are, byte for byte, what the envelope objects give."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from airflow_etl_provider.core.envelope import (
    DeadLetterEnvelope,
    RunContext,
    build_envelope,
    kafka_headers,
    kafka_key,
)
from airflow_etl_provider.executor.arrow_envelopes import KafkaMessageBuilder, envelopes_of
from airflow_etl_provider.executor.dead_letter import ERROR_CLASS_COLUMN, ERROR_COLUMN, FAILED_RULES_COLUMN

NOW = datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
RUN = RunContext(dag_id="orders_daily", task_id="load", run_id="scheduled__2026-01-31 100%", try_number=2,
                 pipeline_id="orders")
OPTIONS: dict[str, Any] = {"stage": "load", "pipeline_id": None, "run_context": RUN, "source": "s3://raw/o",
                           "target": "etl.orders", "default_error": "rejected", "now": NOW}


def builder(key_columns: tuple[str, ...] = ("order_id",), **overrides: Any) -> KafkaMessageBuilder:
    options = {**OPTIONS, **overrides}
    return KafkaMessageBuilder(key_columns=key_columns, error_column=ERROR_COLUMN,
                               error_class_column=ERROR_CLASS_COLUMN, rules_column=FAILED_RULES_COLUMN, **options)


def reference(batch: pa.RecordBatch, key_columns: tuple[str, ...] = ("order_id",),
              **overrides: Any) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """What partition_publisher's row-by-row path builds: envelope, then key, JSON and headers."""
    options = {**OPTIONS, **overrides}
    default_error = options.pop("default_error")
    out = []
    for row in batch.to_pylist():
        error = row.pop(ERROR_COLUMN, None) or default_error
        error_class = row.pop(ERROR_CLASS_COLUMN, None)
        rules = row.pop(FAILED_RULES_COLUMN, None) or ()
        env = build_envelope(row, error, failed_rules=list(rules), key_columns=key_columns, **options)
        if error_class:
            env = dataclasses.replace(env, error_class=error_class)
        out.append((kafka_key(env), env.to_json().encode(), kafka_headers(env)))
    return out


def assert_same(batch: pa.RecordBatch, key_columns: tuple[str, ...] = ("order_id",), **overrides: Any) -> None:
    messages = builder(key_columns, **overrides).messages(batch)
    expected = reference(batch, key_columns, **overrides)
    assert list(zip(messages.keys, messages.values, messages.headers, strict=True)) == expected


TRICKY_STRINGS = ['plain', 'quote " and \\ backslash', "new\nline\ttab\r\x00\x1f\x7f", "é ü ß 中文 🙂 \u2028\u2029",
                  "", "100% %s %d", None]


@pytest.fixture
def column_wise(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records whether each batch's records were serialised column-wise (True) or row by row (False)."""
    from airflow_etl_provider.executor import arrow_envelopes

    paths: list[bool] = []
    split = arrow_envelopes._split_json_array

    def spy(text: bytes, separator: bytes, n: int, strip: int) -> list[bytes] | None:
        parts = split(text, separator, n, strip)
        if separator == b"},{":
            paths.append(parts is not None)
        return parts

    monkeypatch.setattr(arrow_envelopes, "_split_json_array", spy)
    return paths


def test_simple_columns_give_identical_messages(column_wise: list[bool]) -> None:
    n = len(TRICKY_STRINGS)
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array([1, -2, 2**63 - 1, None, 5, 6, 7], pa.int64()),
        "big": pa.array([2**64 - 1, 0, 1, 2, 3, 4, None], pa.uint64()),
        "name": pa.array(TRICKY_STRINGS, pa.string()),
        "large": pa.array(list(reversed(TRICKY_STRINGS)), pa.large_string()),
        "amount": pa.array([Decimal("1234.50"), Decimal("-0.05"), Decimal("0.00"), Decimal("99999999.99"), None,
                            Decimal("0.01"), Decimal("-12.30")], pa.decimal128(10, 2)),
        "units": pa.array([Decimal("5"), Decimal("0"), None, Decimal("-7"), Decimal("1"), Decimal("2"),
                           Decimal("3")], pa.decimal128(5, 0)),
        "micro": pa.array([Decimal("0.000001"), Decimal("0.000000"), Decimal("-1.5"), None, Decimal("2"),
                           Decimal("3"), Decimal("4")], pa.decimal128(12, 6)),
        "tiny": pa.array([Decimal("0.0000000001"), Decimal(0), None, Decimal("1.25"), Decimal("-0.0000001"),
                          Decimal("3"), Decimal("4")], pa.decimal128(20, 10)),
        "at": pa.array([NOW, NOW.replace(microsecond=0), None, datetime(1970, 1, 1, tzinfo=UTC),
                        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), NOW + timedelta(microseconds=1),
                        datetime(2000, 2, 29, 23, 59, 59, 10, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "before_1970": pa.array([NOW, datetime(999, 1, 1, tzinfo=UTC), None, NOW, NOW, NOW, NOW],
                                pa.timestamp("us", tz="UTC")),
        "all_null": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
        "seconds": pa.array([NOW.replace(microsecond=0), datetime(1, 1, 1, tzinfo=UTC),
                             datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), None, NOW, NOW, NOW],
                            pa.timestamp("s", tz="Etc/UTC")),
        "millis": pa.array([NOW, datetime(1969, 12, 31, 23, 59, 59, 1000, tzinfo=UTC), None, NOW, NOW, NOW,
                            datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)], pa.timestamp("ms", tz="+00:00")),
        "naive": pa.array([NOW.replace(tzinfo=None)] * (n - 1) + [None], pa.timestamp("us")),
        "day": pa.array([date(2026, 1, 31), None, date(1, 1, 1)] + [date(2020, 2, 29)] * (n - 3), pa.date32()),
        "day64": pa.array([date(1969, 12, 31), None, date(9999, 12, 31)] + [date(999, 2, 28)] * (n - 3), pa.date64()),
        "flag": pa.array([True, False, None] * 2 + [True], pa.bool_()),
        "blob": pa.array([b"\x00\xff", b"", None] * 2 + [b"x"], pa.binary()),
        "nothing": pa.nulls(n),
        "Zeta": pa.array(range(n), pa.int8()),
        "ärger": pa.array(range(n), pa.int16()),
    })
    assert_same(batch)
    assert column_wise == [True]


def test_other_time_zones_and_nanoseconds(column_wise: list[bool]) -> None:
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array([1, 2, 3]),
        "local": pa.array([NOW, None, datetime(2026, 7, 1, tzinfo=UTC)], pa.timestamp("ms", tz="Europe/Berlin")),
        "nanos": pa.array([1, 1_000_000_000, None], pa.timestamp("ns", tz="UTC")),
        "flag": pa.array([True, None, False]),
    })
    assert_same(batch)
    assert_same(batch, key_columns=("flag", "order_id"))
    assert column_wise == [True, True]

def test_floats_nested_values_and_no_key_columns(column_wise: list[bool]) -> None:
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array([1, 2, 3, 4, 5], pa.int32()),
        "x": pa.array([1e-7, 1e16, float("nan"), float("inf"), None], pa.float64()),
        "f32": pa.array([0.1, -0.0, float("-inf"), 2.5, None], pa.float32()),
        "tags": pa.array([["b", "a"], [], None, ["x"], ["%"]], pa.list_(pa.string())),
        "nested": pa.array([{"z": 1, "a": 1.5}, None, {"z": None, "a": float("nan")}, {"z": 2, "a": 1e-9},
                            {"z": 3, "a": 0.0}], pa.struct([("z", pa.int64()), ("a", pa.float64())])),
        "props": pa.array([[("k", "v")], [], None, [("b", "2"), ("a", "1")], [("%", "%")]],
                          pa.map_(pa.string(), pa.string())),
    })
    assert_same(batch)
    assert_same(batch, key_columns=())
    assert_same(batch, key_columns=("order_id", "x"))
    assert_same(batch, key_columns=("missing",))
    assert column_wise == []


def test_error_class_and_rules_columns(column_wise: list[bool]) -> None:
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
        "customer": pa.array(["a", None, "c", "d", "e"]),
        ERROR_COLUMN: pa.array(["boom", None, "", "x" * 5000, 'null value in "customer"\nDETAIL: (4, d)']),
        ERROR_CLASS_COLUMN: pa.array(["psycopg.errors.NotNullViolation", None, "", "CorruptRecord", "X%s"]),
        FAILED_RULES_COLUMN: pa.array([["not_null(a)", "range(b)"], None, [], ["one"], ["%"]],
                                      pa.list_(pa.string())),
    })
    assert_same(batch)
    assert_same(batch, key_columns=("order_id", "customer"))
    assert_same(batch, default_error="failed quality rules", stage="quality", source=None, target=None,
                run_context=RunContext(pipeline_id="p"), pipeline_id="other")
    assert column_wise == [True, True, True]


def test_error_column_only_and_no_record_columns() -> None:
    batch = pa.RecordBatch.from_pydict({ERROR_COLUMN: pa.array(["a", "b"])})
    assert_same(batch, key_columns=())


def test_records_with_the_json_separators_in_their_values(column_wise: list[bool]) -> None:
    """Strings holding '},{' or '","' (what splits one orjson.dumps of a whole batch) and long multi-byte
    messages, cut by code points."""
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array(["a},{b", '","', "}", '"},{"', None], pa.string()),
        "note": pa.array(['{"x":1},{"y":2}', "],[", '","', "", None]),
        ERROR_COLUMN: pa.array(["🙂" * 5000, "é" * 1001, '","', "},{", None]),
    })
    assert_same(batch)
    assert_same(batch, key_columns=("order_id", "note"))
    assert column_wise == [False, False]  # '},{' inside a value: row by row
    plain = batch.drop_columns(["order_id", "note"]).append_column("n", pa.array([1, 2, 3, 4, 5]))
    assert_same(plain, key_columns=("n",))  # the separators in messages only
    assert column_wise[-1] is True


def test_columns_the_fast_path_does_not_handle() -> None:
    not_text = pa.RecordBatch.from_pydict({"order_id": pa.array([1]), ERROR_COLUMN: pa.array([7])})
    assert not builder().handles(not_text.schema)
    with pytest.raises(ValueError, match="generic path"):
        builder().messages(not_text)
    duplicate = pa.RecordBatch.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    assert not builder().handles(duplicate.schema)
    assert builder().handles(pa.schema([("a", pa.int64()), (ERROR_COLUMN, pa.null())]))


def test_messages_of_many_rows_and_their_envelopes_round_trip() -> None:
    base = datetime(2025, 6, 1, tzinfo=UTC)
    n = 2500
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array(range(n), pa.int64()),
        "amount": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(10, 2)),
        "created_at": pa.array([base + timedelta(seconds=i * 7919) for i in range(n)],
                               pa.timestamp("us", tz="UTC")),
        "offset": pa.array([base.astimezone(timezone(timedelta(hours=2)))] * n, pa.timestamp("s", tz="+02:00")),
        ERROR_COLUMN: pa.array([f"row {i} failed" for i in range(n)]),
    })
    assert_same(batch)
    messages = builder().messages(batch)
    assert len(messages) == n and len(messages.slice(10, 20)) == 10
    envelopes = envelopes_of(messages.values)
    assert all(isinstance(env, DeadLetterEnvelope) for env in envelopes)
    assert [env.to_json().encode() for env in envelopes] == messages.values
    assert [kafka_key(env) for env in envelopes] == messages.keys
    assert [kafka_headers(env) for env in envelopes] == messages.headers


class FakeProducer:
    """A producer whose broker refuses the messages whose value holds ``refuse``, and confirms the others at
    the next ``poll``."""

    def __init__(self, refuse: bytes) -> None:
        self.refuse = refuse
        self.queue: list[tuple[Any, Any]] = []
        self.confirmed: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []

    def produce(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]],
                on_delivery: Any) -> None:
        self.queue.append((on_delivery, (key, value, headers)))

    def poll(self, _timeout: float = 0) -> int:
        queue, self.queue = self.queue, []
        for callback, (key, value, headers) in queue:
            refused = self.refuse in value
            if not refused:
                self.confirmed.append((key, value, headers))
            callback("MSG_SIZE_TOO_LARGE" if refused else None, FakeMessage(value))
        return len(queue)

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return 0


@dataclasses.dataclass
class FakeMessage:
    payload: bytes

    def value(self) -> bytes:
        return self.payload


def test_the_kafka_partition_path_confirms_every_message_and_spools_only_the_refused(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """partition_publisher with a Kafka sink: column-wise messages, several batches in flight; the messages
    the broker refuses are retried one by one, then spooled as their envelopes; the others are confirmed."""
    from airflow_etl_provider.core.retry import RetryPolicy
    from airflow_etl_provider.executor.dead_letter import partition_publisher, read_spool
    from airflow_etl_provider.executor.sinks import KafkaSink

    producer = FakeProducer(refuse=b'"note":"too big"')
    sink = KafkaSink(topic="dlq", producer_config={"bootstrap.servers": "127.0.0.1:9"},
                     retry=RetryPolicy(max_attempts=2, initial_delay_s=0.001, jitter="none"))
    monkeypatch.setattr(KafkaSink, "_get_producer", lambda self: producer)
    monkeypatch.setattr(KafkaSink, "connect_early", lambda self: None)
    n = 2500
    batch = pa.RecordBatch.from_pydict({
        "order_id": pa.array(range(n), pa.int64()),
        "note": pa.array(["too big" if i in (7, 1500) else f"row {i}" for i in range(n)]),
        ERROR_COLUMN: pa.array([f"failed {i}" for i in range(n)]),
    })
    fn = partition_publisher(sink, spool_dir=str(tmp_path), batch_prefix="run-t1", pipeline_id="orders",
                             run_context=RUN, stage="load", key_columns=["order_id"], source="s3://raw/o",
                             target="etl.orders", batch_size=1000)
    status = [s for out in fn(iter([batch.slice(0, 1200), batch.slice(1200)])) for s in out.to_pylist()]
    assert len(status) == 1
    assert (status[0]["delivered"], status[0]["spooled"]) == (n - 2, 2)
    assert len(status[0]["batch_latencies_s"]) == 4  # 1000 + 200 + 1000 + 300 rows

    timestamp = json.loads(producer.confirmed[0][1])["timestamp"]
    now = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    expected = reference(batch, now=now)
    assert sorted(producer.confirmed) == sorted(m for m in expected if b"too big" not in m[1])
    spooled = list(read_spool(status[0]["spool_path"].split(",")))
    assert sorted(env.to_json().encode() for env in spooled) == sorted(m[1] for m in expected if b"too big" in m[1])
