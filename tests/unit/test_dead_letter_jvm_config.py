"""The driver half of the JVM Kafka dead-letter publisher, without Spark: the Java producer settings it derives
from librdkafka's, the per-column kinds it sends the Java side, the envelope template it cuts, and the
``writer`` setting of the dead-letter config."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_etl_provider.core.config import parse_dead_letter
from airflow_etl_provider.core.envelope import RunContext
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.executor.arrow_envelopes import KafkaMessageBuilder
from airflow_etl_provider.executor.sinks import KafkaSink
from airflow_etl_provider.hooks.dead_letter_jvm import (
    JAVA_TUNING,
    java_producer_config,
    record_kinds,
    sink_java_config,
)


def test_the_sinks_librdkafka_settings_become_java_producer_settings() -> None:
    librdkafka = {**KafkaSink(topic="t", producer_config={"bootstrap.servers": "k:9092", "client.id": "etl"})._config(),
                  **JAVA_TUNING}
    assert java_producer_config(librdkafka) == {
        "bootstrap.servers": "k:9092", "client.id": "etl", "enable.idempotence": "true", "acks": "all",
        "linger.ms": "10", "batch.size": "1048576", "compression.type": "lz4",
        # message.timeout.ms (30 s) bounds the delivery and the wait for metadata; requests time out before it
        "delivery.timeout.ms": "30000", "request.timeout.ms": "29990", "max.block.ms": "30000",
    }


def test_the_writers_settings_for_a_sink_add_the_java_tuning_only_where_the_user_set_nothing() -> None:
    default = sink_java_config(KafkaSink(topic="t", producer_config={"bootstrap.servers": "k:9092"}))
    assert isinstance(default, dict)
    assert (default["batch.size"], default["linger.ms"], default["acks"]) == ("1048576", "10", "all")
    own = sink_java_config(KafkaSink(topic="t", producer_config={"bootstrap.servers": "k:9092", "linger.ms": 3}))
    assert isinstance(own, dict)
    assert (own["batch.size"], own["linger.ms"]) == ("1048576", "3")
    assert sink_java_config(KafkaSink(topic="t", producer_config={"bootstrap.servers": "k:1", "sasl.username": "u"})
                            ) == "the producer setting 'sasl.username' has no Java producer equivalent here"


def test_librdkafka_names_of_java_settings_are_renamed() -> None:
    # the stack's kafka_default connection carries socket.timeout.ms; the Java producer calls it request.timeout.ms
    config = java_producer_config({"bootstrap.servers": "k:1", "socket.timeout.ms": 10000,
                                   "queue.buffering.max.ms": 7, "message.send.max.retries": 5,
                                   "batch.num.messages": 10000})
    assert isinstance(config, dict)
    assert (config["request.timeout.ms"], config["linger.ms"], config["retries"]) == ("10000", "7", "5")
    assert "batch.num.messages" not in config


def test_a_short_message_timeout_keeps_the_java_producers_invariant() -> None:
    config = java_producer_config({"bootstrap.servers": "k:1", "message.timeout.ms": 2000, "linger.ms": 10})
    assert isinstance(config, dict)
    assert int(config["delivery.timeout.ms"]) >= int(config["linger.ms"]) + int(config["request.timeout.ms"])
    assert config["max.block.ms"] == "2000"


@pytest.mark.parametrize(("setting", "reason"), [
    ({"sasl.username": "u"}, "the producer setting 'sasl.username' has no Java producer equivalent here"),
    ({"security.protocol": "SASL_SSL"}, "the producer setting 'security.protocol' has no Java producer equivalent"),
])
def test_settings_without_a_java_equivalent_keep_the_python_writer(setting, reason) -> None:
    assert java_producer_config({"bootstrap.servers": "k:1", **setting}).startswith(reason)


def test_record_kinds_follow_the_spark_types() -> None:
    fields = [("a", "string", None), ("b", "long", None), ("c", "integer", None), ("d", "boolean", None),
              ("e", "decimal", 2), ("f", "decimal", 0), ("g", "date", None), ("h", "timestamp", None),
              ("i", "timestamp_ntz", None), ("j", "binary", None), ("k", "byte", None), ("l", "short", None)]
    assert "".join(record_kinds(fields)) == "siiBnnDTLbii"
    assert record_kinds([("score", "double", None)]) == "column 'score' is double"
    assert record_kinds([("x", "decimal", 8)]) == "column 'x' is decimal of scale 8"  # str(Decimal) may use exponents
    assert record_kinds([("tags", "array", None)]) == "column 'tags' is array"


def test_value_parts_are_the_envelope_around_its_per_row_fields() -> None:
    builder = KafkaMessageBuilder(
        stage="load", pipeline_id="p", run_context=RunContext("d", "t", "r", 1, "p"), key_columns=["id"],
        source="s", target="100% done", default_error="rejected", now=datetime(2026, 12, 6, tzinfo=UTC),
        error_column="_etl_error", error_class_column="_etl_error_class", rules_column="_etl_failed_rules")
    parts = builder.value_parts()
    assert len(parts) == 7
    filled = b"".join(p + f for p, f in zip(parts, [b"ID", b'"C"', b'"M"', b"[]", b"{}", b"null", b""], strict=True))
    assert filled == builder._value_format % (b"ID", b'"C"', b'"M"', b"[]", b"{}", b"null")
    assert b'"target":"100% done"' in parts[-1]  # the template's escaped % is a plain % again


def test_the_writer_setting_is_validated_with_the_config() -> None:
    assert parse_dead_letter({"type": "kafka", "topic": "t", "config": {"bootstrap.servers": "k:1"}}).writer == "auto"
    assert parse_dead_letter({"type": "kafka", "topic": "t", "writer": "jvm",
                              "config": {"bootstrap.servers": "k:1"}}).writer == "jvm"
    with pytest.raises(ConfigError, match=r"dead_letter\.writer"):
        parse_dead_letter({"type": "kafka", "topic": "t", "writer": "java", "config": {"bootstrap.servers": "k:1"}})
