"""The retention policy of the bookkeeping tables: parsing and the task key of a load id (pure core)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_etl_provider.cli import build_parser
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.retention import RetentionPolicy, load_task_key


def test_defaults_are_ninety_days_and_thirty_history_runs() -> None:
    policy = RetentionPolicy.from_config(None)
    assert (policy.load_log_days, policy.dq_history_days, policy.dq_history_keep_runs) == (90, 90, 30)
    assert policy.metrics_group_days == 90  # the option name reserved for the metrics layer's pruner
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert policy.load_log_cutoff(now) == now - timedelta(days=90)
    assert policy.dq_history_cutoff(now) == now - timedelta(days=90)


def test_camel_case_keys_and_bad_values_name_the_key() -> None:
    policy = RetentionPolicy.from_config({"loadLogDays": 30, "dqHistoryDays": 7, "dqHistoryKeepRuns": 5})
    assert (policy.load_log_days, policy.dq_history_days, policy.dq_history_keep_runs) == (30, 7, 5)
    with pytest.raises(ConfigError, match="retention.loadLogDays"):
        RetentionPolicy.from_config({"loadLogDays": 0})
    with pytest.raises(ConfigError, match="retention.load_log_dayz"):
        RetentionPolicy.from_config({"load_log_dayz": 30})
    with pytest.raises(ConfigError, match="dq_history_keep_runs"):
        RetentionPolicy.from_config({"dq_history_keep_runs": "30"})


@pytest.mark.parametrize(
    ("load_id", "key"),
    [
        ("orders.load_orders.scheduled__2026-12-01T00:00:00+00:00", "orders.load_orders"),
        ("orders.group.load.manual__2026-12-02T06:05:58.116799+00:00", "orders.group.load"),
        ("a.b.asset_triggered__2026-01-01T00:00:00+00:00", "a.b"),
        ("a.b.backfill__2026-01-01T00:00:00+00:00", "a.b"),
        ("nightly-2026-12-01", ""),  # a custom load id: one key per target
        ("manual__2026-01-01", ""),
    ],
)
def test_the_task_key_of_a_default_load_id(load_id: str, key: str) -> None:
    assert load_task_key(load_id) == key


def test_cli_maintenance_prune_arguments() -> None:
    args = build_parser().parse_args(
        [
            "maintenance",
            "prune",
            "--schema",
            "public",
            "--schema",
            "sales",
            "--load-log-days",
            "30",
            "--dry-run",
        ]
    )
    assert (args.schema, args.load_log_days, args.dq_history_days, args.dry_run) == (
        ["public", "sales"],
        30,
        None,
        True,
    )
