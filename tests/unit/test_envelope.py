"""The dead-letter envelope: JSON round trip, deterministic id, Kafka key and headers, type conversion, redaction."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from airflow_etl_provider.core.envelope import (
    DeadLetterEnvelope,
    RunContext,
    build_envelope,
    envelope_schema_fields,
    kafka_headers,
    kafka_key,
    redact,
    to_jsonable,
)

NOW = datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
RUN = RunContext(
    dag_id="orders_daily", task_id="load", run_id="scheduled__2026-01-31", try_number=2, pipeline_id="orders"
)


def envelope(record: dict[str, Any] | None = None, **kwargs: Any) -> DeadLetterEnvelope:
    options: dict[str, Any] = {"stage": "load", "run_context": RUN, "now": NOW, **kwargs}
    return build_envelope(
        record if record is not None else {"order_id": 7, "amount": 12.5}, "bad row", **options
    )


def test_build_from_an_exception_with_a_traceback() -> None:
    def insert() -> None:
        raise ValueError("value too long for type character varying(5)")

    try:
        insert()
    except ValueError as exc:
        env = build_envelope({"id": 1}, exc, stage="load", run_context=RUN, now=NOW)
    assert (env.error_class, env.error_message) == (
        "ValueError",
        "value too long for type character varying(5)",
    )
    assert env.stack_trace is not None and "Traceback" in env.stack_trace and "insert" in env.stack_trace
    assert (env.dag_id, env.task_id, env.run_id, env.try_number, env.pipeline_id) == (
        "orders_daily",
        "load",
        "scheduled__2026-01-31",
        2,
        "orders",
    )
    assert env.timestamp == "2026-01-31T12:00:00.123Z" and env.envelope_version == 1 and env.attempt == 1


def test_build_from_a_message_or_an_unraised_exception() -> None:
    env = envelope()
    assert env.error_class == "airflow_etl_provider.core.errors.DataError" and env.stack_trace is None
    assert env.error_message == "bad row"
    unraised = build_envelope({}, KeyError("k"), stage="parse", pipeline_id="p", now=NOW)
    assert unraised.error_class == "KeyError" and unraised.stack_trace is None


def test_error_class_is_module_qualified() -> None:
    class UniqueViolation(Exception):
        pass

    env = build_envelope({}, UniqueViolation("dup"), stage="load", pipeline_id="p", now=NOW)
    assert env.error_class == f"{__name__}.test_error_class_is_module_qualified.<locals>.UniqueViolation"


def test_long_messages_and_traces_are_cut() -> None:
    env = build_envelope({}, "x" * 10_000, stage="load", pipeline_id="p", now=NOW)
    assert len(env.error_message) == 4000
    try:
        raise RuntimeError("y" * 40_000)
    except RuntimeError as exc:
        env = build_envelope({}, exc, stage="load", pipeline_id="p", now=NOW)
    assert env.stack_trace is not None and len(env.stack_trace) == 16_000
    assert env.stack_trace.endswith("y" * 10 + "\n")  # the end of a traceback is kept


def test_pipeline_id_comes_from_the_argument_or_the_run_context() -> None:
    assert envelope(pipeline_id="explicit").pipeline_id == "explicit"
    assert envelope().pipeline_id == "orders"
    with pytest.raises(ValueError, match="pipeline_id"):
        build_envelope({}, "x", stage="load")


@pytest.mark.parametrize(
    ("now", "timestamp"),
    [
        (datetime(2026, 1, 1), "2026-01-01T00:00:00.000Z"),  # naive: taken as UTC
        (datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), "2026-01-01T00:00:00.000Z"),
    ],
)
def test_timestamps_are_utc(now: datetime, timestamp: str) -> None:
    assert envelope(now=now).timestamp == timestamp


def test_build_without_now_uses_the_current_time() -> None:
    stamp = build_envelope({}, "x", stage="load", pipeline_id="p").timestamp
    assert stamp.endswith("Z") and abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(
        minutes=1
    )


# -------------------------------------------------------------------------------------- JSON
def test_json_round_trip() -> None:
    env = envelope(
        {"order_id": 7, "note": "ünïcode"},
        context={"batch": 3},
        failed_rules=["not_null(order_id)", "range(amount)"],
        key_columns=["order_id"],
        source="kafka:orders",
        target="public.orders",
        original_location={"topic": "orders", "partition": 1, "offset": 42},
        attempt=3,
    )
    text = env.to_json()
    assert DeadLetterEnvelope.from_json(text) == env == DeadLetterEnvelope.from_json(text.encode())
    assert ": " not in text and ", " not in text and "ünïcode" in text  # compact, UTF-8
    assert list(json.loads(text)) == sorted(json.loads(text))  # keys sorted
    assert env.to_dict() == json.loads(text)


def test_from_json_is_tolerant_of_new_keys_but_not_of_garbage() -> None:
    doc = json.loads(envelope().to_json())
    doc["added_in_v2"] = True
    assert DeadLetterEnvelope.from_json(json.dumps(doc)) == envelope()
    with pytest.raises(ValueError, match="JSON object"):
        DeadLetterEnvelope.from_json("[1]")
    with pytest.raises(ValueError, match="not a dead-letter envelope"):
        DeadLetterEnvelope.from_json('{"stage": "load"}')


def test_the_envelope_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        envelope().stage = "other"  # type: ignore[misc]


def test_schema_fields_are_a_stable_contract() -> None:
    assert envelope_schema_fields() == [
        "timestamp", "pipeline_id", "stage", "error_message", "error_class", "record", "stack_trace",
        "attempt", "context", "dag_id", "task_id", "run_id", "try_number", "source", "target",
        "failed_rules", "record_key", "original_location", "envelope_version", "envelope_id",
    ]  # fmt: skip
    assert set(json.loads(envelope().to_json())) == set(envelope_schema_fields())


# ---------------------------------------------------------------------------------- identity
def test_envelope_id_is_deterministic_across_tries_and_republication() -> None:
    first = envelope({"a": 1, "b": [1, 2]})
    again = build_envelope(
        {"b": [1, 2], "a": 1},  # another column order
        RuntimeError("another error"),
        stage="load",
        run_context=dataclasses.replace(RUN, try_number=3),
        attempt=5,
        now=NOW + timedelta(hours=1),
    )
    assert first.envelope_id == again.envelope_id and len(first.envelope_id) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"record": {"a": 2}},
        {"stage": "quality"},
        {"pipeline_id": "other"},
        {"run_context": dataclasses.replace(RUN, run_id="manual__1")},
        {"original_location": {"topic": "t", "partition": 0, "offset": 1}},
    ],
)
def test_envelope_id_changes_with_what_identifies_the_row(change: dict[str, Any]) -> None:
    record = change.pop("record", {"a": 1})
    assert envelope(record, **change).envelope_id != envelope({"a": 1}).envelope_id


def test_an_explicit_envelope_id_is_kept() -> None:
    env = dataclasses.replace(envelope(), envelope_id="fixed")
    assert env.envelope_id == "fixed" and DeadLetterEnvelope.from_json(env.to_json()).envelope_id == "fixed"
    assert dataclasses.replace(envelope(), error_class="X").envelope_id == envelope().envelope_id


# ----------------------------------------------------------------------------------- Kafka
def test_kafka_key_is_the_business_key_or_the_pipeline() -> None:
    assert kafka_key(envelope({"order_id": 7, "line": 2}, key_columns=["order_id", "line"])) == b"7|2"
    assert (
        kafka_key(envelope({"order_id": 7}, key_columns=["order_id", "line"])) == b"orders"
    )  # incomplete key
    assert kafka_key(envelope({"order_id": None}, key_columns=["order_id"])) == b"orders"
    assert kafka_key(envelope({"order_id": 7})) == b"orders"
    assert envelope({"d": date(2026, 1, 2)}, key_columns=["d"]).record_key == "2026-01-02"


def test_kafka_headers() -> None:
    env = envelope(
        {"order_id": 7},
        failed_rules=["not_null", "unique"],
        source="src",
        target="tgt",
        original_location={"topic": "orders", "partition": 0, "offset": 9},
    )
    headers = dict(kafka_headers(env))
    assert headers == {
        "__etl.errors.class.name": b"airflow_etl_provider.core.errors.DataError",
        "__etl.errors.exception.message": b"bad row",
        "__etl.errors.stage": b"load",
        "__etl.errors.pipeline.id": b"orders",
        "__etl.errors.dag.id": b"orders_daily",
        "__etl.errors.task.id": b"load",
        "__etl.errors.run.id": b"scheduled__2026-01-31",
        "__etl.errors.try.number": b"2",
        "__etl.errors.attempt": b"1",
        "__etl.errors.source": b"src",
        "__etl.errors.target": b"tgt",
        "__etl.errors.rules": b"not_null,unique",
        "__etl.errors.original.location": b'{"offset":9,"partition":0,"topic":"orders"}',
        "__etl.errors.envelope.id": env.envelope_id.encode(),
    }


def test_kafka_headers_leave_out_missing_values_and_cut_the_message() -> None:
    env = build_envelope({}, "z" * 5000, stage="parse", pipeline_id="p", now=NOW)
    headers = dict(kafka_headers(env))
    assert set(headers) == {
        "__etl.errors.class.name",
        "__etl.errors.exception.message",
        "__etl.errors.stage",
        "__etl.errors.pipeline.id",
        "__etl.errors.attempt",
        "__etl.errors.envelope.id",
    }
    assert len(headers["__etl.errors.exception.message"]) == 1000


# ------------------------------------------------------------------------------ conversion
class Colour(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00"),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (date(2026, 1, 2), "2026-01-02"),
        (time(3, 4, 5), "03:04:05"),
        (Decimal("12345678901234567890.000000001"), "12345678901234567890.000000001"),
        (Decimal("1.10"), "1.10"),
        (b"\x00\xff", "AP8="),
        (bytearray(b"ab"), "YWI="),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        ((1, (2, 3)), [1, [2, 3]]),
        ({1: {"x": Decimal("1")}}, {"1": {"x": "1"}}),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (Colour.RED, "red"),
        (timedelta(seconds=90), "0:01:30"),
        (None, None),
        (True, True),
        (1.5, 1.5),
    ],
)
def test_values_become_json_native(value: Any, expected: Any) -> None:
    assert to_jsonable(value) == expected


def test_records_with_non_json_types_serialise() -> None:
    record = {
        "at": datetime(2026, 1, 1, tzinfo=UTC),
        "price": Decimal("9.99"),
        "raw": b"\x01",
        "tags": {"b", "a"},
    }
    env = envelope(record)
    assert json.loads(env.to_json())["record"] == {
        "at": "2026-01-01T00:00:00+00:00",
        "price": "9.99",
        "raw": "AQ==",
        "tags": ["a", "b"],
    }
    assert DeadLetterEnvelope.from_json(env.to_json()) == env


# -------------------------------------------------------------------------------- redaction
def test_redact_secret_looking_keys_recursively() -> None:
    context = {
        "password": "p",
        "DB_PASSWORD": "p",
        "passphrase": "p",
        "client_secret": "s",
        "access_token": "t",
        "credentials": {"user": "u"},
        "api_key": "k",
        "apiKey": "k",
        "api-key": "k",
        "sasl.password": "k",
        "nested": {"token": "t", "keep": 1},
        "list": [{"secret": "s"}, "plain"],
        "rows": 10,
    }
    assert redact(context) == {
        "password": "***",
        "DB_PASSWORD": "***",
        "passphrase": "***",
        "client_secret": "***",
        "access_token": "***",
        "credentials": "***",
        "api_key": "***",
        "apiKey": "***",
        "api-key": "***",
        "sasl.password": "***",
        "nested": {"token": "***", "keep": 1},
        "list": [{"secret": "***"}, "plain"],
        "rows": 10,
    }
    assert context["password"] == "p"  # a copy


def test_context_is_redacted_but_the_record_never_is() -> None:
    env = envelope({"password": "user data"}, context={"sasl.password": "hunter2", "topic": "orders"})
    assert env.record == {"password": "user data"}
    assert env.context == {"sasl.password": "***", "topic": "orders"}
    assert "hunter2" not in env.to_json()


def test_fast_to_json_matches_the_converting_path() -> None:
    import json as _json
    from datetime import datetime as _dt
    from decimal import Decimal as _D

    from airflow_etl_provider.core.envelope import DeadLetterEnvelope, build_envelope

    env = build_envelope({"id": 1, "amount": _D("1.10"), "at": _dt(2026, 1, 1), "nan": float("nan")},
                         ValueError("bad"), stage="load", pipeline_id="p", failed_rules=("r1",))
    canonical = _json.dumps(env.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert env.to_json() == canonical
    by_hand = DeadLetterEnvelope(timestamp="t", pipeline_id="p", stage="s", error_message="m", error_class="c",
                                 record={"d": _D("2.5")})  # not JSON-native: falls back to conversion
    assert _json.loads(by_hand.to_json())["record"] == {"d": "2.5"}


def _stdlib_json(env: DeadLetterEnvelope) -> str:
    """The envelope as the standard library writes it (the path without orjson)."""
    return json.dumps(env.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def test_orjson_output_parses_like_the_stdlib_output_for_a_realistic_envelope() -> None:
    from airflow_etl_provider.core import envelope as envelope_module

    if envelope_module._orjson is None:
        pytest.skip("orjson is not installed")
    try:
        raise ValueError('null value in column "customer_id" violates not-null constraint\nDETAIL: (7, é, ✓)')
    except ValueError as exc:
        error = exc
    env = build_envelope(
        {"order_id": 10_000_007, "customer_id": None, "email": "a@example.com", "amount": Decimal("46.78"),
         "price": 12.5, "ratio": 1e-7, "big": 1e16, "created_at": datetime(2025, 6, 1, 2, tzinfo=UTC),
         "tags": ["a", "b"], "nested": {"z": 1, "a": [True, False, None]}, "text": "tab\tquote\"\\ \x01 é \u2028"},
        error, stage="load", run_context=RUN, key_columns=["order_id"], source="s3://raw/orders/",
        target="etl.orders", failed_rules=["not_null"], context={"password": "x", "batch": 3},
        original_location={"topic": "orders", "partition": 1, "offset": 42}, now=NOW,
    )
    fast = env.to_json()
    assert json.loads(fast) == json.loads(_stdlib_json(env))
    assert list(json.loads(fast)) == sorted(json.loads(fast))  # keys sorted
    assert DeadLetterEnvelope.from_json(fast) == env
    assert DeadLetterEnvelope.from_json(fast.encode()) == env


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_never_reach_orjson_unconverted(bad: float) -> None:
    by_hand = DeadLetterEnvelope(timestamp="t", pipeline_id="p", stage="s", error_message="m", error_class="c",
                                 record={"x": [1, {"y": bad}]})  # orjson would write null
    expected = {"NaN", "Infinity", "-Infinity"}
    value = json.loads(by_hand.to_json())["record"]["x"][1]["y"]
    assert value in expected and value == to_jsonable(bad)
    assert json.loads(envelope({"x": bad}).to_json())["record"]["x"] == to_jsonable(bad)


@pytest.mark.parametrize(
    "record",
    [
        {"d": Decimal("2.5"), "t": datetime(2026, 1, 1, tzinfo=UTC), "u": uuid.UUID(int=7)},
        {"big": 2**70},  # beyond orjson's 64-bit integers
        {"k": (1, 2), "s": "x"},
    ],
)
def test_non_native_values_fall_back_to_the_converting_path(record: dict[str, Any]) -> None:
    by_hand = DeadLetterEnvelope(timestamp="t", pipeline_id="p", stage="s", error_message="m", error_class="c",
                                 record=record)
    assert json.loads(by_hand.to_json()) == json.loads(_stdlib_json(by_hand))


def test_cached_kafka_headers_follow_the_envelope() -> None:
    first = envelope({"order_id": 1}, source="a")
    second = envelope({"order_id": 2}, source="b", failed_rules=["r"])
    assert dict(kafka_headers(first))["__etl.errors.source"] == b"a"
    assert dict(kafka_headers(second))["__etl.errors.source"] == b"b"
    assert dict(kafka_headers(first))["__etl.errors.envelope.id"] == first.envelope_id.encode()
    assert [name for name, _ in kafka_headers(second)] == [
        "__etl.errors." + name for name in ("class.name", "exception.message", "stage", "pipeline.id", "dag.id",
                                            "task.id", "run.id", "try.number", "attempt", "source", "rules",
                                            "envelope.id")
    ]
    # equal but not alike: attempt True (hand-built) must not reuse attempt 1's cached headers
    one = dataclasses.replace(first, attempt=1)
    true = dataclasses.replace(first, attempt=True)
    assert dict(kafka_headers(one))["__etl.errors.attempt"] == b"1"
    assert dict(kafka_headers(true))["__etl.errors.attempt"] == b"True"
