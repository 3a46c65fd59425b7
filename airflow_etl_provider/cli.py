"""``airflow-etl``: operate the dead-letter queues and circuit breakers from a shell.

Examples::

    airflow-etl dlq read --from kafka --topic orders.dlq --limit 5
    airflow-etl dlq read --from s3 --bucket etl-dlq --prefix dead-letters/orders
    airflow-etl dlq replay --from kafka --topic orders.dlq --to-postgres public.orders
    airflow-etl dlq replay-spool .local/dlq-spool/spool-*.jsonl --to kafka --topic orders.dlq
    airflow-etl breaker status postgres_default
    airflow-etl breaker reset postgres_default
    airflow-etl maintenance prune --load-log-days 90 --dq-history-days 90 --dry-run

Connections are Airflow connections (``AIRFLOW_CONN_*`` or the metadata DB), as in a task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def _dlq_config(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    config: dict[str, Any] = {"type": kind}
    if kind == "kafka":
        config["topic"] = args.topic
        if args.conn_id:
            config["conn_id"] = args.conn_id
        if args.bootstrap_servers:
            config["config"] = {"bootstrap.servers": args.bootstrap_servers}
    elif kind == "s3":
        config.update(bucket=args.bucket, prefix=args.prefix or "dead-letters")
        if args.conn_id:
            config["conn_id"] = args.conn_id
    else:
        config["path"] = args.path
    return config


def _add_dlq_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", help="Kafka: the dead-letter topic")
    p.add_argument("--conn-id", help="Kafka/S3: the Airflow connection (default kafka_default / aws_default)")
    p.add_argument("--bootstrap-servers", help="Kafka: bootstrap servers instead of a connection")
    p.add_argument("--bucket", help="S3: the bucket")
    p.add_argument("--prefix", help="S3: the key prefix (default dead-letters)")
    p.add_argument("--path", help="file: the DLQ directory (or one file)")


def _spark(args: argparse.Namespace) -> Any:
    from airflow_etl_provider.hooks.spark import SparkSessionHook

    return SparkSessionHook(spark_conn_id=args.spark_conn_id, app_name="airflow-etl-cli").session()


def cmd_dlq_read(args: argparse.Namespace) -> int:
    from airflow_etl_provider.hooks.redrive import read_dead_letters

    with _spark(args) as spark:
        df = read_dead_letters(spark, _dlq_config(args, args.source), schema=args.schema)
        for row in df.limit(args.limit).toLocalIterator():
            print(json.dumps(row.asDict(recursive=True), default=str, sort_keys=True))
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from airflow_etl_provider.core.identifiers import quote_table
    from airflow_etl_provider.hooks.postgres import SparkPostgresHook
    from airflow_etl_provider.hooks.redrive import original_columns, read_dead_letters

    table = quote_table(args.to_postgres, "--to-postgres")
    pg = SparkPostgresHook(postgres_conn_id=args.postgres_conn_id)
    with _spark(args) as spark:
        target = spark.read.format("jdbc").options(
            **pg.jdbc_options(query=f"select * from {table} where false")
        ).load()
        df = read_dead_letters(spark, _dlq_config(args, args.source), schema=target.schema)
        cols = [c for c in original_columns(df) if c in target.columns]
        rows = df.select(*cols)
        n = rows.count()
        rows.write.format("jdbc").options(**pg.jdbc_options(dbtable=table)).mode("append").save()
    print(f"replayed {n} dead letters into {args.to_postgres}")
    return 0


def cmd_dlq_replay_spool(args: argparse.Namespace) -> int:
    from airflow_etl_provider.hooks.dead_letter import DeadLetterHook, read_spool

    hook = DeadLetterHook(_dlq_config(args, args.to), pipeline_id="replay-spool")
    result = hook.publish(read_spool(args.paths))
    print(f"replayed {result.delivered} dead letters from {len(args.paths)} spool path(s) to {hook.location}")
    return 0


def cmd_breaker(args: argparse.Namespace) -> int:
    from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy, variable_key
    from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore, breaker_for

    store = AirflowVariableBreakerStore()
    if args.action == "reset":
        breaker = breaker_for(CircuitBreakerPolicy(), args.name, store=store)
        assert breaker is not None
        breaker.reset(who="airflow-etl cli")
        print(f"circuit breaker {args.name} reset to closed (Variable {variable_key(args.name)})")
        return 0
    snap = store.load(args.name)
    print(json.dumps(snap.to_json() if snap else {"state": "closed", "note": "no state stored yet"}, indent=2))
    return 0


def cmd_maintenance_prune(args: argparse.Namespace) -> int:
    from airflow_etl_provider.core.retention import RetentionPolicy
    from airflow_etl_provider.hooks.maintenance import prune

    given = {
        "load_log_days": args.load_log_days,
        "dq_history_days": args.dq_history_days,
        "dq_history_keep_runs": args.dq_history_keep_runs,
    }
    policy = RetentionPolicy.from_config({k: v for k, v in given.items() if v is not None}, path="maintenance prune")
    report = prune(
        args.postgres_conn_id,
        policy,
        schemas=args.schema or None,
        dq_history_tables=args.dq_history_table or None,
        dry_run=args.dry_run,
    )
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return 0


def _duration_s(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a duration such as 90s, 30m, 12h, 7d: {text!r}") from err


def cmd_metrics_delete_stale(args: argparse.Namespace) -> int:
    from airflow_etl_provider.hooks.metrics import delete_stale_groups

    url = args.url or os.environ.get("AIRFLOW_ETL_PUSHGATEWAY_URL")
    if not url:
        raise ValueError("--url is required (or $AIRFLOW_ETL_PUSHGATEWAY_URL)")
    for labels in delete_stale_groups(url, args.older_than, job=args.job):
        print("deleted group " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-etl", description=__doc__.split("\n")[0])
    parser.add_argument("--spark-conn-id", default="spark_default")
    sub = parser.add_subparsers(dest="group", required=True)

    dlq = sub.add_parser("dlq", help="read, replay and redrive dead letters").add_subparsers(dest="cmd", required=True)
    read = dlq.add_parser("read", help="print dead letters with their original columns restored")
    read.add_argument("--from", dest="source", choices=("kafka", "s3", "file"), required=True)
    _add_dlq_args(read)
    read.add_argument("--schema", help="the original rows' schema as DDL (default: inferred)")
    read.add_argument("--limit", type=int, default=20)
    read.set_defaults(func=cmd_dlq_read)

    replay = dlq.add_parser("replay", help="reload dead letters into a PostgreSQL table (after fixing the cause)")
    replay.add_argument("--from", dest="source", choices=("kafka", "s3", "file"), required=True)
    _add_dlq_args(replay)
    replay.add_argument("--to-postgres", required=True, help="schema.table to append the restored rows to")
    replay.add_argument("--postgres-conn-id", default="postgres_default")
    replay.set_defaults(func=cmd_dlq_replay)

    rspool = dlq.add_parser("replay-spool", help="publish spooled dead letters to the DLQ once it is back")
    rspool.add_argument("paths", nargs="+", help="spool files or directories")
    rspool.add_argument("--to", choices=("kafka", "s3", "file"), required=True)
    _add_dlq_args(rspool)
    rspool.set_defaults(func=cmd_dlq_replay_spool)

    breaker = sub.add_parser("breaker", help="show or reset a shared circuit breaker")
    breaker.add_argument("action", choices=("status", "reset"))
    breaker.add_argument("name", help="the breaker name (by default the protected connection id)")
    breaker.set_defaults(func=cmd_breaker)

    maintenance = sub.add_parser("maintenance", help="keep the bookkeeping tables bounded").add_subparsers(
        dest="cmd", required=True
    )
    pr = maintenance.add_parser(
        "prune",
        help="delete old etl_load_log and etl_dq_history rows no retry can need (pending dead letters are "
        "never deleted)",
    )
    pr.add_argument("--postgres-conn-id", default="postgres_default")
    pr.add_argument("--schema", action="append", help="a schema whose etl_load_log to prune (repeat; default: all)")
    pr.add_argument("--dq-history-table", action="append",
                    help="a data-quality history table (repeat; default: public.etl_dq_history if it exists)")
    pr.add_argument("--load-log-days", type=int, help="keep load-log rows this many days (default 90)")
    pr.add_argument("--dq-history-days", type=int, help="keep data-quality history this many days (default 90)")
    pr.add_argument("--dq-history-keep-runs", type=int,
                    help="always keep this many newest runs per data-quality dataset (default 30)")
    pr.add_argument("--dry-run", action="store_true", help="count what would be deleted, commit nothing")
    pr.set_defaults(func=cmd_maintenance_prune)

    metrics = sub.add_parser("metrics", help="manage pushed metrics").add_subparsers(dest="cmd", required=True)
    stale = metrics.add_parser("delete-stale", help="delete Pushgateway groups whose last push is older than ...")
    stale.add_argument("--url", help="the Pushgateway (default $AIRFLOW_ETL_PUSHGATEWAY_URL)")
    stale.add_argument("--older-than", type=_duration_s, required=True, help="e.g. 7d, 12h, 30m, 90s")
    stale.add_argument("--job", default="airflow_etl")
    stale.set_defaults(func=cmd_metrics_delete_stale)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as err:  # a CLI prints the error, never a bare traceback, and exits non-zero
        print(f"airflow-etl: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
