"""Per-run data-quality metrics kept in a PostgreSQL table: trends, and the baseline of ``row_count_change``.

One row per rule per run, plus one ``__run__`` row with the run's status and row count::

    dataset | run_id | rule_name | rule_type | status | failing_rows | failure_ratio | row_count | observed ...

``dataset`` defaults to ``<dag_id>.<task_id>``. Recording a run first deletes that run's rows, in the same
transaction, so re-running a task replaces its metrics instead of counting the run twice. The table is
created on first use (``CREATE TABLE IF NOT EXISTS``), so no migration step is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import quote_table
from airflow_etl_provider.core.rules import to_jsonable

RUN_ROW = "__run__"
DEFAULT_TABLE = "public.etl_dq_history"
HISTORY_KEYS = ("conn_id", "table", "dataset", "window")


def validate_history(history: Mapping[str, Any], field: str = "history") -> None:
    """Check a ``history`` config's shape without I/O."""
    if not isinstance(history, Mapping):
        raise ConfigError(field, "must be a mapping such as {'conn_id': 'postgres_default', "
                                 "'table': 'etl_dq_history'}", value=history)
    unknown = sorted(set(history) - set(HISTORY_KEYS))
    if unknown:
        raise ConfigError(field, f"unknown key(s) {unknown}", allowed=HISTORY_KEYS)
    table = history.get("table") or DEFAULT_TABLE
    if "{{" not in str(table):
        quote_table(str(table), f"{field}.table")
    window = history.get("window", 30)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ConfigError(f"{field}.window", "must be a positive integer: how many previous runs to read",
                          value=window)


class QualityHistoryHook:
    """Reads and writes the quality history table.

    :param conn_id: a PostgreSQL connection id.
    :param table: the table (``schema.table``; validated and quoted).
    """

    def __init__(self, conn_id: str = "postgres_default", table: str = DEFAULT_TABLE) -> None:
        self.conn_id = conn_id
        self.table = table
        self.quoted = quote_table(table, "history.table")
        self._ensured = False

    def _connect(self) -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=self.conn_id).get_conn()

    def ensure_table(self, conn: Any) -> None:
        """Create the table and its index if they do not exist."""
        if self._ensured:
            return
        name = self.quoted.split(".")[-1].strip('"')
        with conn.cursor() as cur:
            cur.execute(
                f"create table if not exists {self.quoted} ("
                " dataset text not null, run_id text not null, rule_name text not null,"
                " dag_id text, task_id text, logical_date timestamptz,"
                " recorded_at timestamptz not null default now(), rule_type text, status text not null,"
                " failing_rows bigint, failure_ratio double precision, row_count bigint,"
                " threshold text, observed jsonb,"
                " primary key (dataset, run_id, rule_name))"
            )
            cur.execute(f'create index if not exists "{name[:40]}_recent" on {self.quoted} '
                        "(dataset, rule_name, recorded_at desc)")
        self._ensured = True

    def previous_row_counts(self, dataset: str, run_id: str | None, window: int = 30) -> list[int]:
        """Row counts of the ``window`` most recent other runs of ``dataset``, oldest first.

        :param dataset: the dataset key.
        :param run_id: the current run (excluded, so a re-run does not compare with itself).
        :param window: how many previous runs.
        """
        conn = self._connect()
        try:
            self.ensure_table(conn)
            with conn.cursor() as cur:
                cur.execute(
                    f"select row_count from {self.quoted} where dataset = %s and rule_name = %s "
                    "and run_id is distinct from %s and row_count is not null "
                    "order by coalesce(logical_date, recorded_at) desc, recorded_at desc limit %s",
                    (dataset, RUN_ROW, run_id, window),
                )
                counts = [int(r[0]) for r in cur.fetchall()]
            conn.commit()
        finally:
            conn.close()
        return counts[::-1]

    def record(
        self,
        dataset: str,
        run_id: str,
        report: Mapping[str, Any],
        *,
        dag_id: str | None = None,
        task_id: str | None = None,
        logical_date: datetime | None = None,
    ) -> int:
        """Replace ``run_id``'s rows with this report's (one transaction). Returns the rows written.

        :param dataset: the dataset key.
        :param run_id: the run.
        :param report: the JSON report (``status``, ``row_count``, ``rules``).
        :param dag_id: for the record.
        :param task_id: for the record.
        :param logical_date: orders the history (``recorded_at`` when ``None``).
        """
        common = (dataset, run_id, dag_id, task_id, logical_date)
        rows: list[Sequence[Any]] = [(*common, RUN_ROW, "run", report.get("status"), None, None,
                                      report.get("row_count"), None, None)]
        for rule in report.get("rules", []):
            rows.append((*common, rule["name"], rule.get("type"), rule.get("status"), rule.get("failing_rows"),
                         rule.get("failure_ratio"), report.get("row_count"), rule.get("threshold"),
                         json.dumps(to_jsonable(rule.get("observed")))))
        conn = self._connect()
        try:
            self.ensure_table(conn)
            with conn.cursor() as cur:
                cur.execute(f"delete from {self.quoted} where dataset = %s and run_id = %s", (dataset, run_id))
                cur.executemany(
                    f"insert into {self.quoted} (dataset, run_id, dag_id, task_id, logical_date, rule_name, "
                    "rule_type, status, failing_rows, failure_ratio, row_count, threshold, observed) "
                    "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                    rows,
                )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
        return len(rows)
