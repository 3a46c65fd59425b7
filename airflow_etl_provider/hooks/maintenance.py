"""Prune the provider's bookkeeping tables in PostgreSQL by a :class:`RetentionPolicy`.

``airflow-etl maintenance prune`` and ``dags/example_maintenance.py`` call :func:`prune`. It finds every load
log (a table ``etl_load_log`` in any schema: each target schema has its own) and the data-quality history
tables, and deletes, in one transaction per table, only what :mod:`airflow_etl_provider.core.retention` says
no retry can need. Pending dead letters (``etl_load_rejects``) are never deleted: they are counted.

Other stores with their own retention (the metrics layer's Pushgateway groups) plug in with
:func:`register_pruner`: every registered pruner runs after the tables, with the same policy, time and
``dry_run`` flag, and its count lands in the report under its name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import quote_identifier, quote_table
from airflow_etl_provider.core.retention import (
    RetentionPolicy,
    pending_rejects_sql,
    prune_dq_history_sql,
    prune_load_log_sql,
)
from airflow_etl_provider.core.sql import LOAD_LOG_TABLE

log = logging.getLogger(__name__)

#: The reject store's table name (``hooks/postgres_load.py``), next to each load log.
REJECT_STORE_TABLE = "etl_load_rejects"
#: The data-quality history table pruned when none is named (``hooks/quality_history.py``'s default).
DEFAULT_DQ_HISTORY = "public.etl_dq_history"

#: ``pruner(policy, now, dry_run) -> items deleted (or that would be)``.
Pruner = Callable[[RetentionPolicy, datetime, bool], int]
_PRUNERS: dict[str, Pruner] = {}


def register_pruner(name: str, pruner: Pruner) -> None:
    """Add a pruner that :func:`prune` runs after the tables (e.g. the metrics layer's Pushgateway groups,
    with ``policy.metrics_group_days``). Registering the same name again replaces it.

    :param name: the key of its count in :attr:`PruneReport.other`.
    :param pruner: ``pruner(policy, now, dry_run)`` returning how many items it deleted (or would delete).
    """
    if not name or not callable(pruner):
        raise ConfigError("register_pruner", "needs a non-empty name and a callable", value=name)
    _PRUNERS[name] = pruner


def registered_pruners() -> dict[str, Pruner]:
    """The pruners :func:`prune` runs, by name."""
    return dict(_PRUNERS)


@dataclass
class PruneReport:
    """What :func:`prune` deleted (or, with ``dry_run``, would delete).

    :param dry_run: nothing was committed.
    :param load_log_cutoff: load-log rows older than this were candidates.
    :param dq_history_cutoff: history runs recorded before this were candidates.
    :param load_log_rows: deleted load-log rows per load-log table.
    :param dq_history_rows: deleted history rows per history table.
    :param dq_history_runs: deleted history runs per history table.
    :param pending_rejects_kept: per reject store, the rows of loads older than the load-log cutoff that are
        still waiting for the dead-letter queue: never deleted, listed so that a person looks at them.
    :param other: the registered pruners' counts.
    """

    dry_run: bool
    load_log_cutoff: datetime
    dq_history_cutoff: datetime
    load_log_rows: dict[str, int] = field(default_factory=dict)
    dq_history_rows: dict[str, int] = field(default_factory=dict)
    dq_history_runs: dict[str, int] = field(default_factory=dict)
    pending_rejects_kept: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible."""
        return {
            "dry_run": self.dry_run,
            "load_log_cutoff": self.load_log_cutoff.isoformat(),
            "dq_history_cutoff": self.dq_history_cutoff.isoformat(),
            "load_log_rows": self.load_log_rows,
            "dq_history_rows": self.dq_history_rows,
            "dq_history_runs": self.dq_history_runs,
            "pending_rejects_kept": self.pending_rejects_kept,
            "other": self.other,
        }


def _exists(cur: Any, quoted: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (quoted,))
    return bool(cur.fetchone()[0])


def _load_log_schemas(cur: Any, schemas: Sequence[str] | None) -> list[str]:
    cur.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = %s AND table_type = 'BASE TABLE' "
        "ORDER BY 1",
        (LOAD_LOG_TABLE,),
    )
    found = [r[0] for r in cur.fetchall()]
    if schemas is None:
        return found
    missing = [s for s in schemas if s not in found]
    if missing:
        raise ConfigError(
            "schemas",
            f"no {LOAD_LOG_TABLE} table in schema(s) {', '.join(missing)}; schemas that have one: "
            f"{', '.join(found) or 'none'} (omit the schemas to prune them all)",
            value=list(schemas),
        )
    return list(schemas)


def _has_column(cur: Any, schema: str, table: str, column: str) -> bool:
    cur.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (schema, table, column),
    )
    return cur.fetchone() is not None


def prune(
    postgres_conn_id: str = "postgres_default",
    policy: RetentionPolicy | dict[str, Any] | None = None,
    *,
    schemas: Sequence[str] | None = None,
    dq_history_tables: Sequence[str] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Delete old bookkeeping rows that no retry can need (see :mod:`airflow_etl_provider.core.retention`).

    :param postgres_conn_id: the Airflow connection of the database holding the tables.
    :param policy: a :class:`RetentionPolicy` or its config (``None``: 90 days, 30 history runs kept).
    :param schemas: the schemas whose ``etl_load_log`` (and ``etl_load_rejects``) to prune; ``None``: every
        schema that has one. A schema without one is a :class:`ConfigError`.
    :param dq_history_tables: the history tables; ``None``: ``public.etl_dq_history`` if it exists. A named
        table that does not exist is a :class:`ConfigError`.
    :param dry_run: count what would be deleted, commit nothing.
    :param now: the current time (default: now, UTC).
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    policy = RetentionPolicy.from_config(policy)
    now = now or datetime.now(UTC)
    report = PruneReport(dry_run, policy.load_log_cutoff(now), policy.dq_history_cutoff(now))
    conn = PostgresHook(postgres_conn_id=postgres_conn_id).get_conn()
    try:
        with conn.cursor() as cur:
            found_schemas = _load_log_schemas(cur, schemas)
            histories = [quote_table(t, "dq_history_tables") for t in (dq_history_tables or [])]
            for quoted in histories:
                if not _exists(cur, quoted):
                    raise ConfigError("dq_history_tables", f"table {quoted} does not exist", value=quoted)
            if dq_history_tables is None and _exists(cur, quote_table(DEFAULT_DQ_HISTORY)):
                histories = [quote_table(DEFAULT_DQ_HISTORY)]
        conn.commit()
        for schema in found_schemas:
            _prune_load_log(conn, schema, report)
        for quoted in histories:
            _prune_history(conn, quoted, policy, report)
    finally:
        conn.close()
    from airflow_etl_provider.hooks.metrics import prune_pushgateway_groups

    report.other["pushgateway_groups"] = prune_pushgateway_groups(policy, now, dry_run)
    for name, pruner in _PRUNERS.items():
        report.other[name] = int(pruner(policy, now, dry_run))
    log.info(
        "Pruned bookkeeping tables%s: %s",
        " (dry run: nothing committed)" if dry_run else "",
        report.to_dict(),
    )
    return report


def _finish(conn: Any, dry_run: bool) -> None:
    if dry_run:
        conn.rollback()
    else:
        conn.commit()


def _prune_load_log(conn: Any, schema: str, report: PruneReport) -> None:
    logtab = f"{quote_identifier(schema, 'schema')}.{quote_identifier(LOAD_LOG_TABLE)}"
    store = f"{quote_identifier(schema, 'schema')}.{quote_identifier(REJECT_STORE_TABLE)}"
    name = f"{schema}.{LOAD_LOG_TABLE}"
    try:
        with conn.cursor() as cur:
            rejects = store if _exists(cur, store) else None
            has_state = _has_column(cur, schema, LOAD_LOG_TABLE, "dead_letter_state")
            cur.execute(prune_load_log_sql(logtab, rejects, has_state=has_state), (report.load_log_cutoff,))
            report.load_log_rows[name] = len(cur.fetchall())
            if rejects is not None:
                cur.execute(pending_rejects_sql(logtab, rejects), (report.load_log_cutoff,))
                report.pending_rejects_kept[f"{schema}.{REJECT_STORE_TABLE}"] = int(cur.fetchone()[0])
        _finish(conn, report.dry_run)
    except BaseException:
        conn.rollback()
        raise
    kept = report.pending_rejects_kept.get(f"{schema}.{REJECT_STORE_TABLE}", 0)
    if kept:
        log.warning(
            "%s holds %d rejected row(s) of loads older than the retention that the dead-letter queue never "
            "confirmed: they are kept (SELECT * FROM %s WHERE dead_letter_state = 'pending'; retry the task "
            "or replay them, see the README)",
            rejects,
            kept,
            logtab,
        )


def _prune_history(conn: Any, quoted: str, policy: RetentionPolicy, report: PruneReport) -> None:
    try:
        with conn.cursor() as cur:
            cur.execute(prune_dq_history_sql(quoted), (policy.dq_history_keep_runs, report.dq_history_cutoff))
            deleted = cur.fetchall()
        _finish(conn, report.dry_run)
    except BaseException:
        conn.rollback()
        raise
    name = quoted.replace('"', "")
    report.dq_history_rows[name] = len(deleted)
    report.dq_history_runs[name] = len({(r[0], r[1]) for r in deleted})
