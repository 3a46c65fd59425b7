"""Statements counted and run under savepoints; a driver error's class and message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_etl_provider.core.errors import ErrorKind, classify_postgres


class _Counter:
    """A cursor wrapper that counts statements."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.statements = 0

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        self.statements += 1
        return self.cursor.execute(sql, params) if params is not None else self.cursor.execute(sql)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        self.statements += 1
        return self.cursor.executemany(sql, params)

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)

    def fetchone(self) -> Any:
        return self.cursor.fetchone()

    def fetchall(self) -> Any:
        return self.cursor.fetchall()


def _in_savepoint(cur: _Counter, name: str, sql: str, params: Sequence[Any] | None = None) -> tuple[int, Any]:
    """Run one statement under a savepoint: ``(rows affected, None)``, or ``(0, error)`` after rolling back a
    *data* error (the transaction goes on without the statement). Any other error is raised."""
    cur.execute(f"SAVEPOINT {name}")
    try:
        cur.execute(sql, params)
        affected = cur.rowcount
    except Exception as err:
        if classify_postgres(err) is not ErrorKind.DATA:
            raise
        cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
        cur.execute(f"RELEASE SAVEPOINT {name}")
        return 0, err
    cur.execute(f"RELEASE SAVEPOINT {name}")
    return affected, None


def error_class(exc: BaseException) -> str:
    """``module.QualName`` of a driver error, e.g. ``psycopg.errors.NotNullViolation``."""
    return error_class_name(type(exc))


def error_class_name(cls: type) -> str:
    """``module.QualName`` of a driver error class (what :func:`error_class` reports for its instances)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def error_message(exc: BaseException) -> str:
    """PostgreSQL's own message as the driver reports it (primary message, DETAIL ...)."""
    return str(exc).strip()
