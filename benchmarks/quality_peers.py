"""Helper of ``bench_quality.py`` (P6), run in the peers venv ``.local/bench-peers/venv`` (make bench-peers):
ours and ONE peer -- PyDeequ or Great Expectations -- on the same Spark session, same Parquet file.

Why a separate venv and Spark 3.5: the peers do not support the main venv's pyspark 4.2 (PyDeequ 1.7.0's
and GX 1.24.1's pyspark extras both say ``<4.2``), and Maven Central serves no Deequ build for Spark 4
(``2.0.18-spark-4.1``, the coordinate PyDeequ names, is not there), only Spark 3.5 builds (Scala 2.12).
So the peers venv has pyspark 3.5.7 (what ``deequ 2.1.0-spark-3.5`` was built against), and ours runs in
it too: our engine (``hooks/quality.py``, unchanged, imported from the work tree) only needs pydantic and
PyYAML; Airflow is not installed there, so the one module it imports that needs Airflow
(``hooks/dead_letter.py``, for two column-name constants) is replaced by a stub holding them.

Prints one line ``QUALITY_PEERS_JSON {...}`` (times per round, failing-row counts per rule of both
sides, versions, peak RSS of this driver and its JVM); everything else goes to stderr. Not meant to be
run by hand, but it can be::

    .local/bench-peers/venv/bin/python benchmarks/quality_peers.py --tool deequ \\
        --parquet .local/bench/quality_orders_1000000.parquet \\
        --warmup .local/bench/quality_orders_1000000_warmup.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # our package from the work tree (not installed in the peers venv)

from _common import proc_peak_rss_mb  # noqa: E402
from _quality_spec import COUNTED, RULES  # noqa: E402
from bench_quality import run_bare, run_ours, warm_and_time  # noqa: E402  (no pyspark/Airflow at its top)

DEEQU_JARS = ROOT / ".local" / "jars-deequ"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ ours
def load_ours() -> Callable[..., Any]:
    """Our ``evaluate``, with the Airflow-only dead-letter module stubbed (the engine uses 2 column names)."""
    stub = types.ModuleType("airflow_etl_provider.hooks.dead_letter")
    stub.ERROR_COLUMN = "_etl_error"  # type: ignore[attr-defined]
    stub.FAILED_RULES_COLUMN = "_etl_failed_rules"  # type: ignore[attr-defined]
    sys.modules.setdefault("airflow_etl_provider.hooks.dead_letter", stub)
    from airflow_etl_provider.hooks.quality import evaluate

    return evaluate


# ----------------------------------------------------------------------------------------------- deequ
def run_deequ(spark: Any, df: Any) -> dict[str, int]:
    """One VerificationSuite with one Check holding the 20 constraints; the answer is its metrics (JSON)."""
    from pydeequ.checks import Check, CheckLevel
    from pydeequ.verification import VerificationResult, VerificationSuite

    def all_pass(x: float) -> bool:
        return x == 1.0

    check = Check(spark, CheckLevel.Error, "orders")
    metric_of: dict[str, tuple[str, str]] = {}  # rule -> (metric name, metric instance)
    for rule in RULES:
        kind, name = rule["type"], rule["name"]
        col = rule.get("column")
        if kind == "not_null":
            check = check.isComplete(col)
            metric_of[name] = ("Completeness", col)
        elif kind == "range":  # what Deequ's Scala isContainedIn(column, lower, upper) compiles to
            check = check.satisfies(f"{col} IS NULL OR ({col} >= {rule['min']} AND {col} <= {rule['max']})",
                                    name, all_pass)
            metric_of[name] = ("Compliance", name)
        elif kind == "regex":
            check = check.hasPattern(col, rule["pattern"], all_pass, name=name)
            metric_of[name] = ("PatternMatch", col)
        elif kind == "allowed_values":
            check = check.isContainedIn(col, [str(v) for v in rule["values"]])
            metric_of[name] = ("Compliance", f"{col} contained in {','.join(str(v) for v in rule['values'])}")
        elif kind == "unique":
            cols = rule["columns"]
            check = check.isUnique(cols[0]) if len(cols) == 1 else check.hasUniqueness(cols, all_pass)
            metric_of[name] = ("Uniqueness", ",".join(cols))
        elif kind == "row_count":
            minimum = rule["min"]
            check = check.hasSize(lambda n, minimum=minimum: n >= minimum)
            metric_of[name] = ("Size", "*")
        elif kind == "expression":  # NULL passes, as in ours
            check = check.satisfies(f"coalesce({rule['expression']}, true)", name, all_pass)
            metric_of[name] = ("Compliance", name)
        else:
            raise ValueError(kind)
    result = VerificationSuite(spark).onData(df).addCheck(check).run()
    metrics = VerificationResult.successMetricsAsJson(spark, result)
    checks = VerificationResult.checkResultsAsJson(spark, result)
    values = {(m["name"], m["instance"]): float(m["value"]) for m in metrics}
    rows = int(values[("Size", "*")])
    counts = {name: round(rows * (1.0 - values[key])) for name, key in metric_of.items() if name in COUNTED}
    counts["_rows"] = rows
    counts["_failed_constraints"] = sum(1 for c in checks if c["constraint_status"] != "Success")
    return counts


# ------------------------------------------------------------------------------------- great expectations
def gx_expectations() -> list[Any]:
    import great_expectations.expectations as gxe

    out: list[Any] = []
    for rule in RULES:
        kind, name, col = rule["type"], rule["name"], rule.get("column")
        meta = {"rule": name}
        if kind == "not_null":
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta))
        elif kind == "range":
            out.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=rule["min"],
                                                         max_value=rule["max"], meta=meta))
        elif kind == "regex":
            out.append(gxe.ExpectColumnValuesToMatchRegex(column=col, regex=rule["pattern"], meta=meta))
        elif kind == "allowed_values":
            out.append(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(rule["values"]), meta=meta))
        elif kind == "unique":
            cols = rule["columns"]
            out.append(gxe.ExpectColumnValuesToBeUnique(column=cols[0], meta=meta) if len(cols) == 1 else
                       gxe.ExpectCompoundColumnsToBeUnique(column_list=cols, meta=meta,
                                                           ignore_row_if="any_value_is_missing"))
        elif kind == "row_count":
            out.append(gxe.ExpectTableRowCountToBeBetween(min_value=rule["min"], meta=meta))
        elif kind == "expression":  # shipped_at >= ordered_at, NULL passes: the column-pair expectation
            a, b = rule["expression"].split(" >= ")
            out.append(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=a, column_B=b, or_equal=True, ignore_row_if="either_value_is_missing", meta=meta))
        else:
            raise ValueError(kind)
    return out


def run_gx(df: Any) -> dict[str, int]:
    """Ephemeral context, Spark data source, whole-dataframe batch, one suite; result_format BASIC with 10
    unexpected values per expectation (like ours' 10 sample rows per failed rule)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_spark(name="bench").add_dataframe_asset(name="orders")
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="orders"))
    for expectation in gx_expectations():
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="orders", data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": df},
                            result_format={"result_format": "BASIC", "partial_unexpected_count": 10})
    counts: dict[str, int] = {}
    samples = 0
    for r in result.results:
        name = (r.expectation_config.meta or {}).get("rule")
        if name in COUNTED:
            counts[name] = int(r.result["unexpected_count"])
            samples += len(r.result.get("partial_unexpected_list") or [])
        elif r.expectation_config.type == "expect_table_row_count_to_be_between":
            counts["_rows"] = int(r.result["observed_value"])
    counts["_samples"] = samples
    counts["_failed_constraints"] = sum(1 for r in result.results if not r.success)
    return counts


# ------------------------------------------------------------------------------------------------ main
def spark_session(tool: str, conf: dict[str, str]) -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    builder = builder.config("spark.app.name", f"bench-quality-{tool}").config("spark.master", "local[2]")
    if tool == "deequ":
        jars = sorted(DEEQU_JARS.glob("deequ-*.jar"))
        if not jars:
            raise SystemExit(f"no Deequ jar in {DEEQU_JARS}: run `make bench-peers`")
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=("deequ", "gx"), required=True)
    parser.add_argument("--parquet", required=True)
    parser.add_argument("--warmup", required=True, help="a small Parquet file of the same schema")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conf", default="{}", help="Spark conf (JSON) from the main benchmark")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_VERSION", "3.5")  # PyDeequ refuses to import without it
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    spark = spark_session(args.tool, json.loads(args.conf))
    load_ours()  # bench_quality.run_ours imports the engine: the stub must be in place first
    sc = spark.sparkContext
    versions = {"spark": spark.version, "python": sys.version.split()[0]}
    if args.tool == "deequ":
        import pydeequ

        versions["pydeequ"] = pydeequ.__version__
        versions["deequ_jar"] = ",".join(p.name for p in sorted(DEEQU_JARS.glob("deequ-*.jar")))

        def peer(df: Any) -> dict[str, int]:
            return run_deequ(spark, df)
    else:
        import great_expectations as gx

        versions["great_expectations"] = gx.__version__
        peer = run_gx
    sides: dict[str, Callable[[Any], dict[str, int]]] = {
        "ours": lambda df: run_ours(df, 10),
        "ours_nosamples": lambda df: run_ours(df, 0),
        "peer": peer,
        # the physical floor on this Spark: one bare aggregation + the unique groupBys (bench_quality's P5 peer)
        "bare": run_bare,
    }

    log(f"[{args.tool}] Spark {spark.version} {sc.master}; warm-up (not timed) ...")
    times, jobs, counts = warm_and_time(spark, sides, args.warmup, args.parquet, args.rounds, log)

    proc = getattr(getattr(sc, "_gateway", None), "proc", None)
    jvm_pid = getattr(proc, "pid", None)
    jvm_mb = proc_peak_rss_mb(jvm_pid) if jvm_pid else None
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak
    driver_mb = proc_peak_rss_mb(os.getpid())
    out = {"tool": args.tool, "versions": versions, "times": times, "jobs": jobs, "counts": counts,
           "rss_mb": {"driver": None if driver_mb is None else round(driver_mb),
                      "jvm": None if jvm_mb is None else round(jvm_mb)}}
    if args.tool == "deequ":  # PyDeequ's assertion callbacks keep a py4j callback server (non-daemon) alive
        sc._gateway.shutdown_callback_server()
    spark.stop()
    print("QUALITY_PEERS_JSON " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
