"""Retries ride out a real PostgreSQL that is stopped and restarted mid-operation."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_etl_provider.core.errors import ErrorKind, classify_postgres
from airflow_etl_provider.core.retry import RetryEvent, RetryPolicy, call_with_retry


def _insert(uri: str, value: int) -> int:
    import psycopg2

    with psycopg2.connect(uri, connect_timeout=3) as conn, conn.cursor() as cur:
        cur.execute("create table if not exists t (v int primary key)")
        cur.execute("insert into t values (%s) on conflict do nothing", (value,))
        cur.execute("select count(*) from t")
        return cur.fetchone()[0]


def test_retry_rides_out_a_postgres_restart(disposable_pg) -> None:
    assert _insert(disposable_pg.uri, 0) == 1
    disposable_pg.stop("fast")
    restarter = threading.Timer(3.0, disposable_pg.start)
    restarter.start()
    events: list[RetryEvent] = []
    t0 = time.monotonic()
    try:
        count = call_with_retry(
            lambda: _insert(disposable_pg.uri, 1),
            RetryPolicy(max_attempts=10, initial_delay_s=0.5, max_delay_s=2.0, jitter="full"),
            classifier=classify_postgres,
            on_retry=events.append,
            op="insert",
        )
    finally:
        restarter.join()
    assert count == 2  # the row went in exactly once
    assert events, "the outage must have been seen and retried"
    assert all(e.kind is ErrorKind.TRANSIENT for e in events)
    assert time.monotonic() - t0 >= 2.5


def test_a_connection_killed_by_the_server_is_transient(disposable_pg) -> None:
    """57P01 admin_shutdown from a real server (pg_ctl -m fast terminates sessions) is retried."""
    import psycopg2

    conn = psycopg2.connect(disposable_pg.uri)
    disposable_pg.stop("fast")
    try:
        with pytest.raises(psycopg2.Error) as info:
            conn.cursor().execute("select 1")
        assert classify_postgres(info.value) is ErrorKind.TRANSIENT
    finally:
        disposable_pg.start()


def test_data_errors_are_never_retried(disposable_pg) -> None:
    import psycopg2

    attempts = 0

    def bad_insert() -> None:
        nonlocal attempts
        attempts += 1
        with psycopg2.connect(disposable_pg.uri) as conn, conn.cursor() as cur:
            cur.execute("create table if not exists nn (v int not null)")
            cur.execute("insert into nn values (null)")

    with pytest.raises(psycopg2.errors.NotNullViolation):
        call_with_retry(bad_insert, RetryPolicy(max_attempts=5, initial_delay_s=0.01), classifier=classify_postgres)
    assert attempts == 1
