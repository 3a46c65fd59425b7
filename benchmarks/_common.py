"""Tiny helpers shared by the benchmarks: peak RSS, percentiles, the local stack's addresses, the result line."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of ``values``; ``pct`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def kafka_bootstrap() -> str:
    """The local stack's broker: the ``kafka_default`` connection's bootstrap.servers, else the stack port."""
    conn = os.environ.get("AIRFLOW_CONN_KAFKA_DEFAULT")
    if conn:
        servers = json.loads(conn).get("extra", {}).get("bootstrap.servers")
        if servers:
            return str(servers)
    port = os.environ.get("ETL_STACK_KAFKA_PORT")
    if not port:
        raise SystemExit("the local stack's env is not loaded: run `set -a; . .local/airflow.env; set +a` first")
    return f"127.0.0.1:{port}"


def settle(max_wait_s: float = 60.0, idle_share: float = 0.85) -> str:
    """Start from a quiet machine: flush the page cache's dirty pages (a previous run's broker writes would
    otherwise be written back by the kernel during this run's measurements), then wait until the CPUs are
    ``idle_share`` idle over a second (at most ``max_wait_s``; Linux ``/proc/stat``). Returns what it did."""
    import time

    t0 = time.monotonic()
    os.sync()
    synced = time.monotonic() - t0
    idle = math.nan
    while time.monotonic() - t0 < max_wait_s:
        with open("/proc/stat") as fh:
            before = [int(v) for v in fh.readline().split()[1:]]
        time.sleep(1.0)
        with open("/proc/stat") as fh:
            after = [int(v) for v in fh.readline().split()[1:]]
        delta = [a - b for a, b in zip(after, before, strict=True)]
        idle = (delta[3] + delta[4]) / max(1, sum(delta))  # idle + iowait
        if idle >= idle_share:
            break
    return f"sync {synced:.1f} s, then {idle:.0%} idle after {time.monotonic() - t0:.1f} s"


CANARY_LOOPS = 3_000_000


def cpu_canary(repeats: int = 5) -> float:
    """Seconds a fixed single-threaded workload takes (a 3M-iteration Python loop, the median of ``repeats``): how
    fast this machine is right now. On this shared 2-core VM a loop like it took up to 1.8x longer ten minutes
    later with nothing of ours running (the host's load shows in no ``/proc/stat`` steal), and the DLQ
    publisher's CPU per envelope moved with it (6.3-9.2 -> 9.8-11.4 us): printed next to an absolute rate, it
    tells the machine's state from the code's."""
    import statistics
    import time

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for i in range(CANARY_LOOPS):
            total += i
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def result_line(bench_id: str, ours_s: float, peer_s: float) -> str:
    """The one machine-readable line per comparison: ``bench <id>: ours=<s> peer=<s> ratio=<ours/peer>``."""
    return f"bench {bench_id}: ours={ours_s:.3f} peer={peer_s:.3f} ratio={ours_s / peer_s:.4f}"


def proc_peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (``VmHWM``) of another process, in MiB; ``None`` when it cannot be read
    (not Linux, gone, or not ours)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def postgres_port() -> str:
    """The local stack's PostgreSQL port (for messages only; connections come from ``postgres_default``)."""
    port = os.environ.get("ETL_STACK_PG_PORT")
    if not port or "AIRFLOW_CONN_POSTGRES_DEFAULT" not in os.environ:
        raise SystemExit("the local stack's env is not loaded: run `set -a; . .local/airflow.env; set +a` first")
    return port


def spark_session(conf: dict[str, str]) -> Any:
    """``getOrCreate`` a SparkSession with ``conf``, Spark's own logging at ERROR."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def local_spark_session(app_name: str) -> Any:
    """The ``spark_default`` connection's session (its jars and conf) on ``local[2]``, UI and progress bar off:
    what every benchmark compares on."""
    from airflow_etl_provider.hooks.spark import SparkSessionHook

    conf = SparkSessionHook(spark_conn_id="spark_default", app_name=app_name).resolve_conf()
    conf["spark.master"] = "local[2]"
    conf.setdefault("spark.ui.enabled", "false")
    conf.setdefault("spark.ui.showConsoleProgress", "false")
    return spark_session(conf)


# ------------------------------------------------------------------------------------------ Kafka
def kafka_admin(bootstrap: str) -> Any:
    """An admin client (log_level 4: no "Purging unserved events" info line when it goes)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Delete the benchmark's topics; a failure only prints (cleanup)."""
    if not topics:
        return
    client = kafka_admin(bootstrap)  # kept alive until the futures are done
    for topic, future in client.delete_topics(list(topics)).items():
        try:
            future.result(30)
        except Exception as err:  # cleanup only
            print(f"  (could not delete topic {topic}: {err})")


def topic_message_count(bootstrap: str, topic: str) -> int:
    """Messages in ``topic`` by watermark offsets (high - low, summed over partitions)."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{uuid.uuid4().hex[:8]}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()
