"""Pruning the bookkeeping tables against the real PostgreSQL: old rows go, nothing a retry needs does.

The load logs and reject stores are written by real loads (``PostgresLoader``); their ages are then moved back
with an UPDATE of ``loaded_at`` (the only way to make a row 100 days old in a test). The history rows are
written by the real ``QualityHistoryHook``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.retention import RetentionPolicy

pytestmark = pytest.mark.spark


def _pg():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook()


def _load(spark, table: str, load_id: str, rows: list[tuple[int, int]]):
    from airflow_etl_provider.hooks.postgres import SparkPostgresHook
    from airflow_etl_provider.hooks.postgres_load import PostgresLoader

    df = spark.createDataFrame(rows, "id INT, v INT")
    return PostgresLoader(SparkPostgresHook(), table, "append", load_id=load_id).load(df)


def _report(stdout: str) -> dict:
    """The CLI's JSON report (Airflow's log lines may precede it on stdout)."""
    text = "\n" + stdout
    return json.loads(text[text.index("\n{\n") + 1 :])


def _log(schema: str) -> dict[str, tuple[str | None, int]]:
    rows = _pg().get_records(
        f'select load_id, dead_letter_state, rows_rejected from "{schema}".etl_load_log order by load_id'
    )
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
def schema(unique):
    name = f"prune_{unique}"
    _pg().run(f'create schema "{name}"')
    yield name
    _pg().run(f'drop schema "{name}" cascade')


def test_prune_keeps_what_a_retry_needs_and_deletes_the_rest(spark, schema) -> None:
    table = f"{schema}.t"
    _pg().run(f"create table {table} (id int primary key, v int check (v >= 0))")
    ages = {  # load id -> days ago
        "etl.load.scheduled__2026-01-01": 200,  # old, superseded by newer loads of the same task: goes
        "etl.load.scheduled__2026-01-02": 150,  # idem
        "etl.load.scheduled__2026-01-03": 120,  # old but its rejected row never reached the DLQ: stays
        "etl.load.scheduled__2026-01-04": 100,  # old, but the newest load of etl.load: stays
        "etl.other.manual__2026-01-05": 300,  # the only (so newest) load of etl.other: stays
        "custom-1": 200,  # custom load ids: the newest of the table's custom ones is kept, this one goes
        "custom-2": 95,
        "etl.third.scheduled__2026-05-01": 5,  # newer than the retention: stays
    }
    outcomes = {}
    for i, load_id in enumerate(ages):
        bad = [(1000 + i, -1)] if load_id.endswith("01-03") else []
        outcomes[load_id] = _load(spark, table, load_id, [(i * 10 + k, k) for k in range(3)] + bad)
    # every load but 01-03 had nothing rejected; 01-03's rejected row was never handed to a DLQ: pending
    for load_id, out in outcomes.items():
        if load_id.endswith("01-03"):
            assert out.dead_letter_state == "pending" and out.records_rejected == 1
        else:
            assert out.dead_letter_state == "none", load_id
    for load_id, days in ages.items():
        _pg().run(
            f'update "{schema}".etl_load_log set loaded_at = now() - make_interval(days => %s) where load_id = %s',
            parameters=(days, load_id),
        )

    from airflow_etl_provider.hooks.maintenance import prune

    before = _log(schema)
    dry = prune(policy={"load_log_days": 90}, schemas=[schema], dq_history_tables=[], dry_run=True)
    assert _log(schema) == before  # a dry run commits nothing
    report = prune(policy=RetentionPolicy(load_log_days=90), schemas=[schema], dq_history_tables=[])
    gone = set(before) - set(_log(schema))
    assert gone == {"etl.load.scheduled__2026-01-01", "etl.load.scheduled__2026-01-02", "custom-1"}
    assert report.load_log_rows == dry.load_log_rows == {f"{schema}.etl_load_log": len(gone)}
    # the pending load's rejected row is still in the reject store, and reported as waiting
    assert _pg().get_first(f'select count(*) from "{schema}".etl_load_rejects')[0] == 1
    assert report.pending_rejects_kept == {f"{schema}.etl_load_rejects": 1}

    # a retry of the newest run finds its load committed: nothing is loaded twice
    again = _load(spark, table, "etl.load.scheduled__2026-01-04", [(40, 0), (41, 1), (42, 2)])
    assert again.skipped and again.records_loaded == 3
    # a retry of the pending load finds it, and its rejected row to hand over again
    retry = _load(spark, table, "etl.load.scheduled__2026-01-03", [(20, 0), (21, 1), (22, 2), (1002, -1)])
    assert retry.skipped and retry.dead_letters_pending and retry.rejected is not None
    assert retry.rejected.count() == 1

    # a second prune has nothing left to delete
    second = prune(policy={"load_log_days": 90}, schemas=[schema], dq_history_tables=[])
    assert second.load_log_rows == {f"{schema}.etl_load_log": 0}


def test_prune_keeps_the_newest_history_runs_of_each_dataset(schema) -> None:
    from airflow_etl_provider.hooks.maintenance import prune
    from airflow_etl_provider.hooks.quality_history import QualityHistoryHook

    table = f"{schema}.etl_dq_history"
    hook = QualityHistoryHook(table=table)
    report = {
        "status": "pass",
        "row_count": 10,
        "rules": [{"name": "not_null(id)", "type": "not_null", "status": "pass", "failing_rows": 0}],
    }
    now = datetime.now(UTC)
    per_run = hook.record("ds1", "probe", report)  # rows per run, as the hook writes them
    hook.record("ds1", "probe", report)  # a re-run replaces its rows
    assert _pg().get_first(f"select count(*) from {table} where run_id = 'probe'")[0] == per_run
    _pg().run(f"delete from {table}")
    days = {("ds1", f"run-{i:02d}"): 5 * i for i in range(40)}  # every 5 days back to 195 days
    days |= {("ds2", f"run-{i}"): 200 + i for i in range(3)}  # a rarely-run dataset: all old
    for (dataset, run_id), age in days.items():
        hook.record(dataset, run_id, report, logical_date=now - timedelta(days=age))
        _pg().run(
            f"update {table} set recorded_at = %s where dataset = %s and run_id = %s",
            parameters=(now - timedelta(days=age), dataset, run_id),
        )

    out = prune(
        policy={"dq_history_days": 90, "dq_history_keep_runs": 30},
        schemas=[],
        dq_history_tables=[table],
        now=now,
    )
    left = {tuple(r) for r in _pg().get_records(f"select distinct dataset, run_id from {table}")}
    # what the policy says, computed from the ages: a run goes if it is older than 90 days and not among the
    # 30 newest of its dataset
    newest = {ds: sorted((a, r) for (d, r), a in days.items() if d == ds)[:30] for ds in ("ds1", "ds2")}
    keep = {(ds, r) for ds, runs in newest.items() for _, r in runs}
    expected_left = {k for k, age in days.items() if age <= 90 or k in keep}
    assert left == expected_left
    assert out.dq_history_runs == {table: len(days) - len(expected_left)}
    assert out.dq_history_rows == {table: (len(days) - len(expected_left)) * per_run}
    assert ("ds1", "run-30") not in left and ("ds1", "run-29") in left and ("ds2", "run-2") in left


def test_cli_prune_dry_run_and_a_schema_without_a_load_log(schema) -> None:
    _pg().run(
        f'create table "{schema}".etl_load_log (table_name text not null, load_id text not null, '
        "mode text not null, loaded_at timestamptz not null default now(), rows bigint not null, "
        "rows_read bigint not null, rows_rejected bigint not null, primary key (table_name, load_id))"
    )
    _pg().run(
        f"insert into \"{schema}\".etl_load_log values ('{schema}.t', 'a', 'append', now() - interval "
        f"'400 days', 1, 1, 0), ('{schema}.t', 'b', 'append', now() - interval '300 days', 1, 1, 0)"
    )
    cli = [
        sys.executable,
        "-m",
        "airflow_etl_provider.cli",
        "maintenance",
        "prune",
        "--schema",
        schema,
        "--dq-history-table",
        f"{schema}.nothing_here",
    ]
    missing = subprocess.run(cli, capture_output=True, text=True, env=os.environ, timeout=120)
    assert (
        missing.returncode == 2
        and "dq_history_tables" in missing.stderr
        and "does not exist" in missing.stderr
    )
    dry = subprocess.run(
        [*cli[:-2], "--load-log-days", "30", "--dry-run"],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    # an old log without the dead_letter_state column: 'a' goes, 'b' is the newest of its table
    assert _report(dry.stdout)["load_log_rows"] == {f"{schema}.etl_load_log": 1}
    assert _pg().get_first(f'select count(*) from "{schema}".etl_load_log')[0] == 2
    real = subprocess.run(
        [*cli[:-2], "--load-log-days", "30"], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert real.returncode == 0, real.stderr[-2000:]
    assert _pg().get_records(f'select load_id from "{schema}".etl_load_log') == [("b",)]
    with pytest.raises(ConfigError, match="schemas"):
        from airflow_etl_provider.hooks.maintenance import prune

        prune(schemas=[f"{schema}_absent"])


def test_registered_pruners_run_with_the_policy_and_report_their_count(monkeypatch) -> None:
    """The hook the metrics layer will use for its Pushgateway groups (``metrics_group_days``)."""
    from airflow_etl_provider.hooks import maintenance

    monkeypatch.setattr(maintenance, "_PRUNERS", {})
    calls = []

    def pushgateway_groups(policy: RetentionPolicy, now: datetime, dry_run: bool) -> int:
        calls.append((policy.metrics_group_days, now, dry_run))
        return 4

    maintenance.register_pruner("pushgateway_groups", pushgateway_groups)
    now = datetime(2026, 12, 2, tzinfo=UTC)
    report = maintenance.prune(policy={"metricsGroupDays": 14}, schemas=[], dq_history_tables=[], dry_run=True,
                               now=now)
    assert calls == [(14, now, True)]
    assert report.other == {"pushgateway_groups": 4} and report.to_dict()["other"] == {"pushgateway_groups": 4}
    with pytest.raises(ConfigError, match="register_pruner"):
        maintenance.register_pruner("", pushgateway_groups)


def test_the_example_maintenance_dag_runs(schema) -> None:
    """dags/example_maintenance.py under dag.test(), as a dry run: it reports and deletes nothing."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from tests.integration.test_example_dags import _xcom

    _pg().run(f'create table "{schema}".etl_load_log (table_name text not null, load_id text not null, '
              "mode text not null, loaded_at timestamptz not null default now(), rows bigint not null, "
              "rows_read bigint not null, rows_rejected bigint not null, primary key (table_name, load_id))")
    _pg().run(f"insert into \"{schema}\".etl_load_log values ('{schema}.t', 'old', 'append', now() - interval "
              f"'400 days', 1, 1, 0), ('{schema}.t', 'new', 'append', now() - interval '1 day', 1, 1, 0)")
    dags = Path(__file__).resolve().parents[2] / "dags"
    run = DagBag(dag_folder=str(dags)).get_dag("example_maintenance").test(run_conf={"dry_run": True})
    assert run.state == "success"
    result = _xcom("example_maintenance", run.run_id, "prune_bookkeeping", "return_value")
    assert result["dry_run"] is True
    assert result["load_log_rows"][f"{schema}.etl_load_log"] == 1  # 'old' would go ('new' is recent)
    assert _pg().get_first(f'select count(*) from "{schema}".etl_load_log')[0] == 2


def test_prune_deletes_the_pushgateway_groups_not_pushed_for_the_retention(unique, monkeypatch) -> None:
    """The Pushgateway never forgets a group: ``prune`` deletes this package's groups older than
    ``metrics_group_days`` (a dry run only counts them) and keeps the younger ones."""
    from airflow_etl_provider.core.metrics import MetricsRecorder
    from airflow_etl_provider.hooks.maintenance import prune
    from airflow_etl_provider.hooks.metrics import PushgatewayReporter, pushgateway_groups

    url = os.environ["AIRFLOW_ETL_PUSHGATEWAY_URL"]
    recorder = MetricsRecorder(f"dag_{unique}", "load", "orders")
    recorder.add("etl_rows_read", 3)
    PushgatewayReporter(url).emit(recorder.points)

    def mine() -> list[dict]:
        return [g for g in pushgateway_groups(url) if g["labels"].get("dag_id") == f"dag_{unique}"]

    pushed_at = datetime.fromtimestamp(mine()[0]["push_time_seconds"], UTC)
    policy = RetentionPolicy(metrics_group_days=2)
    prune(policy=policy, schemas=[], now=pushed_at + timedelta(days=1))
    assert mine()  # younger than 2 days: kept
    counted = prune(policy=policy, schemas=[], now=pushed_at + timedelta(days=3), dry_run=True)
    assert counted.other["pushgateway_groups"] >= 1 and mine()  # counted, not deleted
    deleted = prune(policy=policy, schemas=[], now=pushed_at + timedelta(days=3))
    assert deleted.other["pushgateway_groups"] >= 1 and not mine()
    monkeypatch.delenv("AIRFLOW_ETL_PUSHGATEWAY_URL")
    monkeypatch.delenv("AIRFLOW__ETL_PROVIDER__PUSHGATEWAY_URL", raising=False)
    assert prune(policy=policy, schemas=[]).other["pushgateway_groups"] == 0  # none configured
