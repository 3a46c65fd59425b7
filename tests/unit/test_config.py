"""The pipeline config's errorHandling block: every accepted form, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.config import (
    DeadLetterConfig,
    ErrorHandlingConfig,
    FileDeadLetterConfig,
    KafkaDeadLetterConfig,
    S3DeadLetterConfig,
    parse_dead_letter,
)
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.retry import RetryPolicy
from airflow_etl_provider.hooks.sources import validate_source
from airflow_etl_provider.operators.load import validate_target

SEED: dict[str, Any] = {
    "retry": {
        "strategy": "exponential-backoff",
        "maxAttempts": 5,
        "initialDelayMs": 1000,
        "maxDelayMs": 60000,
        "backoffMultiplier": 2.0,
        "jitter": True,
    },
    "circuitBreaker": {
        "enabled": True,
        "failureThreshold": 5,
        "resetTimeoutSeconds": 60,
        "halfOpenMaxAttempts": 1,
    },
    "deadLetterQueue": {
        "enabled": True,
        "type": "kafka",
        "config": {"bootstrap.servers": "127.0.0.1:9092", "topic": "etl.dead-letters"},
    },
}
EXPECTED = ErrorHandlingConfig(
    retry=RetryPolicy(),
    circuit_breaker=CircuitBreakerPolicy(),
    dead_letter=KafkaDeadLetterConfig(
        topic="etl.dead-letters", config={"bootstrap.servers": "127.0.0.1:9092"}
    ),
)


def error_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------ errorHandling
def test_the_seed_block() -> None:
    config = ErrorHandlingConfig.from_config(SEED)
    assert config == EXPECTED
    assert isinstance(config.dead_letter, KafkaDeadLetterConfig) and config.dead_letter.conn_id is None


def test_a_whole_pipeline_config() -> None:
    pipeline = {"pipelineId": "orders", "source": {"type": "kafka"}, "errorHandling": SEED}
    assert ErrorHandlingConfig.from_config(pipeline) == EXPECTED
    assert ErrorHandlingConfig.from_config({"errorHandling": None}) == ErrorHandlingConfig()
    assert (
        ErrorHandlingConfig.from_config({"error_handling": {"retry": {"max_attempts": 2}}}).retry.max_attempts
        == 2
    )


def test_snake_case_keys() -> None:
    config = ErrorHandlingConfig.from_config(
        {
            "retry": {"max_attempts": 3, "initial_delay_s": 0.5, "max_delay_s": 10, "jitter": "decorrelated"},
            "circuit_breaker": {"failure_threshold": 2, "on_open": "fail"},
            "dead_letter": {"type": "file", "path": "/tmp/dlq", "partition_by": "hour"},
        }
    )
    assert config.retry == RetryPolicy(
        max_attempts=3, initial_delay_s=0.5, max_delay_s=10, jitter="decorrelated"
    )
    assert config.circuit_breaker == CircuitBreakerPolicy(failure_threshold=2, on_open="fail")
    assert config.dead_letter == FileDeadLetterConfig(path="/tmp/dlq", partition_by="hour")


def test_defaults_and_passthrough() -> None:
    default = ErrorHandlingConfig.from_config(None)
    assert (default.retry, default.circuit_breaker, default.dead_letter) == (RetryPolicy(), None, None)
    assert ErrorHandlingConfig.from_config({}) == default
    assert ErrorHandlingConfig.from_config(EXPECTED) is EXPECTED
    only_dlq_disabled = ErrorHandlingConfig.from_config(
        {"deadLetterQueue": {"enabled": False, "type": "kafka"}}
    )
    assert only_dlq_disabled.dead_letter is None


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_from_a_file(tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"pipeline{suffix}"
    pipeline = {"pipelineId": "orders", "errorHandling": SEED}
    file.write_text(json.dumps(pipeline) if suffix == ".json" else yaml.safe_dump(pipeline))
    assert ErrorHandlingConfig.from_config(file) == EXPECTED
    assert ErrorHandlingConfig.from_config(str(file)) == EXPECTED
    block = tmp_path / f"block{suffix}"
    block.write_text(json.dumps(SEED) if suffix == ".json" else yaml.safe_dump(SEED))
    assert ErrorHandlingConfig.from_config(block) == EXPECTED


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert (
        error_of(ErrorHandlingConfig.from_config, missing)
        == f"{missing}: cannot read the file: No such file or directory"
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert error_of(ErrorHandlingConfig.from_config, broken).startswith(f"{broken}: is not valid JSON")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("retry: [unclosed")
    assert error_of(ErrorHandlingConfig.from_config, bad_yaml).startswith(f"{bad_yaml}: is not valid YAML")
    bad_value = tmp_path / "value.yaml"
    bad_value.write_text("errorHandling:\n  retry:\n    maxAttempts: 0\n")
    assert error_of(ErrorHandlingConfig.from_config, bad_value) == (
        f"{bad_value}: errorHandling.retry.maxAttempts: must be >= 1 (got 0)"
    )
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert (
        error_of(ErrorHandlingConfig.from_config, scalar)
        == f"{scalar}: errorHandling: must be a mapping (got 42)"
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"retry": {"maxAttempts": 0}}, "errorHandling.retry.maxAttempts: must be >= 1 (got 0)"),
        ({"retry": {"jitter": "sometimes"}}, "errorHandling.retry.jitter: must be one of 'full', 'equal', 'decorrelated' or 'none' (got 'sometimes')"),
        ({"retry": {"strategy": "linear"}}, "errorHandling.retry.strategy: must be one of 'exponential-backoff' or 'fixed' (got 'linear')"),
        ({"retry": {"initialDelayMs": 5000, "maxDelayMs": 100}}, "errorHandling.retry.maxDelayMs: must be >= the initial delay (5 s) (got 100)"),
        ({"circuitBreaker": {"failureThreshold": 0}}, "errorHandling.circuitBreaker.failureThreshold: must be >= 1 (got 0)"),
        ({"circuitBreaker": {"onOpen": "wait"}}, "errorHandling.circuitBreaker.onOpen: must be one of 'reschedule' or 'fail' (got 'wait')"),
        ({"deadLetterQueue": {"type": "rabbitmq"}}, "errorHandling.deadLetterQueue.type: is not a known dead-letter queue type (got 'rabbitmq'); allowed: kafka, s3, file"),
        ({"deadLetterQueue": {"type": "kafka", "config": {}}}, "errorHandling.deadLetterQueue.topic: is required"),
        ({"deadLetterQueue": {"type": "s3", "bucket": "Bad_Bucket"}}, "errorHandling.deadLetterQueue.bucket: is not a valid S3 bucket name: it may contain only lowercase letters, digits, '.' and '-' (got 'Bad_Bucket')"),
        ({"deadLetterQueue": {"type": "file", "format": "csv"}}, "errorHandling.deadLetterQueue.format: must be one of 'jsonl' or 'parquet' (got 'csv')"),
        ({"retries": {}}, "errorHandling.retries: unknown key (expected an errorHandling block, or a pipeline config that contains one); allowed: retry, circuitBreaker"),
        ({"circuitBreaker": {}, "circuit_breaker": {}}, "errorHandling.circuit_breaker: conflicts with errorHandling.circuitBreaker: give only one of them"),
        ({"retry": [1]}, "errorHandling.retry: must be a mapping (got [1])"),
    ],
)  # fmt: skip
def test_errors_name_the_path_to_the_field(block: dict[str, Any], message: str) -> None:
    assert error_of(ErrorHandlingConfig.from_config, block).startswith(message)


def test_errors_inside_a_pipeline_config_use_its_key() -> None:
    assert error_of(ErrorHandlingConfig.from_config, {"error_handling": {"retry": {"max_attempts": 0}}}) == (
        "error_handling.retry.max_attempts: must be >= 1 (got 0)"
    )
    assert error_of(ErrorHandlingConfig.from_config, 42) == "errorHandling: must be a mapping (got 42)"


# --------------------------------------------------------------------------------- Kafka DLQ
def test_kafka_seed_shape_moves_the_topic_out_of_the_producer_config() -> None:
    dlq = parse_dead_letter(SEED["deadLetterQueue"])
    assert dlq == KafkaDeadLetterConfig(
        topic="etl.dead-letters", config={"bootstrap.servers": "127.0.0.1:9092"}
    )
    assert SEED["deadLetterQueue"]["config"]["topic"] == "etl.dead-letters"  # the input is not modified


def test_kafka_connection_defaults() -> None:
    assert parse_dead_letter({"type": "kafka", "topic": "dlq"}) == KafkaDeadLetterConfig(
        topic="dlq", conn_id="kafka_default"
    )
    with_conn = parse_dead_letter({"type": "kafka", "topic": "dlq", "connId": "kafka_prod"})
    assert isinstance(with_conn, KafkaDeadLetterConfig) and with_conn.conn_id == "kafka_prod"
    direct = KafkaDeadLetterConfig(topic="dlq", config={"bootstrap.servers": "b:9092"})
    assert direct.conn_id is None


@pytest.mark.parametrize("topic", ["a", "etl.dead_letters-1", "x" * 249])
def test_valid_kafka_topics(topic: str) -> None:
    assert KafkaDeadLetterConfig.from_config({"topic": topic}).topic == topic


@pytest.mark.parametrize("topic", ["", "has space", "slash/no", "x" * 250, ".", "..", "ünï"])
def test_invalid_kafka_topics(topic: str) -> None:
    assert error_of(KafkaDeadLetterConfig.from_config, {"topic": topic}).startswith(
        "dead_letter.topic: is not a valid Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'"
    )


def test_kafka_topic_given_twice_the_flat_one_wins_as_for_every_type() -> None:
    both = parse_dead_letter({"type": "kafka", "topic": "a", "config": {"topic": "b", "linger.ms": 5}})
    assert isinstance(both, KafkaDeadLetterConfig) and both.topic == "a"
    assert "topic" not in both.config and both.config["linger.ms"] == 5  # not a producer setting
    nested = parse_dead_letter({"type": "kafka", "config": {"topic": "b"}})
    assert isinstance(nested, KafkaDeadLetterConfig) and nested.topic == "b"


def test_missing_topic_names_dead_letter_topic() -> None:
    assert error_of(parse_dead_letter, {"type": "kafka"}) == "dead_letter.topic: is required"


# ------------------------------------------------------------------------------------ S3 DLQ
def test_s3_from_bucket_and_prefix_or_a_path() -> None:
    explicit = parse_dead_letter(
        {"type": "s3", "bucket": "etl-dlq", "prefix": "/orders/", "partitionBy": "pipeline"}
    )
    assert explicit == S3DeadLetterConfig(bucket="etl-dlq", prefix="orders", partition_by="pipeline")
    assert parse_dead_letter({"type": "s3", "path": "s3://etl-dlq/a/b/"}) == S3DeadLetterConfig(
        bucket="etl-dlq", prefix="a/b"
    )
    assert parse_dead_letter({"type": "s3", "path": "s3a://etl-dlq"}) == S3DeadLetterConfig(bucket="etl-dlq")
    defaults = S3DeadLetterConfig(bucket="etl-dlq")
    assert (defaults.prefix, defaults.conn_id, defaults.format, defaults.partition_by) == (
        "dead-letters",
        "aws_default",
        "jsonl",
        "date",
    )


@pytest.mark.parametrize(
    ("bucket", "rule"),
    [
        ("ab", "must be 3 to 63 characters long"),
        ("a" * 64, "must be 3 to 63 characters long"),
        ("Upper-case", "may contain only lowercase letters, digits, '.' and '-'"),
        ("under_score", "may contain only lowercase letters, digits, '.' and '-'"),
        ("-starts-with-dash", "must begin and end with a letter or a digit"),
        ("ends-with-dot.", "must begin and end with a letter or a digit"),
        ("two..dots", "must not contain two adjacent periods"),
        ("192.168.5.4", "must not be formatted as an IP address"),
        ("xn--bucket", "must not start with 'xn--'"),
        ("sthree-bucket", "must not start with 'sthree-'"),
        ("amzn-s3-demo-bucket", "must not start with 'amzn-s3-demo-'"),
        ("bucket-s3alias", "must not end with '-s3alias'"),
        ("bucket--ol-s3", "must not end with '--ol-s3'"),
        ("bucket.mrap", "must not end with '.mrap'"),
        ("bucket--x-s3", "must not end with '--x-s3'"),
        ("bucket--table-s3", "must not end with '--table-s3'"),
    ],
)
def test_s3_bucket_rules(bucket: str, rule: str) -> None:
    assert error_of(S3DeadLetterConfig.from_config, {"bucket": bucket}) == (
        f"dead_letter.bucket: is not a valid S3 bucket name: it {rule} (got {bucket!r})"
    )


@pytest.mark.parametrize("bucket", ["abc", "my-bucket.v2", "1" * 63, "a1-b2.c3"])
def test_valid_s3_buckets(bucket: str) -> None:
    assert S3DeadLetterConfig.from_config({"bucket": bucket}).bucket == bucket


def test_s3_path_errors() -> None:
    assert error_of(parse_dead_letter, {"type": "s3", "path": "https://x/y"}) == (
        "dead_letter.path: must look like s3://bucket/prefix (got 'https://x/y')"
    )
    assert error_of(parse_dead_letter, {"type": "s3", "path": "s3://a-b/c", "bucket": "a-b"}) == (
        "dead_letter.bucket: conflicts with 'path': give only one of them"
    )
    assert error_of(parse_dead_letter, {"type": "s3"}) == "dead_letter.bucket: is required"


# ---------------------------------------------------------------------------------- file DLQ
def test_file_defaults_and_options() -> None:
    assert parse_dead_letter({"type": "file"}) == FileDeadLetterConfig()
    assert FileDeadLetterConfig().path == ".local/dead-letters"
    parquet = parse_dead_letter(
        {"type": "file", "path": "/data/dlq", "format": "parquet", "partitionBy": "hour"}
    )
    assert parquet == FileDeadLetterConfig(path="/data/dlq", format="parquet", partition_by="hour")
    assert error_of(parse_dead_letter, {"type": "file", "partitionBy": "minute"}).startswith(
        "dead_letter.partitionBy: must be one of 'date', 'hour' or 'pipeline' (got 'minute')"
    )


# ------------------------------------------------------------------------- parse_dead_letter
def test_absent_or_disabled_means_none() -> None:
    assert parse_dead_letter(None) is None
    assert parse_dead_letter({"enabled": False, "type": "s3", "bucket": "BAD"}) is None  # not validated
    assert parse_dead_letter(FileDeadLetterConfig(enabled=False)) is None
    enabled = FileDeadLetterConfig()
    assert parse_dead_letter(enabled) is enabled


def test_dead_letter_type_errors() -> None:
    assert error_of(parse_dead_letter, {"topic": "t"}) == (
        "dead_letter.type: is required (got None); allowed: kafka, s3, file"
    )
    assert error_of(parse_dead_letter, {"type": "sqs"}) == (
        "dead_letter.type: is not a known dead-letter queue type (got 'sqs'); allowed: kafka, s3, file"
    )
    assert error_of(parse_dead_letter, "kafka") == "dead_letter: must be a mapping (got 'kafka')"
    assert error_of(parse_dead_letter, {"type": "kafka", "topic": "t", "acks": "all"}).startswith(
        "dead_letter.acks: unknown key; allowed: config, connId, conn_id, enabled, topic, type"
    )


def test_dead_letter_config_is_a_union_of_the_three_kinds() -> None:
    assert DeadLetterConfig.__args__ == (KafkaDeadLetterConfig, S3DeadLetterConfig, FileDeadLetterConfig)
    assert isinstance(parse_dead_letter({"type": "file"}), DeadLetterConfig)


# ------------------------------------------------------------------ the seed's nested ``config``, every type
@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"type": "s3", "config": {"bucket": "etl-dlq", "prefix": "orders"}}, S3DeadLetterConfig(bucket="etl-dlq", prefix="orders")),
        ({"type": "s3", "config": {"path": "s3://etl-dlq/a/b", "connId": "aws_dlq", "format": "parquet"}},
         S3DeadLetterConfig(bucket="etl-dlq", prefix="a/b", conn_id="aws_dlq", format="parquet")),
        ({"type": "s3", "partitionBy": "hour", "config": {"bucket": "etl-dlq"}}, S3DeadLetterConfig(bucket="etl-dlq", partition_by="hour")),
        ({"type": "file", "config": {"path": "/tmp/dlq"}}, FileDeadLetterConfig(path="/tmp/dlq")),
        ({"type": "file", "format": "parquet", "config": {"path": "/tmp/dlq", "partition_by": "pipeline"}},
         FileDeadLetterConfig(path="/tmp/dlq", format="parquet", partition_by="pipeline")),
        ({"type": "file", "config": {}}, FileDeadLetterConfig()),
    ],
)  # fmt: skip
def test_s3_and_file_accept_the_seed_shape_with_config(block: dict[str, Any], expected: Any) -> None:
    assert parse_dead_letter(block) == expected
    assert ErrorHandlingConfig.from_config({"deadLetterQueue": block}).dead_letter == expected


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"type": "s3", "bucket": "flat-bucket", "config": {"bucket": "nested-bucket", "prefix": "p"}},
         S3DeadLetterConfig(bucket="flat-bucket", prefix="p")),
        # a flat path sets bucket and prefix: both nested ones give way
        ({"type": "s3", "path": "s3://flat-bucket/x", "config": {"bucket": "nested-bucket", "prefix": "p"}},
         S3DeadLetterConfig(bucket="flat-bucket", prefix="x")),
        ({"type": "s3", "conn_id": "flat", "config": {"bucket": "etl-dlq", "connId": "nested"}},
         S3DeadLetterConfig(bucket="etl-dlq", conn_id="flat")),
        ({"type": "file", "path": "/flat", "config": {"path": "/nested", "format": "parquet"}},
         FileDeadLetterConfig(path="/flat", format="parquet")),
    ],
)  # fmt: skip
def test_flat_keys_win_over_nested_ones(block: dict[str, Any], expected: Any) -> None:
    assert parse_dead_letter(block) == expected


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "s3", "config": {"bucket": "Bad_Bucket"}}, "dead_letter.config.bucket: is not a valid S3 bucket name"),
        ({"type": "s3", "config": {"prefix": "p"}}, "dead_letter.bucket: is required"),
        ({"type": "s3", "config": {"buckets": "etl-dlq"}}, "dead_letter.config.buckets: unknown key for the s3 dead-letter queue; allowed: bucket, connId"),
        ({"type": "s3", "config": {"bucket": "etl-dlq", "type": "s3"}}, "dead_letter.config.type: unknown key"),
        ({"type": "s3", "config": {"path": "http://x"}}, "dead_letter.config.path: must look like s3://bucket/prefix (got 'http://x')"),
        ({"type": "file", "config": "/tmp/dlq"}, "dead_letter.config: must be a mapping of the file settings (got '/tmp/dlq')"),
        ({"type": "file", "config": {"path": 3}}, "dead_letter.config.path: input should be a valid string (got 3)"),
        ({"type": "file", "config": {"format": "csv"}}, "dead_letter.config.format: must be one of 'jsonl' or 'parquet' (got 'csv')"),
        ({"type": "file", "config": {"bucket": "etl-dlq"}}, "dead_letter.config.bucket: unknown key for the file dead-letter queue"),
    ],
)  # fmt: skip
def test_nested_config_errors_name_the_nested_key(block: dict[str, Any], message: str) -> None:
    assert error_of(parse_dead_letter, block).startswith(message)


# ------------------------------------------------- parser bugs the fuzzing found (tests/unit/test_config_fuzz.py)
@pytest.mark.parametrize(
    ("parse", "config", "message"),
    [
        (parse_dead_letter, {"type": []}, "dead_letter.type: is not a known dead-letter queue type (got [])"),
        (parse_dead_letter, {"tpye": "s3", "bucket": "b"}, "dead_letter.type: is required (unknown key(s) given: 'tpye')"),
        (validate_source, {"format": "csv", "pth": "/in"}, "source.pth: unknown key"),
        (validate_source, {"format": "csv", "path": 3}, "source.path: must be a string (got 3)"),
        (validate_source, {"format": ["csv"], "path": "/in"}, "source.format: is not a supported source format"),
        (validate_source, {"format": "csv", "path": "/in", "options": "header"}, "source.options: must be a mapping"),
        (validate_target, {"type": "postgres", "table": "t", "mode": "upsert", "keys": True}, "target.keys: must be a column name or a list"),
        (validate_target, {"type": "postgres", "table": "t", "mdoe": "upsert"}, "target.mdoe: unknown key for a postgres target"),
        (validate_target, {"type": "parquet", "path": "/out", "table": "t"}, "target.table: unknown key for a parquet target"),
        (validate_target, {"typ": "postgres", "table": "t"}, "target.type: is not a supported target type (unknown key(s) given: 'typ')"),
        (validate_target, {"type": "postgres", "table": 5}, "target.table: must be a string (got 5)"),
    ],
)  # fmt: skip
def test_parsers_refuse_what_the_fuzzing_found(parse: Any, config: dict[str, Any], message: str) -> None:
    assert error_of(parse, config).startswith(message)


def test_a_single_upsert_key_may_be_a_string() -> None:
    validate_target({"type": "postgres", "table": "t", "mode": "upsert", "keys": "id"})


def test_postgres_target_stage_method_is_checked_at_parse_time() -> None:
    message = error_of(validate_target, {"type": "postgres", "table": "t", "stage_method": "bulk"})
    assert message.startswith("target.stage_method: is not a staging method"), message
    assert "copy" in message and "jdbc" in message
    for method in ("copy", "jdbc", "{{ params.stage_method }}"):
        validate_target({"type": "postgres", "table": "t", "stage_method": method}, "target")


def test_postgres_target_copy_writer_is_checked_at_parse_time() -> None:
    message = error_of(validate_target, {"type": "postgres", "table": "t", "stage_method": "copy", "copy_writer": "c"})
    assert message.startswith("target.copy_writer: is not a COPY writer"), message
    assert "'auto', 'jvm', 'python'" in message or "auto, jvm, python" in message, message
    for writer in ("auto", "jvm", "python", "{{ params.copy_writer }}"):
        validate_target({"type": "postgres", "table": "t", "stage_method": "copy", "copy_writer": writer}, "target")


def test_postgres_target_copy_format_is_checked_at_parse_time() -> None:
    message = error_of(validate_target, {"type": "postgres", "table": "t", "stage_method": "copy", "copy_format": "text"})
    assert message.startswith("target.copy_format: is not a COPY format of the JVM writer"), message
    assert "'auto', 'binary', 'csv'" in message or "auto, binary, csv" in message, message
    for fmt in ("auto", "binary", "csv", "{{ params.copy_format }}"):
        validate_target({"type": "postgres", "table": "t", "stage_method": "copy", "copy_format": fmt}, "target")
