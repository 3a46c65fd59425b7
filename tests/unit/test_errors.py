"""Error kinds, exceptions and the duck-typed classifiers (fakes stand in for psycopg, confluent-kafka, botocore)."""

from __future__ import annotations

import errno
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_etl_provider.core.errors import (
    CircuitOpenError,
    ConfigError,
    DataError,
    DeadLetterUnavailableError,
    ErrorKind,
    EtlError,
    RowAccountingError,
    TransientError,
    chain_classifiers,
    classifier_from_predicate,
    classify_any,
    classify_explicit,
    classify_kafka,
    classify_network,
    classify_postgres,
    classify_s3,
)

T, S, D = ErrorKind.TRANSIENT, ErrorKind.SYSTEM, ErrorKind.DATA


# ------------------------------------------------------------------------------------------ fakes
class Psycopg3Error(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Psycopg2Error(Exception):
    def __init__(self, message: str, pgcode: str | None) -> None:
        super().__init__(message)
        self.pgcode = pgcode


class OperationalError(Exception):
    """Named like psycopg's, without a SQLSTATE (connection failures have none)."""


class Py4JJavaError(Exception):
    def __init__(self, java_text: str) -> None:
        super().__init__("An error occurred while calling o123.save.")
        self.java_text = java_text

    def __str__(self) -> str:
        return f"An error occurred while calling o123.save.\n: {self.java_text}"


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("the JVM is gone")


class FakeKafkaError:
    def __init__(self, name: str, *, retriable: bool = False, fatal: bool = False, text: str = "") -> None:
        self._name, self._retriable, self._fatal, self._text = name, retriable, fatal, text

    def name(self) -> str:
        return self._name

    def retriable(self) -> bool:
        return self._retriable

    def fatal(self) -> bool:
        return self._fatal

    def __str__(self) -> str:
        return f'KafkaError{{code={self._name},val=-1,str="{self._text}"}}'


class KafkaException(Exception):
    pass


class ClientError(Exception):
    def __init__(self, code: str | None, status: int | None) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response: dict[str, Any] = {
            "Error": {"Code": code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


def botocore_error(name: str) -> Exception:
    return type(name, (Exception,), {})("boom")


# ------------------------------------------------------------------------------------------ kinds
def test_error_kind_semantics() -> None:
    assert [k.retryable for k in (T, S, D)] == [True, False, False]
    assert [k.counts_for_breaker for k in (T, S, D)] == [True, True, False]
    assert ErrorKind("transient") is T and str(D) == "data"


# ----------------------------------------------------------------------------------- PostgreSQL
@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("08006", T), ("08001", T), ("08003", T), ("57P01", T), ("57P02", T), ("57P03", T),
        ("53300", T), ("53200", T), ("40001", T), ("40P01", T), ("55P03", T), ("57014", T),
        ("23505", D), ("23502", D), ("23503", D), ("23514", D), ("22001", D), ("22P02", D), ("22003", D),
        ("42P01", S), ("42601", S), ("42501", S), ("28P01", S), ("28000", S), ("3D000", S),
        ("XX000", None), ("25P02", None), ("57000", None),
    ],
)  # fmt: skip
def test_postgres_sqlstate_from_psycopg3_and_psycopg2(sqlstate: str, kind: ErrorKind | None) -> None:
    assert classify_postgres(Psycopg3Error("x", sqlstate)) is kind
    assert classify_postgres(Psycopg2Error("x", sqlstate)) is kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ERROR: duplicate key value violates unique constraint (SQLState: 23505)", D),
        ("SQLSTATE[08006] [7] could not send data to server", T),
        ('ERROR: relation "nope" does not exist (SQLSTATE 42P01)', S),
        ("Batch entry 0 failed. sqlstate=40P01", T),
    ],
)
def test_postgres_sqlstate_in_message(text: str, kind: ErrorKind) -> None:
    assert classify_postgres(RuntimeError(text)) is kind


@pytest.mark.parametrize(
    ("java_text", "kind"),
    [
        (
            "org.postgresql.util.PSQLException: Connection to 127.0.0.1:5432 refused. Check that the hostname",
            T,
        ),
        ("org.postgresql.util.PSQLException: The connection attempt failed.", T),
        ("org.postgresql.util.PSQLException: An I/O error occurred while sending to the backend.", T),
        (
            'java.sql.BatchUpdateException: Batch entry 0 ... ERROR: duplicate key value violates unique constraint "pk"',
            D,
        ),
        (
            'org.postgresql.util.PSQLException: ERROR: null value in column "v" violates not-null constraint',
            D,
        ),
        ("org.postgresql.util.PSQLException: ERROR: value too long for type character varying(5)", D),
        ('org.postgresql.util.PSQLException: ERROR: invalid input syntax for type integer: "x"', D),
        ('org.postgresql.util.PSQLException: ERROR: relation "public.nope" does not exist', S),
        ('org.postgresql.util.PSQLException: FATAL: password authentication failed for user "etl"', S),
        ("org.postgresql.util.PSQLException: ERROR: permission denied for table orders", S),
        ("org.postgresql.util.PSQLException: ERROR: deadlock detected", T),
        ("org.postgresql.util.PSQLException: ERROR: canceling statement due to statement timeout", T),
        ("org.postgresql.util.PSQLException: FATAL: sorry, too many clients already", T),
    ],
)
def test_postgres_jdbc_messages_through_py4j(java_text: str, kind: ErrorKind) -> None:
    assert classify_postgres(Py4JJavaError(java_text)) is kind


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused',
        "could not connect to server: Connection refused",
        "server closed the connection unexpectedly",
        "terminating connection due to administrator command",
    ],
)
def test_postgres_connection_failures_without_sqlstate(message: str) -> None:
    assert classify_postgres(OperationalError(message)) is T
    assert classify_postgres(Psycopg3Error(message, None)) is T


def test_postgres_authentication_failure_at_connect_is_a_system_error() -> None:
    message = 'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "etl"'
    assert classify_postgres(OperationalError(message)) is S
    assert classify_postgres(OperationalError('FATAL:  database "nope" does not exist')) is S
    assert classify_postgres(OperationalError("FATAL:  the database system is starting up")) is T
    # a restart after an immediate stop: crash recovery refuses connections for a moment (57P03)
    recovering = ('connection failed: connection to server at "127.0.0.1", port 60523 failed: FATAL:  the database '
                  "system is not yet accepting connections\nDETAIL:  Consistent recovery state has not been yet reached.")
    assert classify_postgres(OperationalError(recovering)) is T
    assert classify_postgres(OperationalError("FATAL:  the database system is in recovery mode")) is T


def test_postgres_python_network_errors_and_unknowns() -> None:
    assert classify_postgres(ConnectionRefusedError("nope")) is T
    assert classify_postgres(TimeoutError()) is T
    assert classify_postgres(ValueError("something else")) is None
    assert classify_postgres(BrokenStr()) is None  # never crashes on a broken __str__


def test_postgres_walks_the_cause_chain_outermost_first() -> None:
    try:
        try:
            raise Psycopg3Error("deadlock", "40P01")
        except Psycopg3Error as inner:
            raise RuntimeError("load failed") from inner
    except RuntimeError as outer:
        assert classify_postgres(outer) is T
    try:
        try:
            raise Psycopg3Error("deadlock", "40P01")
        except Psycopg3Error:
            raise RuntimeError("load failed") from None  # suppressed context is not looked at
    except RuntimeError as outer:
        assert classify_postgres(outer) is None
    outer_data = Psycopg3Error("dup", "23505")
    outer_data.__cause__ = ConnectionError("x")
    assert classify_postgres(outer_data) is D


# ---------------------------------------------------------------------------------------- Kafka
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FakeKafkaError("REQUEST_TIMED_OUT", retriable=True), T),
        (FakeKafkaError("_MSG_TIMED_OUT", text="Local: Message timed out"), T),
        (FakeKafkaError("_TRANSPORT", text="Local: Broker transport failure"), T),
        (FakeKafkaError("_ALL_BROKERS_DOWN"), T),
        (FakeKafkaError("MSG_SIZE_TOO_LARGE", text="Broker: Message size too large"), D),
        (FakeKafkaError("_MSG_SIZE_TOO_LARGE"), D),
        (FakeKafkaError("INVALID_RECORD"), D),
        (FakeKafkaError("TOPIC_AUTHORIZATION_FAILED"), S),
        (FakeKafkaError("_FATAL", fatal=True), S),
        (FakeKafkaError("_MSG_TIMED_OUT", fatal=True), S),  # fatal wins over the name
    ],
)
def test_kafka_error_objects(error: FakeKafkaError, kind: ErrorKind) -> None:
    assert classify_kafka(KafkaException(error)) is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (KafkaException('KafkaError{code=_MSG_TIMED_OUT,val=-192,str="Local: Message timed out"}'), T),
        (RuntimeError("Local: All broker connections are down"), T),
        (BufferError("Local: Queue full"), T),
        (RuntimeError("KafkaError{code=MSG_SIZE_TOO_LARGE,val=10}"), D),
        (ValueError("nothing to do with kafka"), None),
    ],
)
def test_kafka_messages(exc: BaseException, kind: ErrorKind | None) -> None:
    assert classify_kafka(exc) is kind


# ------------------------------------------------------------------------------------------- S3
@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("Throttling", 400, T), ("ThrottlingException", 400, T), ("SlowDown", 503, T),
        ("RequestTimeout", 400, T), ("RequestTimeoutException", 408, T), ("InternalError", 500, T),
        ("ServiceUnavailable", 503, T), ("RequestLimitExceeded", 400, T), ("TooManyRequestsException", 400, T),
        (None, 502, T), ("Whatever", 429, T),
        ("AccessDenied", 403, S), ("InvalidAccessKeyId", 403, S), ("SignatureDoesNotMatch", 403, S),
        ("NoSuchBucket", 404, S), ("NoSuchKey", 404, S), (None, None, None),
    ],
)  # fmt: skip
def test_s3_client_errors(code: str | None, status: int | None, kind: ErrorKind | None) -> None:
    assert classify_s3(ClientError(code, status)) is kind


@pytest.mark.parametrize(
    "name", ["EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"]
)
def test_s3_botocore_connection_errors(name: str) -> None:
    assert classify_s3(botocore_error(name)) is T
    subclass = type("ProxyFlavour", (type(botocore_error(name)),), {})
    assert classify_s3(subclass("x")) is T  # recognised through the class hierarchy


def test_s3_ignores_other_errors() -> None:
    assert classify_s3(ValueError("x")) is None
    odd = ValueError("x")
    odd.response = "not a mapping"  # type: ignore[attr-defined]
    assert classify_s3(odd) is None


# ----------------------------------------------------------------------------------- combining
def test_explicit_exceptions_win_everywhere() -> None:
    for classify in (classify_postgres, classify_kafka, classify_s3, classify_network, classify_any):
        assert classify(TransientError("x")) is T
        assert classify(DataError("connection refused")) is D  # the explicit class beats the message
    assert classify_explicit(ConfigError("retry.x", "bad")) is S
    assert classify_explicit(ValueError("x")) is None
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = TransientError("inner")
    assert classify_explicit(wrapped) is T


def test_chain_returns_first_answer_else_default() -> None:
    calls: list[str] = []

    def unknown(exc: BaseException) -> ErrorKind | None:
        calls.append("unknown")
        return None

    def says_data(exc: BaseException) -> ErrorKind | None:
        calls.append("data")
        return D

    assert chain_classifiers(unknown, says_data, classify_postgres)(ValueError()) is D
    assert calls == ["unknown", "data"]
    assert chain_classifiers(unknown)(ValueError()) is S
    assert chain_classifiers(unknown, default=T)(ValueError()) is T
    assert chain_classifiers(says_data)(TransientError()) is T  # explicit first


def test_predicate_classifier_adds_retryability() -> None:
    is_lock = classifier_from_predicate(lambda exc: "locked" in str(exc))
    assert is_lock(RuntimeError("table is locked")) is T
    assert is_lock(RuntimeError("other")) is None
    classify = chain_classifiers(is_lock, classify_any)
    assert classify(RuntimeError("table is locked")) is T
    assert classify(RuntimeError("other")) is S
    assert classify(DataError("locked")) is D


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (OSError(errno.ECONNREFUSED, "refused"), T),
        (OSError(errno.ECONNRESET, "reset"), T),
        (OSError(errno.EHOSTUNREACH, "unreachable"), T),
        (OSError(errno.ENOENT, "no such file"), S),
        (ConnectionResetError(), T),
        (TimeoutError(), T),
        (KeyError("x"), S),
        (ValueError("x"), S),
        (Psycopg3Error("dup", "23505"), D),
        (ClientError("SlowDown", 503), T),
        (KafkaException(FakeKafkaError("INVALID_RECORD")), D),
        (CircuitOpenError("pg", datetime(2026, 1, 1, tzinfo=UTC), "k"), S),
    ],
)
def test_classify_any(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_any(exc) is kind


def test_classify_network_alone() -> None:
    assert classify_network(ConnectionAbortedError()) is T
    assert classify_network(OSError(errno.EACCES, "denied")) is None


# ----------------------------------------------------------------------------------- exceptions
def test_config_error() -> None:
    err = ConfigError("retry.jitter", "must be one of the modes", value="loud", allowed=["full", "none"])
    assert isinstance(err, ValueError) and isinstance(err, EtlError)
    assert str(err) == "retry.jitter: must be one of the modes (got 'loud'); allowed: full, none"
    assert err.path == "retry.jitter"
    assert str(ConfigError("a.b", "is required")) == "a.b: is required"
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.path == err.path


def test_circuit_open_error() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    err = CircuitOpenError("pg", at, "etl_circuit_breaker__pg", "ConnectionError: refused")
    assert (err.breaker_name, err.retry_at, err.variable_key) == ("pg", at, "etl_circuit_breaker__pg")
    message = str(err)
    assert "2026-01-01T12:00:00+00:00" in message and "half-open" in message
    assert "airflow variables delete etl_circuit_breaker__pg" in message and "ConnectionError" in message
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.breaker_name, copy.retry_at, str(copy)) == ("pg", at, message)


def test_dead_letter_unavailable_and_row_accounting_errors() -> None:
    err = DeadLetterUnavailableError(
        "/spool/b1.jsonl", 42, "airflow-etl dlq replay-spool /spool", "broker down"
    )
    assert (err.spool_path, err.rows, err.replay_command) == (
        "/spool/b1.jsonl",
        42,
        "airflow-etl dlq replay-spool /spool",
    )
    assert "42 row(s)" in str(err) and "/spool/b1.jsonl" in str(err) and "broker down" in str(err)
    assert "airflow-etl dlq replay-spool /spool" in str(err)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert issubclass(RowAccountingError, EtlError)
