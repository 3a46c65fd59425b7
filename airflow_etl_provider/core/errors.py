"""Error kinds, the provider's exceptions, and classifiers that sort any exception into a kind.

A classifier is a ``Callable[[BaseException], ErrorKind | None]``: it returns ``None`` when it does not
recognise the exception, so classifiers chain (:func:`chain_classifiers`). They are duck-typed: this
module imports neither psycopg, confluent_kafka nor botocore, and only the standard library, so it
can run on a Spark executor too.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "CircuitOpenError",
    "Classifier",
    "ConfigError",
    "DataError",
    "DeadLetterUnavailableError",
    "ErrorKind",
    "EtlError",
    "RowAccountingError",
    "TransientError",
    "chain_classifiers",
    "classifier_from_predicate",
    "classify_any",
    "classify_explicit",
    "classify_kafka",
    "classify_network",
    "classify_postgres",
    "classify_s3",
]


class ErrorKind(StrEnum):
    """What a failure means for retries and for the circuit breaker.

    * ``TRANSIENT``: the system is briefly unavailable (connection refused, timeout, throttling,
      deadlock): retry it, and count it as a circuit-breaker failure.
    * ``SYSTEM``: a permanent system problem (authentication, configuration, missing table): do not
      retry, but count it as a circuit-breaker failure.
    * ``DATA``: one bad row or value: never retried, never counted by the circuit breaker.
    """

    TRANSIENT = "transient"
    SYSTEM = "system"
    DATA = "data"

    @property
    def retryable(self) -> bool:
        """Whether a retry can help."""
        return self is ErrorKind.TRANSIENT

    @property
    def counts_for_breaker(self) -> bool:
        """Whether the circuit breaker counts it as a failure of the protected system."""
        return self is not ErrorKind.DATA


Classifier = Callable[[BaseException], ErrorKind | None]


class EtlError(Exception):
    """Base class of every exception raised by this provider."""


class TransientError(EtlError):
    """Raise it (or a subclass) to mark a failure as transient: it is retried."""


class DataError(EtlError):
    """Raise it (or a subclass) to mark a failure as caused by the data: never retried."""


class RowAccountingError(EtlError):
    """Rows read do not add up to rows written + rows dead-lettered + rows filtered."""


_NO_VALUE: Any = object()


class DataQualityError(DataError):
    """Data-quality rules with action ``fail`` failed. The message is a readable table of those rules.

    :param message: the table.
    :param report: the JSON report (also pushed to XCom as ``dq_report``).
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class ConfigError(EtlError, ValueError):
    """Invalid configuration. The message names the field, the bad value and the allowed values or fix.

    :param path: dotted path of the field, e.g. ``errorHandling.retry.maxAttempts``.
    :param problem: what is wrong, e.g. ``must be >= 1``.
    :param value: the value given; left out of the message when not passed.
    :param allowed: the accepted values, listed in the message.
    """

    def __init__(
        self, path: str, problem: str, *, value: Any = _NO_VALUE, allowed: Iterable[str] | None = None
    ) -> None:
        message = f"{path}: {problem}" if path else problem
        if value is not _NO_VALUE:
            message += f" (got {value!r})"
        if allowed is not None:
            message += f"; allowed: {', '.join(allowed)}"
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (self.path, str(self)))


def _rebuild_config_error(path: str, message: str) -> ConfigError:
    error = ConfigError("", message)
    error.path = path
    return error


class CircuitOpenError(EtlError):
    """A circuit breaker refused the call because the protected system is considered down.

    :param breaker_name: name of the circuit breaker.
    :param retry_at: when the breaker turns half-open and admits a trial call (UTC, timezone-aware).
    :param variable_key: the Airflow Variable that holds the breaker's state; deleting it resets it.
    :param last_error: the error that opened it, if known.
    """

    def __init__(
        self, breaker_name: str, retry_at: datetime, variable_key: str, last_error: str | None = None
    ) -> None:
        self.breaker_name = breaker_name
        self.retry_at = retry_at
        self.variable_key = variable_key
        self.last_error = last_error
        cause = f" Last error: {last_error}." if last_error else ""
        super().__init__(
            f"Circuit breaker {breaker_name!r} is open: calls are refused until "
            f"{retry_at.isoformat()}, when it turns half-open and admits a trial call.{cause} "
            f"To close it now, delete the Airflow Variable {variable_key!r} "
            f"(airflow variables delete {variable_key})."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.breaker_name, self.retry_at, self.variable_key, self.last_error))


class DeadLetterUnavailableError(EtlError):
    """The dead-letter sink failed; the rows were spooled to a local file to replay later.

    :param spool_path: the file that holds the spooled dead letters.
    :param rows: how many rows it holds.
    :param replay_command: the command that publishes them once the sink is back.
    :param reason: why the sink failed.
    """

    def __init__(self, spool_path: str, rows: int, replay_command: str, reason: str = "") -> None:
        self.spool_path = spool_path
        self.rows = rows
        self.replay_command = replay_command
        self.reason = reason
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"Dead-letter sink unavailable{because}: {rows} row(s) spooled to {spool_path}. "
            f"Replay them with: {replay_command}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.spool_path, self.rows, self.replay_command, self.reason))


# ------------------------------------------------------------------------------------------ helpers


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` then its causes, as Python displays them (``__cause__``, else unsuppressed ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def _text(exc: BaseException) -> str:
    """``str(exc)``, never raising (a Py4J error's ``str`` calls into a JVM that may be gone)."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def _first(exc: BaseException, classify: Callable[[BaseException], ErrorKind | None]) -> ErrorKind | None:
    """Classify ``exc`` and its causes with ``classify``; the outermost answer wins."""
    for link in _chain(exc):
        kind = _explicit(link) or classify(link)
        if kind is not None:
            return kind
    return None


def _explicit(exc: BaseException) -> ErrorKind | None:
    if isinstance(exc, TransientError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, DataError):
        return ErrorKind.DATA
    if isinstance(exc, EtlError):
        return ErrorKind.SYSTEM
    return None


def classify_explicit(exc: BaseException) -> ErrorKind | None:
    """Classify the provider's own exceptions: :class:`TransientError`, :class:`DataError`, other ``EtlError``.

    :param exc: the exception; its causes are looked at too.
    """
    return _first(exc, lambda _: None)


# ---------------------------------------------------------------------------------------- PostgreSQL

_SQLSTATE_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])(?i:sqlstate)[\s:=\[(]*([0-9A-Z]{5})(?![0-9A-Za-z])")
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "55P03", "57014"})
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53"})
_DATA_SQLSTATE_CLASSES = frozenset({"22", "23"})
_SYSTEM_SQLSTATE_CLASSES = frozenset({"42", "28"})

# Server messages that reach Python without a SQLSTATE, e.g. a Java PSQLException inside a Py4J error.
_POSTGRES_MESSAGES: tuple[tuple[re.Pattern[str], ErrorKind], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        (r"connection refused|connection to \S+ refused|could not connect to server", ErrorKind.TRANSIENT),
        (r"server closed the connection|terminating connection", ErrorKind.TRANSIENT),
        (r"the connection attempt failed|an i/o error occurred while sending", ErrorKind.TRANSIENT),
        (r"this connection has been closed|connection timed out", ErrorKind.TRANSIENT),
        (r"deadlock detected|could not serialize access|canceling statement due to", ErrorKind.TRANSIENT),
        (r"too many clients already|the database system is (starting up|shutting down|in recovery mode"
         r"|not yet accepting connections)", ErrorKind.TRANSIENT),  # 57P03 at connect: no SQLSTATE in psycopg
        (r"violates (not-null|foreign key|unique|check|exclusion) constraint", ErrorKind.DATA),
        (r"duplicate key value|value too long for type|invalid input syntax for", ErrorKind.DATA),
        (r"numeric field overflow|out of range for type", ErrorKind.DATA),
        (r"password authentication failed|permission denied for", ErrorKind.SYSTEM),
        (r"relation \S+ does not exist|column \S+ does not exist", ErrorKind.SYSTEM),
        (r"database \S+ does not exist", ErrorKind.SYSTEM),
    )
)


def _sqlstate_kind(code: str) -> ErrorKind | None:
    code = code.upper()
    if code in _TRANSIENT_SQLSTATES or code[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return ErrorKind.TRANSIENT
    if code[:2] in _DATA_SQLSTATE_CLASSES:
        return ErrorKind.DATA
    if code[:2] in _SYSTEM_SQLSTATE_CLASSES or code == "3D000":
        return ErrorKind.SYSTEM
    return None


def _postgres_one(exc: BaseException) -> ErrorKind | None:
    for attribute in ("sqlstate", "pgcode"):
        code = getattr(exc, attribute, None)
        if isinstance(code, str) and len(code) == 5:
            return _sqlstate_kind(code)
    text = _text(exc)
    match = _SQLSTATE_IN_TEXT.search(text)
    if match:
        return _sqlstate_kind(match.group(1))
    for pattern, kind in _POSTGRES_MESSAGES:
        if pattern.search(text):
            return kind
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ErrorKind.TRANSIENT
    return None


def classify_postgres(exc: BaseException) -> ErrorKind | None:
    """Classify a PostgreSQL error by its SQLSTATE, from psycopg 3, psycopg2 or a JDBC message.

    The SQLSTATE comes from ``exc.sqlstate`` (psycopg 3), ``exc.pgcode`` (psycopg2) or the text
    (``SQLState: 23505``, ``SQLSTATE[08006]``, ``(SQLSTATE 42P01)``), on the exception or its causes.
    Connection exceptions (class 08), shutdowns (57P01-57P03), insufficient resources (class 53),
    serialization failures, deadlocks, lock and statement timeouts are transient; integrity (23) and
    data (22) exceptions are data errors; syntax, undefined objects, privileges (42), authentication
    (28) and an unknown database (3D000) are system errors. Without a SQLSTATE, the messages of the
    PostgreSQL server and JDBC driver (English) are recognised, and a ``ConnectionError`` or
    ``TimeoutError`` is transient.

    :param exc: the exception.
    :return: its kind, or ``None`` if it is not recognised.
    """
    return _first(exc, _postgres_one)


# ---------------------------------------------------------------------------------------------- Kafka

_KAFKA_TRANSIENT = re.compile(
    r"_TIMED_OUT|_TRANSPORT|_ALL_BROKERS_DOWN|_QUEUE_FULL|NOT_LEADER|LEADER_NOT_AVAILABLE|NOT_ENOUGH_REPLICAS"
    r"|Local: (Message timed out|Broker transport failure|All broker connections are down|Queue full)"
)
_KAFKA_DATA = re.compile(r"MSG_SIZE_TOO_LARGE|INVALID_RECORD|message size too large", re.IGNORECASE)


def _kafka_one(exc: BaseException) -> ErrorKind | None:
    for error in (exc, exc.args[0] if exc.args else None):
        retriable = getattr(error, "retriable", None)
        if not callable(retriable):
            continue
        if retriable():
            return ErrorKind.TRANSIENT
        fatal = getattr(error, "fatal", None)
        if callable(fatal) and fatal():
            return ErrorKind.SYSTEM
        name = getattr(error, "name", None)
        text = f"{name() if callable(name) else ''} {_text(exc)}"
        return _kafka_text(text) or ErrorKind.SYSTEM
    return _kafka_text(_text(exc))


def _kafka_text(text: str) -> ErrorKind | None:
    if _KAFKA_TRANSIENT.search(text):
        return ErrorKind.TRANSIENT
    if _KAFKA_DATA.search(text):
        return ErrorKind.DATA
    return None


def classify_kafka(exc: BaseException) -> ErrorKind | None:
    """Classify a confluent-kafka error (``KafkaException`` wrapping a ``KafkaError``) or its message.

    A ``KafkaError`` that says ``retriable()`` is transient, one that says ``fatal()`` is a system
    error. Timeouts, transport failures, all-brokers-down, a full local queue and leader changes are
    transient; a message too large or an invalid record is a data error; any other ``KafkaError`` is
    a system error.

    :param exc: the exception.
    :return: its kind, or ``None`` if it is not recognised.
    """
    return _first(exc, _kafka_one)


# ------------------------------------------------------------------------------------------------- S3

_S3_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
_S3_SYSTEM_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"})
_S3_TRANSIENT_TYPES = frozenset(
    {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}
)


def _s3_one(exc: BaseException) -> ErrorKind | None:
    if any(cls.__name__ in _S3_TRANSIENT_TYPES for cls in type(exc).__mro__):
        return ErrorKind.TRANSIENT
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    error = response.get("Error")
    code = error.get("Code") if isinstance(error, Mapping) else None
    metadata = response.get("ResponseMetadata")
    status = metadata.get("HTTPStatusCode") if isinstance(metadata, Mapping) else None
    if code in _S3_TRANSIENT_CODES or (isinstance(status, int) and (status == 429 or status >= 500)):
        return ErrorKind.TRANSIENT
    if code in _S3_SYSTEM_CODES or (isinstance(status, int) and 400 <= status < 500):
        return ErrorKind.SYSTEM
    return None


def classify_s3(exc: BaseException) -> ErrorKind | None:
    """Classify a botocore error: a ``ClientError`` by its error code and HTTP status, or a connection error.

    Throttling, request timeouts, internal errors, HTTP 429 and 5xx are transient; access denied,
    bad credentials, a missing bucket and other 4xx are system errors; botocore's endpoint, connect,
    read-timeout and connection-closed errors are transient.

    :param exc: the exception.
    :return: its kind, or ``None`` if it is not recognised.
    """
    return _first(exc, _s3_one)


# ------------------------------------------------------------------------------------------ combining

_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EPIPE,
    }
)


def _network_one(exc: BaseException) -> ErrorKind | None:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ErrorKind.TRANSIENT
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return ErrorKind.TRANSIENT
    return None


def chain_classifiers(
    *classifiers: Classifier, default: ErrorKind = ErrorKind.SYSTEM
) -> Callable[[BaseException], ErrorKind]:
    """Combine classifiers: the provider's own exceptions first, then the first classifier that answers.

    :param classifiers: tried in order; each returns ``None`` for "I don't know".
    :param default: the kind when none of them answers.
    :return: a classifier that always answers.
    """

    def classify(exc: BaseException) -> ErrorKind:
        for classifier in (classify_explicit, *classifiers):
            kind = classifier(exc)
            if kind is not None:
                return kind
        return default

    return classify


def classifier_from_predicate(predicate: Callable[[BaseException], bool]) -> Classifier:
    """Turn a yes/no "is this retryable?" predicate into a classifier (``TRANSIENT`` or ``None``).

    Put it first in :func:`chain_classifiers` to make more errors retryable than the built-in rules do.

    :param predicate: returns ``True`` for exceptions that should be retried.
    """

    def classify(exc: BaseException) -> ErrorKind | None:
        return ErrorKind.TRANSIENT if predicate(exc) else None

    return classify


def classify_network(exc: BaseException) -> ErrorKind | None:
    """Classify network failures as transient: ``ConnectionError``, ``TimeoutError``, and an ``OSError``
    whose errno is connection refused / reset / aborted, timed out, host or network unreachable or down.

    :param exc: the exception; its causes are looked at too.
    :return: ``TRANSIENT``, or ``None`` if it is not recognised.
    """
    return _first(exc, _network_one)


_CLASSIFY_ANY = chain_classifiers(classify_postgres, classify_kafka, classify_s3, classify_network)


def classify_any(exc: BaseException) -> ErrorKind:
    """The default classifier: the provider's own exceptions, then the PostgreSQL, Kafka, S3 and network
    rules; anything else is a system error, so it is not retried.

    :param exc: the exception.
    """
    return _CLASSIFY_ANY(exc)
