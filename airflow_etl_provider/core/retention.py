"""How long the provider's bookkeeping tables keep their rows, and the statements that prune them.

The load log (``etl_load_log``, one per target schema), the reject store (``etl_load_rejects``) and the
data-quality history (``etl_dq_history``) grow by one or more rows per task run. :class:`RetentionPolicy`
bounds them; :func:`prune_load_log_sql` and :func:`prune_dq_history_sql` are the only statements that
delete from them (run by :mod:`airflow_etl_provider.hooks.maintenance`). What a retry could still need is
never deleted, whatever its age:

* a load-log row whose rejected rows are not confirmed by the dead-letter queue (``dead_letter_state =
  'pending'``), or that still has rows in the reject store;
* the newest load-log row of every target and task (the load id an Airflow retry of the latest run looks up
  to skip a load that already committed);
* **pending dead letters** (``etl_load_rejects``): never deleted automatically; they leave the store only
  when the DLQ confirmed them (or by hand). Pruning reports how many are older than the retention;
* the ``dq_history_keep_runs`` newest runs of every data-quality dataset (the ``row_count_change``
  baseline), and the runs newer than the retention.

Pure: no Airflow, no database client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import Field

from airflow_etl_provider.core.retry import ConfigModel, KeyMap, to_field

__all__ = [
    "AIRFLOW_RUN_TYPES",
    "RetentionPolicy",
    "load_task_key",
    "pending_rejects_sql",
    "prune_dq_history_sql",
    "prune_load_log_sql",
]

#: The prefixes of Airflow run ids. A default load id is ``<dag_id>.<task_id>.<run_id>``: what precedes
#: ``.<run type>__`` identifies the task.
AIRFLOW_RUN_TYPES = ("manual", "scheduled", "backfill", "dataset_triggered", "asset_triggered")
_TASK_KEY_PATTERN = r"^(.*)\.(?:" + "|".join(AIRFLOW_RUN_TYPES) + r")__"


class RetentionPolicy(ConfigModel):
    """How long bookkeeping rows are kept.

    :param load_log_days: load-log rows older than this (``loaded_at``) may be deleted, except those a
        retry could still need (see the module docstring). Default 90.
    :param dq_history_days: data-quality history runs older than this (``recorded_at``) may be deleted.
        Default 90.
    :param dq_history_keep_runs: the newest runs of each data-quality dataset that are kept whatever their
        age (``row_count_change`` compares with them; its default ``window`` is 30). Default 30.
    :param metrics_group_days: the Pushgateway groups of this package not pushed for this many days are
        deleted (the Pushgateway never forgets a group; ``[etl_provider] pushgateway_url`` or
        ``$AIRFLOW_ETL_PUSHGATEWAY_URL`` says where it is). Default 90.
    """

    config_path: ClassVar[str] = "retention"
    config_keys: ClassVar[KeyMap] = {
        "load_log_days": to_field("load_log_days"),
        "loadLogDays": to_field("load_log_days"),
        "dq_history_days": to_field("dq_history_days"),
        "dqHistoryDays": to_field("dq_history_days"),
        "dq_history_keep_runs": to_field("dq_history_keep_runs"),
        "dqHistoryKeepRuns": to_field("dq_history_keep_runs"),
        "metrics_group_days": to_field("metrics_group_days"),
        "metricsGroupDays": to_field("metrics_group_days"),
    }

    load_log_days: int = Field(default=90, ge=1)
    dq_history_days: int = Field(default=90, ge=1)
    dq_history_keep_runs: int = Field(default=30, ge=1)
    metrics_group_days: int = Field(default=90, ge=1)

    @classmethod
    def from_config(
        cls, obj: RetentionPolicy | Mapping[str, Any] | None, *, path: str = "retention"
    ) -> RetentionPolicy:
        """Build a policy from a policy, ``None`` (the defaults) or a mapping (snake_case or camelCase keys).

        :param obj: the configuration.
        :param path: where the block sits in the configuration, for error messages.
        :raises ConfigError: naming the key, the value and what is allowed.
        """
        if isinstance(obj, RetentionPolicy):
            return obj
        if obj is None:
            return cls()
        return cls.from_mapping(obj, path)

    def load_log_cutoff(self, now: datetime) -> datetime:
        """Load-log rows older than this may go.

        :param now: the current time (timezone-aware).
        """
        return now - timedelta(days=self.load_log_days)

    def dq_history_cutoff(self, now: datetime) -> datetime:
        """Data-quality runs recorded before this may go.

        :param now: the current time (timezone-aware).
        """
        return now - timedelta(days=self.dq_history_days)


def load_task_key(load_id: str) -> str:
    """The task a load id belongs to: ``dag.task`` for a default load id ``dag.task.<run_id>``, else ``""``
    (custom load ids: the newest row of the target is kept). The SQL of :func:`prune_load_log_sql` computes
    the same key.

    :param load_id: the load id.
    """
    match = re.match(_TASK_KEY_PATTERN, load_id, re.DOTALL)
    return match.group(1) if match else ""


def prune_load_log_sql(
    log: str, rejects: str | None, *, has_state: bool = True, returning: bool = True
) -> str:
    """Delete the load-log rows older than the cutoff (one ``%s`` parameter, a timestamp) that no retry can
    need: not pending, nothing in the reject store, not the newest row of their target and task.

    :param log: the quoted load-log table.
    :param rejects: the quoted reject store of the same schema, or ``None`` if it does not exist.
    :param has_state: the log has the ``dead_letter_state`` column (logs written before it existed do not,
        and none of their loads can be pending).
    :param returning: end with ``RETURNING table_name, load_id``.
    """
    key = f"coalesce(substring(%(col)s from '{_TASK_KEY_PATTERN}'), '')"
    newest = (
        f"SELECT DISTINCT ON (n.table_name, {key % {'col': 'n.load_id'}}) n.table_name, n.load_id "
        f"FROM {log} n ORDER BY n.table_name, {key % {'col': 'n.load_id'}}, n.loaded_at DESC, n.load_id DESC"
    )
    sql = (
        f"DELETE FROM {log} l WHERE l.loaded_at < %s "
        + ("AND l.dead_letter_state IS DISTINCT FROM 'pending' " if has_state else "")
        + f"AND (l.table_name, l.load_id) NOT IN ({newest})"
    )
    if rejects is not None:
        sql += (
            f" AND NOT EXISTS (SELECT 1 FROM {rejects} r WHERE r.table_name = l.table_name "
            "AND r.load_id = l.load_id)"
        )
    return sql + (" RETURNING l.table_name, l.load_id" if returning else "")


def pending_rejects_sql(log: str, rejects: str) -> str:
    """Count the reject-store rows (never deleted here) of loads older than the cutoff (one ``%s``): dead
    letters the DLQ never confirmed, for a person to look at.

    :param log: the quoted load-log table.
    :param rejects: the quoted reject store.
    """
    return (
        f"SELECT count(*) FROM {rejects} r LEFT JOIN {log} l ON l.table_name = r.table_name "
        "AND l.load_id = r.load_id WHERE l.loaded_at IS NULL OR l.loaded_at < %s"
    )


def prune_dq_history_sql(history: str) -> str:
    """Delete the data-quality history runs recorded before the cutoff, except the newest ``keep`` runs of
    each dataset. Parameters: ``%s`` the number of runs to keep, ``%s`` the cutoff. Returns the deleted
    ``dataset, run_id, rule_name``.

    :param history: the quoted history table.
    """
    return (
        f"DELETE FROM {history} h USING ("
        "SELECT dataset, run_id, max(recorded_at) AS recorded_at, row_number() OVER (PARTITION BY dataset "
        "ORDER BY max(coalesce(logical_date, recorded_at)) DESC, max(recorded_at) DESC, run_id DESC) AS rank "
        f"FROM {history} GROUP BY dataset, run_id) r "
        "WHERE h.dataset = r.dataset AND h.run_id = r.run_id AND r.rank > %s AND r.recorded_at < %s "
        "RETURNING h.dataset, h.run_id, h.rule_name"
    )
