"""Kafka dead letters built column-wise from an Arrow record batch: the DLQ's hot path on the executors.

:func:`~airflow_etl_provider.executor.dead_letter.partition_publisher` receives the failed rows of a
partition as Arrow record batches. Building one :class:`~airflow_etl_provider.core.envelope.DeadLetterEnvelope`
per row (``to_pylist``, :func:`~airflow_etl_provider.core.envelope.build_envelope`, ``dataclasses.replace``,
then ``to_json``, ``kafka_key`` and ``kafka_headers``) was ~90% of publishing 100k rejected rows
(``benchmarks/bench_dlq_kafka.py``: 24 s, of which ~2 s producing). :class:`KafkaMessageBuilder` produces the
same three things (key, value, headers), **byte for byte**, without the envelope objects:

* each column is converted to JSON-native values once, column-wise (``Decimal`` of scale 0-6 by Arrow's
  cast to string, which writes what ``str(Decimal)`` writes; UTC and naive timestamps from their integer
  parts, not from datetime objects); the records of a batch are serialised with one ``orjson.dumps`` of the
  list, cut at ``},{`` (checked by counting: a value holding ``},{`` sends the batch row by row);
* every field that is the same for the whole partition (timestamp, pipeline, stage, run, task, try, source,
  target, the empty context...) is serialised once into a ``bytes`` template; per row only the record,
  the error message, class, rules, key and id are filled in;
* the envelope id hashes the record's JSON as it is written into the value (when that text is, byte for
  byte, what the standard library's canonical JSON would give: no floating-point or nested columns),
  instead of serialising the record a second time with ``json``;
* the Kafka headers that do not change within the partition are encoded once.

Floating-point and nested columns are serialised row by row (their canonical JSON for the id comes from the
standard library). Partitions it does not handle (a location or context column, ids without the run: the
streaming late rows) and batches whose error or error-class column is not a string keep the row-by-row
envelope path. ``tests/unit/test_arrow_envelopes.py`` checks the equality on tricky values.

Executor-side code: no Airflow (see :mod:`airflow_etl_provider.executor`).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from airflow_etl_provider.core.envelope import (
    HEADER_PREFIX,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_HEADER_MESSAGE_CHARS,
    DeadLetterEnvelope,
    RunContext,
    _canonical,
    _constant_headers,
    build_envelope,
    to_jsonable,
)
from airflow_etl_provider.core.errors import DataError

try:  # a dependency of the package and of requirements-executor.txt; without it the generic path runs
    import orjson as _orjson
except ImportError:  # pragma: no cover - an executor without it
    _orjson = None  # type: ignore[assignment]

__all__ = ["KafkaMessageBuilder", "KafkaMessages", "envelopes_of"]

#: (name, value) pairs as ``confluent_kafka.Producer.produce(headers=...)`` takes them
Headers = list[tuple[str, bytes]]

_CLASS_HEADER = HEADER_PREFIX + "class.name"
_MESSAGE_HEADER = HEADER_PREFIX + "exception.message"
_RULES_HEADER = HEADER_PREFIX + "rules"
_ID_HEADER = HEADER_PREFIX + "envelope.id"
#: the fields filled in per row, in the (sorted) order of the envelope's JSON
_ROW_FIELDS = ("envelope_id", "error_class", "error_message", "failed_rules", "record", "record_key")
#: the error class of rows without one
DEFAULT_ERROR_CLASS = f"{DataError.__module__}.{DataError.__qualname__}"
#: Decimal scales for which Arrow's cast to string writes exactly ``str(Decimal)`` (plain notation: Python
#: switches to exponents below an adjusted exponent of -6)
_PLAIN_DECIMAL_SCALES = range(0, 7)
#: Arrow time zones whose datetimes ``isoformat()`` with ``+00:00``
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "+00:00"})


@dataclass(frozen=True)
class KafkaMessages:
    """The Kafka messages of a batch of failed rows: parallel lists, one entry per row.

    :param keys: the message keys (:func:`~airflow_etl_provider.core.envelope.kafka_key`).
    :param values: the envelopes' JSON (``to_json().encode()``).
    :param headers: the headers (:func:`~airflow_etl_provider.core.envelope.kafka_headers`).
    """

    keys: list[bytes]
    values: list[bytes]
    headers: list[Headers]

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, start: int, stop: int) -> KafkaMessages:
        """The messages ``start:stop``."""
        return KafkaMessages(self.keys[start:stop], self.values[start:stop], self.headers[start:stop])


def _iso_timestamps(column: Any) -> Any | None:
    """``datetime.isoformat()`` of each value of a UTC or naive timestamp column, as a string array computed by
    Arrow (``to_pylist`` makes a time-zone aware datetime in ~10 us, Arrow's ``strftime`` takes ~3 us):
    ``YYYY-MM-DD`` per distinct day, ``THH:MM:SS`` from a table of two-digit numbers, ``.ffffff`` unless the
    microseconds are 0, ``+00:00`` when the column has a time zone. ``None`` for instants before 1970 (integer
    division truncates towards zero)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tz = column.type.tz
    micros = column.cast(pa.timestamp("us", tz=tz)).cast(pa.int64())
    if column.null_count == len(column):
        return pa.nulls(len(column), pa.string())
    if pc.min(micros).as_py() < 0:
        return None
    days = pc.divide(micros, _US_PER_DAY)
    of_day = pc.subtract(micros, pc.multiply(days, _US_PER_DAY))
    distinct = pc.unique(days)
    day_text = pa.array([None if d is None else (_EPOCH + timedelta(days=d)).isoformat() for d in distinct.to_pylist()],
                        pa.string())
    seconds = pc.divide(of_day, 1_000_000)
    fraction = pc.subtract(of_day, pc.multiply(seconds, 1_000_000))
    minutes = pc.divide(seconds, 60)
    two_digits = _two_digits()
    parts = [
        pc.take(day_text, pc.index_in(days, distinct)), "T",
        pc.take(two_digits, pc.divide(minutes, 60)), ":",
        pc.take(two_digits, pc.subtract(minutes, pc.multiply(pc.divide(minutes, 60), 60))), ":",
        pc.take(two_digits, pc.subtract(seconds, pc.multiply(minutes, 60))),
        pc.if_else(pc.equal(fraction, 0), "",
                   pc.binary_join_element_wise(".", pc.utf8_lpad(fraction.cast(pa.string()), 6, "0"), "")),
    ]
    if tz is not None:
        parts.append("+00:00")
    return pc.binary_join_element_wise(*parts, "")


_US_PER_DAY = 86_400_000_000
_EPOCH = date(1970, 1, 1)


def _two_digits() -> Any:
    """``"00"`` to ``"99"`` as an Arrow string array (for ``take``)."""
    global _TWO_DIGITS
    if _TWO_DIGITS is None:
        import pyarrow as pa

        _TWO_DIGITS = pa.array([f"{i:02d}" for i in range(100)], pa.string())
    return _TWO_DIGITS


_TWO_DIGITS: Any = None


def _arrow_values(column: Any) -> Any | None:
    """The column as an Arrow array of JSON-native values (integers, strings, booleans, nulls) that orjson writes
    exactly as the standard library's canonical JSON does, or ``None`` for the other types."""
    import pyarrow as pa
    import pyarrow.types as pt

    kind = column.type
    if pt.is_integer(kind) or pt.is_string(kind) or pt.is_large_string(kind) or pt.is_boolean(kind) \
            or pt.is_null(kind):
        return column
    if pt.is_decimal(kind) and kind.scale in _PLAIN_DECIMAL_SCALES:
        return column.cast(pa.string())
    if pt.is_timestamp(kind) and kind.unit != "ns" and (kind.tz is None or kind.tz in _UTC_NAMES):
        text = _iso_timestamps(column)
        if text is not None:
            return text
    if pt.is_date(kind):
        return pa.array([None if v is None else v.isoformat() for v in column.to_pylist()], pa.string())
    if pt.is_decimal(kind):  # other scales: str(Decimal) may write an exponent
        return pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())
    if pt.is_timestamp(kind):  # other time zones, nanoseconds: to_pylist gives datetime objects
        return pa.array([None if v is None else v.isoformat() for v in column.to_pylist()], pa.string())
    if pt.is_binary(kind) or pt.is_large_binary(kind) or pt.is_fixed_size_binary(kind):
        return pa.array([None if v is None else base64.b64encode(v).decode("ascii") for v in column.to_pylist()],
                        pa.string())
    return None


def _column_values(column: Any) -> tuple[list[Any], bool]:
    """The JSON-native values of an Arrow column (what :func:`to_jsonable` gives for each ``to_pylist`` value)
    and whether orjson writes them exactly as the standard library's canonical JSON does (no floats, no
    nested values)."""
    import pyarrow.types as pt

    arrow = _arrow_values(column)
    if arrow is not None:
        return arrow.to_pylist(), True
    kind = column.type
    if pt.is_floating(kind):
        return [v if v is None or math.isfinite(v) else to_jsonable(v) for v in column.to_pylist()], False
    return [to_jsonable(v) for v in column.to_pylist()], False


def _split_json_array(text: bytes, separator: bytes, n: int, strip: int) -> list[bytes] | None:
    """The items of the JSON array ``text`` (one ``orjson.dumps`` of a list: one call instead of one per item,
    which costs ~5 us each), cut at ``separator`` (``b"},{"`` between objects, ``b'","'`` between strings),
    each without ``strip`` bytes of delimiter on either side; ``None`` when the separator also occurs inside
    an item (then there are more than ``n - 1`` of them)."""
    if n == 0:
        return []
    inner = text[1 + strip:-1 - strip]
    if inner.count(separator) != n - 1:
        return None
    return inner.split(separator)


def _key_strings(values: Any) -> list[str | None]:
    """``str(v)`` of each JSON-native value of an Arrow array (the parts of ``record_key``)."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_boolean(values.type):  # str(True) is "True", Arrow's cast gives "true"
        return [None if v is None else str(v) for v in values.to_pylist()]
    return values.cast(pa.string()).to_pylist()


def _json_strings(values: list[str | None]) -> list[bytes]:
    """``orjson.dumps(v)`` of each value (strings or ``None``), from one ``orjson.dumps`` of the list."""
    filled = ["" if v is None else v for v in values]
    parts = _split_json_array(_orjson.dumps(filled), b'","', len(filled), 1)
    if parts is None:  # pragma: no cover - a JSON string never holds '","' unescaped
        return [_orjson.dumps(v) for v in values]
    return [b"null" if v is None else b'"' + part + b'"' for v, part in zip(values, parts, strict=True)]


class KafkaMessageBuilder:
    """Builds the Kafka messages of failed rows from Arrow record batches, byte for byte what
    :func:`~airflow_etl_provider.core.envelope.build_envelope` (then ``error_class`` from the error-class
    column), ``to_json``, ``kafka_key`` and ``kafka_headers`` give for each row, as
    :func:`~airflow_etl_provider.executor.dead_letter.partition_publisher` builds them.

    :param stage: the envelopes' stage.
    :param pipeline_id: the pipeline (default ``run_context.pipeline_id``).
    :param run_context: the Airflow DAG, task, run and try.
    :param key_columns: business-key columns (``record_key`` and the Kafka key).
    :param source: where the rows came from.
    :param target: where they were going.
    :param default_error: the message of rows without an error.
    :param now: the envelopes' timestamp.
    :param error_column: the column holding each row's error message (removed from the record).
    :param error_class_column: the column holding each row's error class (removed from the record).
    :param rules_column: the column holding each row's failed rules (removed from the record).
    """

    def __init__(self, *, stage: str, pipeline_id: str | None, run_context: RunContext | None,
                 key_columns: Sequence[str], source: str | None, target: str | None, default_error: str,
                 now: datetime, error_column: str, error_class_column: str, rules_column: str) -> None:
        # One envelope of the partition, built the generic way, gives every constant field.
        template = build_envelope({}, default_error, stage=stage, pipeline_id=pipeline_id, run_context=run_context,
                                  source=source, target=target, now=now)
        self._template = template
        self.key_columns = tuple(key_columns)
        self.default_error = default_error
        self.meta_columns = (error_column, error_class_column, rules_column)
        self.available = _orjson is not None
        doc = template.to_dict()
        parts: list[bytes] = []
        for name in sorted(doc):
            head = b'"' + name.encode() + b'":'
            if name == "envelope_id":
                parts.append(head + b'"%s"')
            elif name in _ROW_FIELDS:
                parts.append(head + b"%s")
            else:
                parts.append(head + (_orjson.dumps(doc[name]) if _orjson is not None else b"").replace(b"%", b"%%"))
        self._value_format = b"{" + b",".join(parts) + b"}"
        # sha256 input of the envelope id: the canonical JSON of [version, pipeline, run, stage, location, record]
        identity = _canonical([template.envelope_version, template.pipeline_id, template.run_id, template.stage,
                               None])
        self._identity_prefix = identity[:-1].encode() + b","
        self._pipeline_key = template.pipeline_id.encode()
        self._constant_headers = tuple(_constant_headers(template)[1])
        self._classes: dict[str, tuple[bytes, tuple[tuple[str, bytes], ...]]] = {}

    def value_parts(self) -> list[bytes]:
        """The envelope JSON cut around its per-row fields, in :data:`_ROW_FIELDS` order (7 parts, the id's
        quotes included in the parts): what the JVM publisher fills in
        (``jvm/src/airflow_etl_provider/jvm/KafkaDeadLetterPublisher.java``)."""
        slots = [b"\x00%d\x00" % k for k in range(len(_ROW_FIELDS))]  # NUL never occurs in JSON text
        text = self._value_format % tuple(slots)
        parts = []
        for slot in slots:
            head, text = text.split(slot)
            parts.append(head)
        return [*parts, text]

    @property
    def identity_prefix(self) -> bytes:
        """The envelope id's SHA-256 input before the record's JSON (the id hashes this + record + ``]``)."""
        return self._identity_prefix

    @property
    def pipeline_key(self) -> bytes:
        """The Kafka key of rows without a record key."""
        return self._pipeline_key

    @property
    def constant_headers(self) -> tuple[tuple[str, bytes], ...]:
        """The headers between the exception message and the envelope id, the same for every row."""
        return self._constant_headers

    def _error_class(self, name: str) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        known = self._classes.get(name)
        if known is None:
            known = self._classes[name] = (_orjson.dumps(name), ((_CLASS_HEADER, name.encode()),))
        return known

    def handles(self, schema: Any) -> bool:
        """Whether :meth:`messages` takes batches of ``schema`` (a ``pyarrow.Schema``); the others need the
        generic path: an error or error-class column that is not a string, duplicate column names, no orjson.

        :param schema: the failed rows' schema.
        """
        import pyarrow.types as pt

        names = schema.names
        if not self.available or len(set(names)) != len(names):
            return False
        for meta in self.meta_columns[:2]:
            if meta in names:
                kind = schema.field(meta).type
                if not (pt.is_string(kind) or pt.is_large_string(kind) or pt.is_null(kind)):
                    return False
        return True

    def messages(self, batch: Any) -> KafkaMessages:
        """The messages of ``batch`` (a ``pyarrow.RecordBatch`` whose schema :meth:`handles`).

        :param batch: the failed rows, with the optional error, error-class and rules columns.
        :raises ValueError: if the batch's schema needs the generic path.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.handles(batch.schema):
            raise ValueError(f"dead letters of schema {batch.schema} need the generic path")
        n = batch.num_rows
        error_col, class_col, rules_col = self.meta_columns
        columns: dict[str, Any] = dict(zip(batch.schema.names, batch.columns, strict=True))
        errors = columns.pop(error_col, None)
        classes = columns.pop(class_col, None)
        rules = columns.pop(rules_col, None)
        record_names = sorted(columns)  # inserted in order: orjson then writes the keys sorted, as to_json does

        # -- the record's JSON: column-wise when every column has a JSON-native Arrow form (then it is also the
        # canonical JSON the envelope id hashes), else row by row
        arrays = [_arrow_values(columns[name]) for name in record_names]
        record_jsons: list[bytes] | None = None
        key_values: dict[str, list[str | None]] = {}
        python_records: list[dict[str, Any]] | None = None
        canonical = True
        if all(a is not None for a in arrays):
            if record_names:
                structs = pa.StructArray.from_arrays(arrays, names=record_names).to_pylist()
                record_jsons = _split_json_array(_orjson.dumps(structs), b"},{", n, 1)
                if record_jsons is not None:
                    record_jsons = [b"{" + r + b"}" for r in record_jsons]
            else:
                record_jsons = [b"{}"] * n
            key_values = {c: _key_strings(arrays[record_names.index(c)]) for c in self.key_columns
                          if c in columns}
        if record_jsons is None:
            converted: dict[str, list[Any]] = {}
            for name in record_names:
                converted[name], same_text = _column_values(columns[name])
                canonical = canonical and same_text
            python_records = [dict(zip(record_names, row, strict=True))
                              for row in zip(*(converted[name] for name in record_names), strict=True)] \
                if record_names else [{} for _ in range(n)]
            option = 0 if canonical else _orjson.OPT_SORT_KEYS  # nested dicts keep their own key order
            record_jsons = [_orjson.dumps(r, option=option) for r in python_records]
            key_values = {c: [None if v is None else str(v) for v in converted[c]] for c in self.key_columns
                          if c in converted}

        # -- record keys: the key columns joined with "|", None when one is null or missing
        if not self.key_columns or any(c not in key_values for c in self.key_columns):
            record_keys: list[str | None] = [None] * n
        elif len(self.key_columns) == 1:
            record_keys = key_values[self.key_columns[0]]
        else:
            record_keys = [None if any(v is None for v in vals) else "|".join(vals)
                           for vals in zip(*(key_values[c] for c in self.key_columns), strict=True)]
        pipeline_key = self._pipeline_key
        kafka_keys = [pipeline_key if k is None else k.encode() for k in record_keys]
        record_key_jsons = _json_strings(record_keys)

        # -- error message, class and rules
        if errors is not None:
            errors = errors.cast(pa.string())  # `row[error] or default_error`: null and "" take the default
            filled = pc.if_else(pc.fill_null(pc.equal(errors, ""), True), self.default_error, errors)
            longest = pc.max(pc.utf8_length(filled)).as_py() or 0  # code points, as str slicing counts
            text = pc.utf8_slice_codeunits(filled, 0, MAX_ERROR_MESSAGE_CHARS) \
                if longest > MAX_ERROR_MESSAGE_CHARS else filled
            message_jsons = _json_strings(text.to_pylist())
            header_text = pc.utf8_slice_codeunits(text, 0, MAX_HEADER_MESSAGE_CHARS) \
                if longest > MAX_HEADER_MESSAGE_CHARS else text
            message_headers = header_text.cast(pa.binary()).to_pylist()
        else:
            message = self.default_error[:MAX_ERROR_MESSAGE_CHARS]
            message_jsons = [_orjson.dumps(message)] * n
            message_headers = [message[:MAX_HEADER_MESSAGE_CHARS].encode()] * n
        default_class = self._error_class(DEFAULT_ERROR_CLASS)
        if classes is not None:
            class_names = classes.cast(pa.string()).to_pylist()
            known = {c: self._error_class(c) if c else default_class for c in set(class_names)}
            class_parts = [known[c] for c in class_names]
        else:
            class_parts = [default_class] * n
        rule_lists: list[Any] = [r or () for r in rules.to_pylist()] if rules is not None else [()] * n
        rule_jsons = [_orjson.dumps(list(r)) if r else b"[]" for r in rule_lists] if rules is not None else [b"[]"] * n

        # -- envelope ids, values and headers
        if canonical:
            prefix = self._identity_prefix
            identities = [prefix + r + b"]" for r in record_jsons]
        else:
            template = self._template
            assert python_records is not None
            identities = [_canonical([template.envelope_version, template.pipeline_id, template.run_id,
                                      template.stage, None, r]).encode() for r in python_records]
        envelope_ids = [h.hexdigest().encode() for h in map(hashlib.sha256, identities)]
        value_format, constant_headers = self._value_format, self._constant_headers
        values = [value_format % row for row in zip(envelope_ids, (c[0] for c in class_parts), message_jsons,
                                                         rule_jsons, record_jsons, record_key_jsons, strict=True)]
        headers: list[Headers] = [
            [*class_header, (_MESSAGE_HEADER, message_header), *constant_headers, (_ID_HEADER, envelope_id)]
            for (_json, class_header), message_header, envelope_id
            in zip(class_parts, message_headers, envelope_ids, strict=True)
        ]
        if rules is not None:
            for row_headers, rule_list in zip(headers, rule_lists, strict=True):
                if rule_list:
                    row_headers.insert(-1, (_RULES_HEADER, ",".join(rule_list).encode()))
        return KafkaMessages(kafka_keys, values, headers)


def envelopes_of(values: Sequence[bytes]) -> list[DeadLetterEnvelope]:
    """The envelopes of message values (for the retry and spool path of messages that failed)."""
    return [DeadLetterEnvelope.from_json(value) for value in values]

