"""The pipeline configuration's ``errorHandling`` block: retry, circuit breaker and dead-letter queue.

Accepted as the seed pipeline config writes it (camelCase, milliseconds), or with the models' field
names. Every error is a :class:`~airflow_etl_provider.core.errors.ConfigError` naming the path to the
field as the user wrote it, e.g. ``errorHandling.retry.maxAttempts: must be >= 1 (got 0)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.retry import ConfigModel, KeyMap, RetryPolicy, to_field

__all__ = [
    "DeadLetterConfig",
    "ErrorHandlingConfig",
    "FileDeadLetterConfig",
    "KafkaDeadLetterConfig",
    "S3DeadLetterConfig",
    "parse_dead_letter",
]

DEFAULT_KAFKA_CONN_ID = "kafka_default"
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_S3_URL = re.compile(r"s3a?://(?P<bucket>[^/]*)/?(?P<prefix>.*)")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def is_templated(value: Any) -> bool:
    """Whether ``value`` (or a string nested in it) still holds Jinja (``{{`` or ``{%``): operators validate
    such values at run time, after rendering, instead of at parse time."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_templated(v) for v in value)
    return False


def _s3_url(url: Any) -> dict[str, Any]:
    match = _S3_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise ValueError("must look like s3://bucket/prefix")
    return (
        {"bucket": match["bucket"], "prefix": match["prefix"]}
        if match["prefix"]
        else {"bucket": match["bucket"]}
    )


_FORMAT_KEYS: KeyMap = {
    "type": to_field("type"),
    "enabled": to_field("enabled"),
    "format": to_field("format"),
    "partition_by": to_field("partition_by"),
    "partitionBy": to_field("partition_by"),
}


class KafkaDeadLetterConfig(ConfigModel):
    """Dead letters to a Kafka topic.

    :param topic: the topic (letters, digits, ``.``, ``_``, ``-``; 1 to 249 characters).
    :param conn_id: an Airflow Kafka connection; ``kafka_default`` when neither it nor
        ``config["bootstrap.servers"]`` is given.
    :param config: producer settings (librdkafka), applied over the connection's.
    :param writer: who publishes the rows of a DataFrame (``DeadLetterHook.publish_dataframe``): ``"jvm"``
        Kafka's Java producer inside Spark's JVM, the rows never handed to Python (needs a classic session
        with airflow-etl-jvm.jar and kafka-clients on its jars, column types it renders, producer settings
        it can translate); ``"python"`` confluent-kafka in Spark's Python workers; ``"auto"`` (default) the
        JVM where it can, else Python (the reason is logged).
    :param enabled: ``False`` disables the dead-letter queue.
    """

    config_path: ClassVar[str] = "dead_letter"
    config_keys: ClassVar[KeyMap] = {
        "type": to_field("type"),
        "enabled": to_field("enabled"),
        "topic": to_field("topic"),
        "conn_id": to_field("conn_id"),
        "connId": to_field("conn_id"),
        "config": to_field("config"),
        "writer": to_field("writer"),
    }

    type: Literal["kafka"] = "kafka"
    topic: str
    conn_id: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    writer: Literal["auto", "jvm", "python"] = "auto"
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_connection(cls, data: Any) -> Any:
        config = data.get("config") if isinstance(data, Mapping) else None
        servers = isinstance(config, Mapping) and "bootstrap.servers" in config
        if isinstance(data, Mapping) and data.get("conn_id") is None and not servers:
            return {**data, "conn_id": DEFAULT_KAFKA_CONN_ID}
        return data

    @field_validator("topic")
    @classmethod
    def _valid_topic(cls, topic: str) -> str:
        if not _KAFKA_TOPIC.fullmatch(topic) or topic in {".", ".."}:
            raise ValueError(
                "is not a valid Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-' "
                "(and not '.' or '..')"
            )
        return topic

    @classmethod
    def from_config(
        cls, obj: KafkaDeadLetterConfig | Mapping[str, Any], *, path: str = "dead_letter"
    ) -> KafkaDeadLetterConfig:
        """Build it from the seed block (``{"type": "kafka", "config": {"bootstrap.servers": ..., "topic":
        ...}}``, where the topic sits in ``config``) or from the field names.

        :param obj: the configuration.
        :param path: where the block sits in the configuration, for error messages.
        """
        if isinstance(obj, KafkaDeadLetterConfig):
            return obj
        if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) and "topic" in obj["config"]:
            config = dict(obj["config"])
            topic = config.pop("topic")
            obj = {**obj, "topic": obj.get("topic", topic), "config": config}  # a flat key wins, as for s3 and file
        return cls.from_mapping(obj, path)


def _bucket_problem(name: str) -> str | None:
    if not 3 <= len(name) <= 63:
        return "must be 3 to 63 characters long"
    if not re.fullmatch(r"[a-z0-9.-]+", name):
        return "may contain only lowercase letters, digits, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a letter or a digit"
    if ".." in name:
        return "must not contain two adjacent periods"
    if _IP_ADDRESS.fullmatch(name):
        return "must not be formatted as an IP address"
    for prefix in _BUCKET_PREFIXES:
        if name.startswith(prefix):
            return f"must not start with {prefix!r}"
    for suffix in _BUCKET_SUFFIXES:
        if name.endswith(suffix):
            return f"must not end with {suffix!r}"
    return None


class S3DeadLetterConfig(ConfigModel):
    """Dead letters to S3 objects.

    :param bucket: the bucket (AWS bucket naming rules are checked).
    :param prefix: the key prefix, without leading or trailing ``/``.
    :param conn_id: an Airflow AWS connection.
    :param format: ``jsonl`` or ``parquet``.
    :param partition_by: ``date``, ``hour`` or ``pipeline``: how object keys are partitioned.
    :param enabled: ``False`` disables the dead-letter queue.

    ``path: s3://bucket/prefix`` may replace ``bucket`` and ``prefix``.
    """

    config_path: ClassVar[str] = "dead_letter"
    config_keys: ClassVar[KeyMap] = {
        **_FORMAT_KEYS,
        "bucket": to_field("bucket"),
        "prefix": to_field("prefix"),
        "conn_id": to_field("conn_id"),
        "connId": to_field("conn_id"),
        "path": _s3_url,
    }

    type: Literal["s3"] = "s3"
    bucket: str
    prefix: str = "dead-letters"
    conn_id: str = "aws_default"
    format: Literal["jsonl", "parquet"] = "jsonl"
    partition_by: Literal["date", "hour", "pipeline"] = "date"
    enabled: bool = True

    @field_validator("bucket")
    @classmethod
    def _valid_bucket(cls, bucket: str) -> str:
        problem = _bucket_problem(bucket)
        if problem:
            raise ValueError(f"is not a valid S3 bucket name: it {problem}")
        return bucket

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, prefix: str) -> str:
        return prefix.strip("/")

    @classmethod
    def from_config(
        cls, obj: S3DeadLetterConfig | Mapping[str, Any], *, path: str = "dead_letter"
    ) -> S3DeadLetterConfig:
        """Build it from a mapping with ``bucket`` and ``prefix``, or ``path: s3://bucket/prefix``; these may
        also sit under ``config`` as the seed config writes them (``{"type": "s3", "config": {"bucket": ...,
        "prefix": ...}}``; a key given both ways takes the flat value).

        :param obj: the configuration.
        :param path: where the block sits in the configuration, for error messages.
        """
        if isinstance(obj, S3DeadLetterConfig):
            return obj
        return _from_seed_block(cls, obj, path)  # type: ignore[return-value]


class FileDeadLetterConfig(ConfigModel):
    """Dead letters to local files (development, tests, or a shared file system).

    :param path: the directory.
    :param format: ``jsonl`` or ``parquet``.
    :param partition_by: ``date``, ``hour`` or ``pipeline``: how files are partitioned.
    :param enabled: ``False`` disables the dead-letter queue.
    """

    config_path: ClassVar[str] = "dead_letter"
    config_keys: ClassVar[KeyMap] = {**_FORMAT_KEYS, "path": to_field("path")}

    type: Literal["file"] = "file"
    path: str = ".local/dead-letters"
    format: Literal["jsonl", "parquet"] = "jsonl"
    partition_by: Literal["date", "hour", "pipeline"] = "date"
    enabled: bool = True

    @classmethod
    def from_config(
        cls, obj: FileDeadLetterConfig | Mapping[str, Any], *, path: str = "dead_letter"
    ) -> FileDeadLetterConfig:
        """Build it from a mapping; its settings may also sit under ``config`` as the seed config writes them
        (``{"type": "file", "config": {"path": ...}}``; a key given both ways takes the flat value).

        :param obj: the configuration.
        :param path: where the block sits in the configuration, for error messages.
        """
        if isinstance(obj, FileDeadLetterConfig):
            return obj
        return _from_seed_block(cls, obj, path)  # type: ignore[return-value]


def _from_seed_block(
    cls: type[S3DeadLetterConfig] | type[FileDeadLetterConfig], obj: Any, path: str
) -> S3DeadLetterConfig | FileDeadLetterConfig:
    """Build an S3 or file dead-letter config from the field names, or from the seed's shape that nests the
    type's settings under ``config`` (``{"type": "s3", "config": {"bucket": ..., "prefix": ...}}``).

    A key given both flat and under ``config`` (or two keys setting the same field, e.g. a flat ``path``
    and a nested ``bucket``) takes the flat value. Errors name the key where the user wrote it
    (``dead_letter.config.bucket``).
    """
    if not isinstance(obj, Mapping) or "config" not in obj:
        return cls.from_mapping(obj, path)
    nested = obj["config"]
    kind = cls.model_fields["type"].default
    if not isinstance(nested, Mapping):
        raise ConfigError(f"{path}.config", f"must be a mapping of the {kind} settings", value=nested)
    allowed = sorted(set(cls.config_keys) - {"type", "enabled"})
    for key in nested:
        if key not in allowed:
            raise ConfigError(
                f"{path}.config.{key}", f"unknown key for the {kind} dead-letter queue", allowed=allowed
            )
    flat = {k: v for k, v in obj.items() if k != "config"}

    def fields_of(key: str, value: Any) -> set[str]:
        if key not in cls.config_keys:
            return {key}
        try:
            return set(cls.config_keys[key](value))
        except ValueError:  # reported by from_mapping below, under the key the user wrote
            return {key}

    taken = set().union(*(fields_of(k, v) for k, v in flat.items())) if flat else set()
    kept = {k: v for k, v in nested.items() if k not in flat and not fields_of(k, v) & taken}
    try:
        return cls.from_mapping({**kept, **flat}, path)
    except ConfigError as exc:
        for key in kept:
            where = f"{path}.{key}"
            if exc.path == where or exc.path.startswith(where + "."):
                moved = f"{path}.config.{key}" + exc.path[len(where) :]
                raise ConfigError(moved, str(exc)[len(exc.path) + 2 :]) from None
        raise


DeadLetterConfig = KafkaDeadLetterConfig | S3DeadLetterConfig | FileDeadLetterConfig
"""A dead-letter queue: Kafka, S3 or files, told apart by ``type``."""

_DEAD_LETTER_TYPES: dict[
    str, type[KafkaDeadLetterConfig] | type[S3DeadLetterConfig] | type[FileDeadLetterConfig]
] = {
    "kafka": KafkaDeadLetterConfig,
    "s3": S3DeadLetterConfig,
    "file": FileDeadLetterConfig,
}


def parse_dead_letter(
    obj: DeadLetterConfig | Mapping[str, Any] | None, *, path: str = "dead_letter"
) -> DeadLetterConfig | None:
    """Parse a dead-letter block; ``None`` when it is absent or ``enabled: false``.

    :param obj: the block, e.g. ``{"enabled": true, "type": "kafka", "config": {"bootstrap.servers":
        "...", "topic": "..."}}``, or a parsed config.
    :param path: where the block sits in the configuration, for error messages.
    :raises ConfigError: for an unknown ``type`` (allowed: kafka, s3, file) or an invalid field.
    """
    if obj is None:
        return None
    if isinstance(obj, DeadLetterConfig):
        return obj if obj.enabled else None
    if not isinstance(obj, Mapping):
        raise ConfigError(path, "must be a mapping", value=obj)
    if obj.get("enabled", True) is False:
        return None
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _DEAD_LETTER_TYPES:
        problem = "is required" if kind is None else "is not a known dead-letter queue type"
        known = {key for model in _DEAD_LETTER_TYPES.values() for key in model.config_keys}
        unknown = sorted(str(k) for k in obj if k not in known)
        if unknown:  # a misspelt key is named, even when the type is what is missing
            problem += f" (unknown key(s) given: {', '.join(map(repr, unknown))})"
        raise ConfigError(f"{path}.type", problem, value=kind, allowed=list(_DEAD_LETTER_TYPES))
    return _DEAD_LETTER_TYPES[kind].from_config(obj, path=path)


class ErrorHandlingConfig(ConfigModel):
    """How a pipeline handles errors.

    :param retry: the retry policy.
    :param circuit_breaker: the shared circuit breaker's policy, or ``None`` for none.
    :param dead_letter: the dead-letter queue, or ``None`` for none.
    """

    config_path: ClassVar[str] = "errorHandling"
    _BLOCKS: ClassVar[dict[str, str]] = {
        "retry": "retry",
        "circuitBreaker": "circuit_breaker",
        "circuit_breaker": "circuit_breaker",
        "deadLetterQueue": "dead_letter",
        "dead_letter_queue": "dead_letter",
        "dead_letter": "dead_letter",
    }

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreakerPolicy | None = None
    dead_letter: DeadLetterConfig | None = None

    @classmethod
    def from_config(
        cls, obj: ErrorHandlingConfig | Mapping[str, Any] | str | Path | None, *, path: str = "errorHandling"
    ) -> ErrorHandlingConfig:
        """Build it from the ``errorHandling`` block, a whole pipeline config that contains one, or a
        JSON or YAML file holding either.

        The block's keys are ``retry``, ``circuitBreaker`` and ``deadLetterQueue`` (or
        ``circuit_breaker`` and ``dead_letter``); see :meth:`RetryPolicy.from_config`,
        :meth:`CircuitBreakerPolicy.from_config` and :func:`parse_dead_letter` for their contents.

        :param obj: the configuration, or a path to a ``.json``, ``.yaml`` or ``.yml`` file.
        :param path: the block's path in error messages.
        :raises ConfigError: naming the path to the field, e.g.
            ``errorHandling.retry.maxAttempts: must be >= 1 (got 0)``.
        """
        if isinstance(obj, ErrorHandlingConfig):
            return obj
        if obj is None:
            return cls()
        if isinstance(obj, str | Path):
            file = Path(obj)
            try:
                return cls.from_config(_read_config_file(file), path=path)
            except ConfigError as exc:
                raise ConfigError(str(file), str(exc)) from None
        if not isinstance(obj, Mapping):
            raise ConfigError(path, "must be a mapping", value=obj)
        for outer in ("errorHandling", "error_handling"):
            if outer in obj:
                return cls.from_config(obj[outer] or {}, path=outer)
        return cls._from_block(obj, path)

    @classmethod
    def _from_block(cls, block: Mapping[str, Any], path: str) -> ErrorHandlingConfig:
        parsers: dict[str, Callable[..., Any]] = {
            "retry": RetryPolicy.from_config,
            "circuit_breaker": CircuitBreakerPolicy.from_config,
            "dead_letter": parse_dead_letter,
        }
        fields: dict[str, Any] = {}
        given: dict[str, str] = {}
        for key, value in block.items():
            if key not in cls._BLOCKS:
                raise ConfigError(
                    f"{path}.{key}",
                    "unknown key (expected an errorHandling block, or a pipeline config that contains one)",
                    allowed=list(cls._BLOCKS),
                )
            name = cls._BLOCKS[key]
            if name in given:
                raise ConfigError(
                    f"{path}.{key}", f"conflicts with {path}.{given[name]}: give only one of them"
                )
            given[name] = key
            fields[name] = parsers[name](value, path=f"{path}.{key}")
        return cls(**fields)


def _read_config_file(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        return json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
        raise ConfigError("", f"is not valid {kind}: {exc}") from None
