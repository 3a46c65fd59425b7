"""Data quality (issue #5, P5/P6): our engine vs a bare Spark aggregation, PyDeequ and Great Expectations.

The workload: 20 rules (5 not_null, 5 range, 3 regex, 3 allowed_values, 2 unique, 1 row_count,
1 expression; ``benchmarks/_quality_spec.py``) on 1M generated orders (17 columns) read from Parquet, with
failing rows for every rule type (0.02-2 % per rule, duplicated keys for both unique rules), so no tool
short-circuits. Spark ``local[2]``, configured like ``SparkSessionHook`` (the ``spark_default`` conf).

What is compared (each side from ``spark.read.parquet`` to its answer in Python; median of ``--rounds``)
    *Ours*: ``evaluate(df, rules, sample_size=10, key_columns=("order_id",))`` -- the default, which also
    collects up to 10 failing rows per failed rule (``ours``, the canonical side); and the same with
    ``sample_size=0`` (``ours_nosamples``: counts only, what the peers below compute).

    *P5 peer* -- the physical limit, same Spark (main venv, pyspark 4.2): the same logical work written by
    hand: ONE ``df.agg`` holding ``count(*)`` and ``sum(when(<failing>, 1))`` for the 18 row-level rules
    (plain column expressions, not our ``failure_condition``), plus, for the 2 unique rules, the same
    ``groupBy(key).count() > 1`` queries summed -- included, because a unique rule needs a shuffle no single
    aggregation can replace. So the P5 ratio is our overhead (rule parsing, expression checks, samples).
    Goal: ours <= 1.5x.

    *P6 peers* -- each in a subprocess in the peers venv ``.local/bench-peers/venv`` (``make bench-peers``:
    pyspark 3.5.7, ``benchmarks/peers-requirements.txt``; Deequ jar via ``build/maven/deequ-pom.xml``), with
    ours re-run in the same Spark session so both sides run on the same Spark (``quality_peers.py`` says
    why the peers cannot run on our pyspark 4.2):
    PyDeequ ``VerificationSuite`` with one ``Check`` of the same 20 constraints (isComplete, satisfies
    for the ranges and the expression, hasPattern, isContainedIn, isUnique/hasUniqueness, hasSize) and its
    metrics as JSON; it returns no failing rows. Goal: ours <= 1.0x.
    Great Expectations 1.x: ephemeral context, Spark data source, whole-dataframe batch, one suite of the
    same 20 expectations (ExpectColumnValuesToNotBeNull/ToBeBetween/ToMatchRegex/ToBeInSet/ToBeUnique,
    ExpectCompoundColumnsToBeUnique, ExpectTableRowCountToBeBetween,
    ExpectColumnPairValuesAToBeGreaterThanB for the expression), ``result_format`` BASIC with 10 unexpected
    values per expectation. Goal: ours <= 0.33x.
    The bare aggregation (P5's peer) is re-run there too: ``quality_floor_bare_agg_vs_<peer>`` is how close
    to each peer any Spark tool doing this work can get on that Spark.

Checked, not assumed: the failing-row counts of every rule must be equal across ours, the bare
aggregation, Deequ (``rows * (1 - metric)``) and GX (``unexpected_count``); a difference prints
``MISMATCH`` and the run exits 1.

Setup (not timed): the orders are generated once to ``.local/bench/quality_orders_<rows>.parquet`` (plus a
20,000-row warm-up file); every side runs once on the warm-up file first (JIT; the warm-up data is
repartitioned to the number of cores, so every core runs a task).

How to run (``make bench`` runs it with the others; the peers venv and the Deequ jar come from
``make bench-peers``)::

    set -a; . .local/airflow.env; set +a
    .venv/bin/python benchmarks/bench_quality.py [--rows 1000000] [--rounds 3] [--skip-peers]

The last lines are one ``bench <id>: ours=<s> peer=<s> ratio=<ours/peer>`` per comparison (median
seconds); ``quality_*`` ids use ours with samples (canonical), ``quality_nosamples_*`` ours without.
Peak RSS of each Python driver and its Spark JVM is printed. No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import peak_rss_mb, proc_peak_rss_mb, result_line, spark_session
from _quality_spec import (
    COUNTED,
    COUNTRIES,
    CURRENCIES,
    KEY_COLUMNS,
    RULES,
    STATUSES,
    mismatches,
)

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".local" / "bench"
PEERS_PY = ROOT / ".local" / "bench-peers" / "venv" / "bin" / "python"
GOAL_P5, GOAL_DEEQU, GOAL_GX = 1.5, 1.0, 0.33
WARMUP_ROWS = 20_000


# ------------------------------------------------------------------------------------------- data
def generate_orders(rows: int) -> Any:
    """``rows`` deterministic order lines with a few bad values for every rule (an Arrow table)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(5)
    idx = np.arange(rows)

    def some(fraction: float) -> Any:
        """Sorted distinct positions, about ``fraction`` of the rows (at least one)."""
        return np.sort(rng.choice(rows, size=max(1, int(rows * fraction)), replace=False))

    def pick(values: list[Any], n: int | None = None) -> Any:
        return np.array(values, dtype=object)[rng.integers(0, len(values), rows if n is None else n)]

    def padded(prefix: str, numbers: Any, width: int) -> Any:
        text = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
        return np.array(pc.binary_join_element_wise(prefix, text, "").to_pylist(), dtype=object)

    def nulls(fraction: float) -> Any:
        mask = np.zeros(rows, dtype=bool)
        mask[some(fraction)] = True
        return mask

    def corrupt(values: Any, fraction: float, bad_values: list[Any]) -> Any:
        where = some(fraction)
        values[where] = np.array(bad_values, dtype=object)[rng.integers(0, len(bad_values), len(where))]
        return values

    # keys: order_id with ~0.02 % copies of the previous id; (order_ref, line_no) with ~0.025 % copies
    order_id = idx.astype(np.int64) + 1
    dup = some(0.0002)
    dup = dup[dup > 0]
    order_id[dup] = order_id[dup - 1]
    ref_num, line_no = idx // 4 + 10_000_000, (idx % 4 + 1).astype(np.int32)
    dup = some(0.00025)
    dup = dup[dup > 0]
    ref_num[dup], line_no[dup] = ref_num[dup - 1], line_no[dup - 1]
    order_ref = padded("ORD-", ref_num, 8)
    bad = some(0.001)
    order_ref[bad] = pick(["ord-", "ORD-12345", "ORD_"], len(bad)) + padded("", ref_num[bad], 8)

    customer = rng.integers(1, 300_000, rows)
    email = padded("c", customer, 6) + pick(["@example.com", "@mail.example.org", "@post.example.de"])
    email = corrupt(email, 0.002, ["c1.example.com", "c2@example", "c 3@example.com", "@example.com"])
    sku = corrupt(padded("SKU-", rng.integers(0, 100_000, rows), 6), 0.001,
                  ["sku-001234", "SKU-12A456", "SKU 004711", "SKU-1234567"])
    phone = padded("+49 30 ", rng.integers(0, 10_000_000, rows), 7)

    status = corrupt(pick(STATUSES), 0.001, ["SHIPPED", "on-hold", "unknown"])
    currency = corrupt(pick(CURRENCIES[:4] * 3 + CURRENCIES[4:]), 0.0005, ["eur", "BTC", "€"])
    country = corrupt(pick(COUNTRIES), 0.001, ["Germany", "de", "XX", ""])

    quantity = corrupt(rng.integers(1, 21, rows).astype(object), 0.001, [0, -1, 1000]).astype(np.int32)
    price_cents = rng.integers(99, 250_000, rows)
    price_cents[some(0.0005)] *= -1
    amount_cents = price_cents * quantity
    amount_cents[some(0.0005)] = -500
    discount = np.where(rng.random(rows) < 0.7, 0.0, np.round(rng.random(rows) * 50, 1))
    discount = corrupt(discount.astype(object), 0.0005, [150.0, -5.0, 100.5]).astype(np.float64)
    weight = np.round(0.05 + rng.random(rows) * 30, 2)
    weight[some(0.0005)] = 750.0

    ordered = 1_735_689_600_000_000 + rng.integers(0, 180 * 86_400 * 10**6, rows)  # 2025-01-01 + 180 d (us)
    shipped = ordered + rng.integers(1_800 * 10**6, 10 * 86_400 * 10**6, rows)
    early = some(0.002)
    shipped[early] = ordered[early] - rng.integers(3_600 * 10**6, 3 * 86_400 * 10**6, len(early))

    def dec(cents: Any, precision: int) -> Any:
        whole = pa.array(cents).cast(pa.decimal128(20, 0))
        return pc.divide(whole, pa.scalar(100, pa.decimal128(3, 0))).cast(pa.decimal128(precision, 2))

    return pa.table({
        "order_id": pa.array(order_id),
        "order_ref": pa.array(order_ref, pa.string()),
        "line_no": pa.array(line_no),
        "customer_id": pa.array(customer, mask=nulls(0.005)),
        "email": pa.array(email, pa.string()),
        "phone": pa.array(phone, pa.string(), mask=nulls(0.02)),
        "sku": pa.array(sku, pa.string()),
        "status": pa.array(status, pa.string(), mask=nulls(0.001)),
        "currency": pa.array(currency, pa.string()),
        "country": pa.array(country, pa.string()),
        "quantity": pa.array(quantity),
        "unit_price": dec(price_cents, 12),
        "amount": pc.if_else(pa.array(nulls(0.002)), pa.scalar(None, pa.decimal128(14, 2)),
                             dec(amount_cents, 14)),
        "discount_pct": pa.array(discount),
        "weight_kg": pa.array(weight, mask=nulls(0.01)),
        "ordered_at": pa.array(ordered, pa.timestamp("us", tz="UTC"), mask=nulls(0.001)),
        "shipped_at": pa.array(shipped, pa.timestamp("us", tz="UTC"), mask=nulls(0.3)),
    })


def prepare_files(rows: int) -> tuple[Path, Path]:
    """The orders and the warm-up Parquet files (generated once, reused when present)."""
    import pyarrow.parquet as pq

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    data = BENCH_DIR / f"quality_orders_{rows}.parquet"
    warm = BENCH_DIR / f"quality_orders_{rows}_warmup.parquet"
    if not (data.exists() and warm.exists()):
        print(f"generating {rows:,} orders into {BENCH_DIR} (once; not timed) ...")
        t0 = time.perf_counter()
        table = generate_orders(rows)
        row_group = max(10_000, rows // 16)  # several row groups: Spark splits the file over both cores
        for path, part in ((data, table), (warm, table.slice(0, min(WARMUP_ROWS, rows)))):
            tmp = path.with_suffix(".tmp")
            pq.write_table(part, tmp, row_group_size=row_group)
            tmp.rename(path)
        print(f"  done in {time.perf_counter() - t0:.1f} s")
    print(f"data: {data.name} ({data.stat().st_size / 2**20:.0f} MiB, {rows:,} rows, 17 columns)")
    return data, warm


# ----------------------------------------------------------------------------------------- spark
def spark_conf() -> dict[str, str]:
    from airflow_etl_provider.hooks.spark import SparkSessionHook

    conf = SparkSessionHook(spark_conn_id="spark_default", app_name="bench-quality").resolve_conf()
    conf["spark.master"] = "local[2]"
    conf.setdefault("spark.ui.enabled", "false")
    conf.setdefault("spark.ui.showConsoleProgress", "false")
    return {k: str(v) for k, v in conf.items()}


# ------------------------------------------------------------------------------------------ sides
def run_ours(df: Any, sample_size: int) -> dict[str, int]:
    from airflow_etl_provider.hooks.quality import evaluate

    report = evaluate(df, RULES, sample_size=sample_size, key_columns=KEY_COLUMNS)
    counts = {r.name: int(r.failing_rows) for r in report.results if r.failing_rows is not None}
    counts["_rows"] = int(report.row_count or 0)
    counts["_samples"] = sum(len(v) for v in report.samples.values())
    counts["_queries"] = report.spark_queries
    return counts


def run_bare(df: Any) -> dict[str, int]:
    """P5 peer: one aggregation (count(*), the 18 row-level conditions) plus a groupBy per unique rule."""
    from pyspark.sql import functions as F

    conditions: dict[str, Any] = {}
    for rule in RULES:
        kind, col = rule["type"], F.col(rule.get("column") or "order_id")
        if kind == "not_null":
            conditions[rule["name"]] = col.isNull()
        elif kind == "range":  # NULL compares to NULL: not counted by sum(when(...))
            conditions[rule["name"]] = (col < rule["min"]) | (col > rule["max"])
        elif kind == "regex":
            conditions[rule["name"]] = ~col.rlike(rule["pattern"])
        elif kind == "allowed_values":
            conditions[rule["name"]] = ~col.isin(list(rule["values"]))
        elif kind == "expression":
            conditions[rule["name"]] = ~F.expr(rule["expression"])
    sums = [F.sum(F.when(cond, 1)).alias(f"r{i}") for i, cond in enumerate(conditions.values())]
    row = df.agg(F.count(F.lit(1)).alias("_rows"), *sums).collect()[0]
    counts = {name: int(row[f"r{i}"] or 0) for i, name in enumerate(conditions)}
    counts["_rows"] = int(row["_rows"])
    for rule in RULES:
        if rule["type"] == "unique":
            keys = rule["columns"]
            not_null = F.lit(True)
            for key in keys:
                not_null = not_null & F.col(key).isNotNull()
            dup = (df.where(not_null).groupBy(*keys).count().where(F.col("count") > 1)
                   .agg(F.sum("count").alias("n")).collect()[0]["n"])
            counts[rule["name"]] = int(dup or 0)
    return counts


def run_peer(tool: str, data: Path, warm: Path, rounds: int, conf: dict[str, str]) -> dict[str, Any]:
    """Run ``quality_peers.py --tool <tool>`` in the peers venv; its JSON line, or ``{"error": ...}``."""
    log = BENCH_DIR / f"quality_peers_{tool}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_HOME"))}
    env.update({"PYSPARK_PYTHON": str(PEERS_PY), "PYSPARK_DRIVER_PYTHON": str(PEERS_PY),
                "SPARK_VERSION": "3.5", "GX_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"})
    peer_conf = {k: v for k, v in conf.items() if k not in ("spark.jars", "spark.master", "spark.app.name")}
    cmd = [str(PEERS_PY), str(Path(__file__).with_name("quality_peers.py")), "--tool", tool,
           "--parquet", str(data), "--warmup", str(warm), "--rounds", str(rounds),
           "--conf", json.dumps(peer_conf)]
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    for line in log.read_text().splitlines():
        if line.startswith(("  ", "[")):  # its progress lines (Spark's and the peers' warnings: the log)
            print(line)
    for line in proc.stdout.splitlines():
        if line.startswith("QUALITY_PEERS_JSON "):
            return json.loads(line.split(" ", 1)[1])
    tail = "\n".join(log.read_text().splitlines()[-15:])
    return {"error": f"exit {proc.returncode}; last lines of {log}:\n{tail}"}


def warm_and_time(spark: Any, sides: dict[str, Callable[[Any], dict[str, int]]], warm: str, data: str,
                  rounds: int, log: Callable[[str], None]) -> tuple[dict[str, list[float]], dict[str, int],
                                                                dict[str, dict[str, int]]]:
    """Run every side once on ``warm`` (not timed), then ``rounds`` timed rounds on ``data``, rotating the
    order per round; returns the seconds per side, its Spark jobs per run, and its last answer. Shared by
    this file and ``quality_peers.py`` (which imports it in the peers venv: this module imports no pyspark
    and no Airflow at the top)."""
    sc = spark.sparkContext
    for label, fn in sides.items():
        t0 = time.perf_counter()
        # as many partitions as cores, so every core's task runs (JIT) before the timed rounds
        fn(spark.read.parquet(warm).repartition(sc.defaultParallelism))
        log(f"  warm-up {label}: {time.perf_counter() - t0:.2f} s")
    times: dict[str, list[float]] = {k: [] for k in sides}
    jobs: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    order = list(sides)
    for rnd in range(rounds):
        for label in order[rnd % len(order):] + order[:rnd % len(order)]:  # rotate the order per round
            group = f"{label}-{rnd}"
            sc.setJobGroup(group, group)
            t0 = time.perf_counter()
            counts[label] = sides[label](spark.read.parquet(data))
            times[label].append(time.perf_counter() - t0)
            jobs[label] = len(sc.statusTracker().getJobIdsForGroup(group))
            log(f"  round {rnd + 1} {label}: {times[label][-1]:.3f} s ({jobs[label]} Spark jobs)")
    sc.setJobGroup("", "")
    return times, jobs, counts


def median(values: list[float]) -> float:
    return statistics.median(values)


def describe(counts: dict[str, int]) -> str:
    extra = {k: v for k, v in counts.items() if k.startswith("_")}
    return ", ".join(f"{k[1:]}={v:,}" for k, v in extra.items())


def compare(label: str, reference: dict[str, int], other: dict[str, int]) -> bool:
    bad = mismatches(reference, other)
    if reference.get("_rows") != other.get("_rows"):
        bad.append(f"row count: {reference.get('_rows')} vs {other.get('_rows')}")
    if bad:
        print(f"MISMATCH ours vs {label}: " + "; ".join(bad))
        return False
    print(f"  verified: ours and {label} agree on the failing rows of all {len(COUNTED)} counted rules "
          f"and the row count")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side; the median is reported")
    parser.add_argument("--skip-peers", action="store_true", help="only P5 (no peers venv needed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("airflow_etl_provider").setLevel(logging.WARNING)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")

    data, warm = prepare_files(args.rows)
    conf = spark_conf()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = spark_session(conf)
    sc = spark.sparkContext
    print(f"\nP5 (main venv): Spark {spark.version} {sc.master}, "
          f"{spark.read.parquet(str(data)).rdd.getNumPartitions()} input partitions; warm-up (not timed) ...")
    sides = {"ours": lambda df: run_ours(df, 10), "ours_nosamples": lambda df: run_ours(df, 0),
             "bare": run_bare}
    times, jobs, counts = warm_and_time(spark, sides, str(warm), str(data), args.rounds, print)
    ok = True
    ours = counts["ours"]
    print(f"  ours: {describe(ours)}; ours_nosamples: {describe(counts['ours_nosamples'])}")
    print("  failing rows per rule: " + ", ".join(f"{n}={ours[n]:,}" for n in COUNTED))
    if any(ours[n] == 0 for n in COUNTED):
        print("MISMATCH: some rule has no failing row in the data (the benchmark wants failures everywhere)")
        ok = False
    ok &= compare("ours_nosamples", ours, counts["ours_nosamples"])
    ok &= compare("the bare aggregation", ours, counts["bare"])
    proc = getattr(getattr(sc, "_gateway", None), "proc", None)
    jvm = proc_peak_rss_mb(proc.pid) if proc is not None else None
    rss = {"main": (proc_peak_rss_mb(os.getpid()) or peak_rss_mb(), jvm)}
    spark.stop()

    med = {k: median(v) for k, v in times.items()}
    lines = [result_line("quality_vs_bare_agg", med["ours"], med["bare"]),
             result_line("quality_nosamples_vs_bare_agg", med["ours_nosamples"], med["bare"])]
    peers: dict[str, dict[str, Any]] = {}
    if args.skip_peers:
        print("\nP6 skipped (--skip-peers)")
    elif not PEERS_PY.exists():
        print(f"\nP6 skipped: no peers venv at {PEERS_PY}: run `make bench-peers`")
        ok = False
    else:
        for tool, title in (("deequ", "PyDeequ VerificationSuite"), ("gx", "Great Expectations")):
            print(f"\nP6 {title} (peers venv, subprocess) ...")
            out = run_peer(tool, data, warm, args.rounds, conf)
            if "error" in out:
                print(f"FAIL: {tool}: {out['error']}")
                ok = False
                continue
            peers[tool] = out
            print(f"  versions: {', '.join(f'{k} {v}' for k, v in out['versions'].items())}")
            print(f"  jobs per run: {out['jobs']}; peer: {describe(out['counts']['peer'])}")
            ok &= compare(f"{tool} (ours on Spark {out['versions']['spark']})", out["counts"]["ours"],
                          out["counts"]["peer"])
            ok &= compare(f"ours on Spark {spark.version}", ours, out["counts"]["ours"])
            ok &= compare(f"the bare aggregation on Spark {out['versions']['spark']}", out["counts"]["ours"],
                          out["counts"]["bare"])
            rss[tool] = (out["rss_mb"]["driver"], out["rss_mb"]["jvm"])
            pmed = {k: median(v) for k, v in out["times"].items()}
            lines += [result_line(f"quality_vs_{tool}", pmed["ours"], pmed["peer"]),
                      result_line(f"quality_nosamples_vs_{tool}", pmed["ours_nosamples"], pmed["peer"]),
                      result_line(f"quality_floor_bare_agg_vs_{tool}", pmed["bare"], pmed["peer"])]

    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    print("\npeak RSS (MiB): " + "; ".join(f"{name}: Python driver {mib(d)}, Spark JVM {mib(j)}"
                                          for name, (d, j) in rss.items()))
    print(f"summary for {args.rows:,} rows, median of {args.rounds} rounds: ours {med['ours']:.2f} s "
          f"({med['ours_nosamples']:.2f} s without samples), bare aggregation {med['bare']:.2f} s "
          f"[P5 goal <= {GOAL_P5}x: {'ok' if med['ours'] / med['bare'] <= GOAL_P5 else 'MISSED'}: "
          f"{med['ours'] / med['bare']:.2f}x]")
    for tool, goal in (("deequ", GOAL_DEEQU), ("gx", GOAL_GX)):
        if tool in peers:
            pmed = {k: median(v) for k, v in peers[tool]["times"].items()}
            ratio = pmed["ours"] / pmed["peer"]
            print(f"  P6 {tool} on Spark {peers[tool]['versions']['spark']}: ours {pmed['ours']:.2f} s "
                  f"({pmed['ours_nosamples']:.2f} s without samples), peer {pmed['peer']:.2f} s "
                  f"[goal <= {goal}x: {'ok' if ratio <= goal else 'MISSED'}: {ratio:.2f}x; without samples "
                  f"{pmed['ours_nosamples'] / pmed['peer']:.2f}x; the bare aggregation (the floor) "
                  f"{pmed['bare']:.2f} s = {pmed['bare'] / pmed['peer']:.2f}x]")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    for line in lines:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
