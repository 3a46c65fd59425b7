"""The dead-letter envelope: a failed row with everything needed to understand and replay it.

One envelope is one JSON object (``to_json``: compact, keys sorted). Its field names are a contract
(:func:`envelope_schema_fields`): Spark code may build the same JSON on executors, and readers of the
dead-letter topic or bucket rely on them. The envelope's Kafka key and headers follow Kafka Connect's
dead-letter conventions (``__connect.errors.*``) under an ``__etl.errors.`` prefix.

Only the standard library is required, so envelopes can be built anywhere, a Spark executor included;
when orjson is installed (it is a dependency of the package) ``to_json`` uses it on the DLQ's hot path
(about 3x faster than ``json``; ``benchmarks/bench_dlq_kafka.py``) and falls back to ``json`` otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import operator
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from airflow_etl_provider.core.errors import DataError

try:  # optional: the DLQ's hot path (to_json) is ~5x faster with it; without it the stdlib gives the same JSON
    import orjson as _orjson
except ImportError:  # pragma: no cover - e.g. a Spark executor without it
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "DeadLetterEnvelope",
    "RunContext",
    "build_envelope",
    "envelope_schema_fields",
    "kafka_headers",
    "kafka_key",
    "redact",
    "to_jsonable",
]

ENVELOPE_VERSION = 1
MAX_ERROR_MESSAGE_CHARS = 4000
MAX_STACK_TRACE_CHARS = 16000
MAX_HEADER_MESSAGE_CHARS = 1000
HEADER_PREFIX = "__etl.errors."
REDACTED = "***"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|api[_-]?key|sasl\.password", re.IGNORECASE)


def to_jsonable(value: Any) -> Any:
    """Convert a value to JSON-native types, deterministically and without losing precision.

    datetime, date and time become ISO-8601 strings; ``Decimal`` its exact string; bytes base64;
    UUID and enums their value; sets sorted lists; tuples lists; mapping keys strings; NaN and
    infinities the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (JSON has no such numbers);
    anything else ``str(value)``.

    :param value: the value.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(item) for item in value), key=_canonical)
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return str(value)


def _canonical(value: Any) -> str:
    """Compact JSON with sorted keys: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``mapping``, replacing with ``***`` the values of keys that look like secrets.

    Keys matching ``pass``, ``password``, ``secret``, ``token``, ``credential``, ``api_key``/``apikey``
    or ``sasl.password`` (any case) are redacted, in nested mappings and in lists of mappings too.

    :param mapping: e.g. an envelope's ``context``. Never apply it to a row: that is the user's data.
    """
    return {
        key: REDACTED if _SECRET_KEY.search(str(key)) else _redact_value(value)
        for key, value in mapping.items()
    }


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


@dataclass(frozen=True)
class RunContext:
    """Where an envelope was produced: the Airflow task try and the pipeline.

    :param dag_id: the DAG.
    :param task_id: the task.
    :param run_id: the DAG run.
    :param try_number: the task try.
    :param pipeline_id: the pipeline (the envelope's default ``pipeline_id``).
    """

    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None
    pipeline_id: str | None = None


@dataclass(frozen=True)
class DeadLetterEnvelope:
    """One failed row and why it failed.

    :param timestamp: when it failed, ISO-8601 UTC (``2026-01-31T12:00:00.123Z``).
    :param pipeline_id: the pipeline.
    :param stage: where it failed: ``load``, ``quality``, ``parse``, ``streaming-late`` ...
    :param error_message: the error's message.
    :param error_class: the error's class, module-qualified (``psycopg.errors.UniqueViolation``).
    :param stack_trace: the formatted traceback, if there was one.
    :param record: the original row, as a JSON object of its columns.
    :param attempt: how many times the row was tried.
    :param context: more details (redacted of secrets by :func:`build_envelope`).
    :param dag_id: the Airflow DAG.
    :param task_id: the Airflow task.
    :param run_id: the DAG run.
    :param try_number: the task try.
    :param source: where the row came from (table, topic, path).
    :param target: where it was going.
    :param failed_rules: names of the data-quality rules it failed.
    :param record_key: its business key (key columns joined with ``|``).
    :param original_location: where it was read, e.g. ``{"topic", "partition", "offset"}`` or
        ``{"path", "line"}``.
    :param envelope_version: the envelope format's version.
    :param envelope_id: a deterministic id: the SHA-256 of the envelope version, ``pipeline_id``,
        ``run_id``, ``stage``, ``original_location`` and the canonical JSON of ``record``. The same row
        failing at the same stage of the same run gets the same id in every task try and every
        re-publication, so consumers can deduplicate on it. Computed when left empty.
    """

    timestamp: str
    pipeline_id: str
    stage: str
    error_message: str
    error_class: str
    record: dict[str, Any]
    stack_trace: str | None = None
    attempt: int = 1
    context: dict[str, Any] = field(default_factory=dict)
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None
    source: str | None = None
    target: str | None = None
    failed_rules: list[str] = field(default_factory=list)
    record_key: str | None = None
    original_location: dict[str, Any] | None = None
    envelope_version: int = ENVELOPE_VERSION
    envelope_id: str = ""

    def __post_init__(self) -> None:
        if not self.envelope_id:
            identity = [
                self.envelope_version,
                self.pipeline_id,
                self.run_id,
                self.stage,
                to_jsonable(self.original_location),
                to_jsonable(self.record),
            ]
            digest = hashlib.sha256(_canonical(identity).encode()).hexdigest()
            object.__setattr__(self, "envelope_id", digest)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as JSON-native values (see :func:`to_jsonable`)."""
        return {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        """The envelope as compact JSON with sorted keys.

        :func:`build_envelope` stores JSON-native values only, so the fields are dumped as they are (this
        is the DLQ's hot path): with orjson when it is installed and every value is JSON-native and finite
        (checked first: orjson would write NaN as ``null``), else with the standard library. An envelope
        built by hand with other values falls back to :meth:`to_dict`, which gives the same JSON.
        """
        return _envelope_json(self)

    @classmethod
    def from_json(cls, data: str | bytes) -> DeadLetterEnvelope:
        """Read an envelope written by :meth:`to_json`; keys unknown to this version are ignored.

        :param data: the JSON text.
        """
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError(f"a dead-letter envelope is a JSON object, got {type(doc).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{key: value for key, value in doc.items() if key in known})
        except TypeError as exc:
            raise ValueError(f"not a dead-letter envelope: {exc}") from exc


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DeadLetterEnvelope))

_NATIVE_SCALARS = frozenset({str, int, bool, type(None)})


def _native_and_finite(values: Iterable[Any]) -> bool:
    """True if ``values`` (recursively) hold only JSON-native values and no NaN or infinity: then orjson
    writes exactly what the standard library would (numbers aside, which parse back to the same values)."""
    for value in values:
        kind = type(value)
        if kind in _NATIVE_SCALARS:
            continue
        if kind is float:
            if value - value != 0.0:  # NaN or +-infinity
                return False
        elif kind is dict:
            if not _native_and_finite(value.values()):
                return False
        elif kind is list or kind is tuple:
            if not _native_and_finite(value):
                return False
        else:
            return False
    return True


def _envelope_json(env: DeadLetterEnvelope) -> str:
    # Two attrgetters, not env.__dict__ nor one 20-tuple: in CPython 3.11, reading __dict__ makes the
    # envelope allocate and keep a dict, and each freed 20-tuple still counts as a new container; either
    # way one garbage-collector "allocation" per row, so a big publish triggers full collections (~0.3 s).
    head, tail = _head_values(env), _tail_values(env)
    doc = dict(zip(_HEAD_FIELDS, head, strict=True))
    doc.update(zip(_TAIL_FIELDS, tail, strict=True))
    if _orjson is not None and _native_and_finite(head) and _native_and_finite(tail):
        try:
            return _orjson.dumps(doc, option=_orjson.OPT_SORT_KEYS).decode()
        except TypeError:  # e.g. an int beyond 64 bits, a non-str key: the standard library decides
            pass
    try:
        return _canonical(doc)
    except (TypeError, ValueError):
        return _canonical(env.to_dict())


_HEAD_FIELDS, _TAIL_FIELDS = _FIELD_NAMES[: len(_FIELD_NAMES) // 2], _FIELD_NAMES[len(_FIELD_NAMES) // 2 :]
_head_values = operator.attrgetter(*_HEAD_FIELDS)
_tail_values = operator.attrgetter(*_TAIL_FIELDS)


def envelope_schema_fields() -> list[str]:
    """The envelope's field names, in declaration order (a stable contract: only ever add to it)."""
    return [f.name for f in dataclasses.fields(DeadLetterEnvelope)]


def kafka_key(env: DeadLetterEnvelope) -> bytes:
    """The Kafka message key: the row's business key if known, else the pipeline id.

    :param env: the envelope.
    """
    return (env.record_key if env.record_key is not None else env.pipeline_id).encode()


def kafka_headers(env: DeadLetterEnvelope) -> list[tuple[str, bytes]]:
    """Kafka headers describing the failure, in the spirit of Kafka Connect's ``__connect.errors.*``.

    Only headers with a value are present.

    :param env: the envelope.
    """
    # The headers from the error class down to the target are usually the same for a whole batch (one task
    # try, one stage, one error class): they are encoded once and cached (the DLQ's hot path).
    attempt, try_number = env.attempt, env.try_number
    if type(attempt) is int and (try_number is None or type(try_number) is int):  # 1 and True: equal, not alike
        constant_key = (env.error_class, env.stage, env.pipeline_id, env.dag_id, env.task_id, env.run_id,
                        try_number, attempt, env.source, env.target)
        try:
            constant = _CONSTANT_HEADERS.get(constant_key)
        except TypeError:  # an unhashable value in an envelope built by hand
            constant = _constant_headers(env)
        else:
            if constant is None:
                constant = _constant_headers(env)
                if len(_CONSTANT_HEADERS) >= _CONSTANT_HEADERS_MAX:
                    _CONSTANT_HEADERS.clear()
                _CONSTANT_HEADERS[constant_key] = constant
    else:
        constant = _constant_headers(env)
    headers = list(constant[0])
    headers.append((_MESSAGE_HEADER, str(env.error_message[:MAX_HEADER_MESSAGE_CHARS]).encode()))
    headers += constant[1]
    if env.failed_rules:
        headers.append((_RULES_HEADER, ",".join(env.failed_rules).encode()))
    if env.original_location:
        headers.append((_LOCATION_HEADER, _canonical(to_jsonable(env.original_location)).encode()))
    if env.envelope_id is not None:
        headers.append((_ID_HEADER, str(env.envelope_id).encode()))
    return headers


_MESSAGE_HEADER = HEADER_PREFIX + "exception.message"
_RULES_HEADER = HEADER_PREFIX + "rules"
_LOCATION_HEADER = HEADER_PREFIX + "original.location"
_ID_HEADER = HEADER_PREFIX + "envelope.id"
_CONSTANT_HEADERS_MAX = 256
_Headers = tuple[tuple[str, bytes], ...]
_CONSTANT_HEADERS: dict[tuple[Any, ...], tuple[_Headers, _Headers]] = {}


def _constant_headers(env: DeadLetterEnvelope) -> tuple[_Headers, _Headers]:
    """The ``class.name`` header and the headers from ``stage`` to ``target``, encoded (those with a value)."""
    values: list[tuple[str, Any]] = [
        ("stage", env.stage),
        ("pipeline.id", env.pipeline_id),
        ("dag.id", env.dag_id),
        ("task.id", env.task_id),
        ("run.id", env.run_id),
        ("try.number", env.try_number),
        ("attempt", env.attempt),
        ("source", env.source),
        ("target", env.target),
    ]
    return (
        ((HEADER_PREFIX + "class.name", str(env.error_class).encode()),) if env.error_class is not None else (),
        tuple((HEADER_PREFIX + name, str(value).encode()) for name, value in values if value is not None),
    )


def _qualified_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _record_key(record: Mapping[str, Any], key_columns: Sequence[str]) -> str | None:
    if not key_columns or any(record.get(column) is None for column in key_columns):
        return None
    return "|".join(str(to_jsonable(record[column])) for column in key_columns)


def run_independent_id(env: DeadLetterEnvelope) -> str:
    """An envelope id that leaves the Airflow run out: the SHA-256 of the envelope version, ``pipeline_id``,
    ``stage``, ``original_location``, ``context`` and ``record``. For rows with a place of their own (a Kafka
    topic, partition and offset, and the window they were late for): a replay of the same stream batch in a
    later run re-sends the same ids, so consumers deduplicate across runs too."""
    identity = [env.envelope_version, env.pipeline_id, env.stage, to_jsonable(env.original_location),
                to_jsonable(env.context), to_jsonable(env.record)]
    return hashlib.sha256(_canonical(identity).encode()).hexdigest()


def build_envelope(
    record: Mapping[str, Any],
    error: BaseException | str,
    *,
    stage: str,
    pipeline_id: str | None = None,
    attempt: int = 1,
    context: Mapping[str, Any] | None = None,
    run_context: RunContext | None = None,
    failed_rules: Iterable[str] = (),
    key_columns: Sequence[str] = (),
    source: str | None = None,
    target: str | None = None,
    original_location: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> DeadLetterEnvelope:
    """Build the envelope of one failed row.

    :param record: the original row (column -> value); kept as is, never redacted.
    :param error: the exception, or a message (e.g. of a failed quality rule: recorded as a
        :class:`~airflow_etl_provider.core.errors.DataError`).
    :param stage: where it failed: ``load``, ``quality``, ``parse``, ``streaming-late`` ...
    :param pipeline_id: the pipeline; defaults to ``run_context.pipeline_id``.
    :param attempt: how many times the row was tried.
    :param context: more details; values of secret-looking keys are redacted (:func:`redact`).
    :param run_context: the Airflow DAG, task, run and try.
    :param failed_rules: names of the data-quality rules the row failed.
    :param key_columns: business-key columns; the ``record_key`` is their values joined with ``|``,
        when all are present.
    :param source: where the row came from.
    :param target: where it was going.
    :param original_location: where it was read, e.g. ``{"topic": ..., "partition": ..., "offset": ...}``.
    :param now: when it failed (default: now); a naive datetime is taken as UTC.
    :raises ValueError: if neither ``pipeline_id`` nor ``run_context.pipeline_id`` is given.
    """
    run = run_context or RunContext()
    pipeline = pipeline_id or run.pipeline_id
    if not pipeline:
        raise ValueError("build_envelope needs a pipeline_id (or a run_context with one)")
    exc = DataError(error) if isinstance(error, str) else error
    stack = (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-MAX_STACK_TRACE_CHARS:]
        if exc.__traceback__ is not None
        else None
    )
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return DeadLetterEnvelope(
        timestamp=when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        pipeline_id=pipeline,
        stage=stage,
        error_message=str(exc)[:MAX_ERROR_MESSAGE_CHARS],
        error_class=_qualified_name(type(exc)),
        stack_trace=stack,
        record=to_jsonable(dict(record)),
        attempt=attempt,
        context=to_jsonable(redact(context or {})),
        dag_id=run.dag_id,
        task_id=run.task_id,
        run_id=run.run_id,
        try_number=run.try_number,
        source=source,
        target=target,
        failed_rules=list(failed_rules),
        record_key=_record_key(record, key_columns),
        original_location=to_jsonable(dict(original_location)) if original_location is not None else None,
    )
