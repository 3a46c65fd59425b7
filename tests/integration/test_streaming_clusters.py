"""StreamingWatermarkOperator on the ways users scale out: the local standalone cluster (master + worker) and the
Spark Connect server, each run from its own driver process (spark_cluster_stream.py), as test_spark_clusters.py
does for the other operators.

Both run their Python workers in ``.local/executor-venv`` (no Airflow). On the standalone cluster the
``foreachBatch`` function runs in the driver and the dead-letter publisher (``mapInArrow``) on the executors; on
Spark Connect the ``foreachBatch`` function itself runs in a Python process of the server, so the whole
micro-batch (``executor/streaming.py``) must work without Airflow there, and that Python needs pyspark's
Spark Connect client (``pyspark[connect]``: pandas, grpcio, ...), as the worker opens a Connect session back to
the server for the batch's DataFrame.

Two runs over a 3-partition topic, with on-time and late events, as in test_streaming_operator.py: the sink equals
the reference aggregation, the file DLQ holds exactly the reference's late (partition, offset, window) pairs, and
the second run read only the data produced after the first one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_etl_provider.core.streaming import WindowSpec
from tests.integration.test_streaming_operator import _event, _late_letters, _produce, _reference, _sink, _us

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("spark_cluster_stream.py")
SERVER_LOG = ROOT / ".local/logs/spark-connect.log"
TUMBLING = {"type": "tumbling", "duration": "5 minutes"}

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _start(service: str) -> None:
    subprocess.run([str(ROOT / "scripts/stack.sh"), "up", service], check=True, timeout=240)


class _Driver:
    """spark_cluster_stream.py running the operator twice on one connection (one JVM, a session per run)."""

    def __init__(self, conn_id: str, topic: str, table: str, workdir: Path) -> None:
        self.conn_id, self.stderr = conn_id, workdir / "driver-stderr.log"
        self.connect = conn_id.startswith("spark_connect")
        self.log_start = self._server_log_size()
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(DRIVER), conn_id, topic, table, str(workdir), json.dumps(TUMBLING), "2"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=os.environ)

    def _server_log_size(self) -> int | None:
        return SERVER_LOG.stat().st_size if self.connect else None

    def result(self, run: int) -> dict[str, Any]:
        """The result (XCom) of run ``run``: the next ``RESULT`` line, or a failure with what went wrong."""
        assert self.proc.stdout is not None
        line = next((ln for ln in self.proc.stdout if ln.startswith("RESULT ")), None)
        assert line is not None, self._failure(run)
        return json.loads(line[len("RESULT "):])

    def next_run(self) -> None:
        assert self.proc.stdin is not None
        self.log_start = self._server_log_size()
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # a driver still waiting for its next run ends
            self.proc.wait(timeout=60)
        finally:
            self.proc.kill()  # a no-op once it has exited

    def _failure(self, run: int) -> str:
        """The driver's error without the JVM frames and, on Spark Connect, what the server's Python processes
        (the foreachBatch worker among them) said during the run."""
        self.proc.wait(timeout=60)
        lines = self.stderr.read_text(errors="replace").splitlines()
        driver = "\n".join(ln for ln in lines if not ln.lstrip().startswith("at "))[-3000:]
        message = (f"run {run} of the StreamingWatermarkOperator on {self.conn_id!r} failed (driver exit code "
                   f"{self.proc.returncode}). The driver's stderr ({self.stderr}) ends with:\n{driver}")
        server = "" if self.log_start is None else SERVER_LOG.read_text(errors="replace")[self.log_start:]
        python = [ln for ln in server.splitlines() if not ln.lstrip().startswith("at ") and any(
            k in ln for k in ("Python", "python", "ForeachBatch", "PACKAGE_NOT_INSTALLED", "Skipping doctests", "Error"))]
        return message + (f"\n\nThe Spark Connect server's log ({SERVER_LOG}) during the run:\n"
                          + "\n".join(python[-25:]) if self.connect else "")


def _spans(topic: str, placed: list[tuple[int, int, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """The Kafka offsets a run must have read: per partition, the first and last offset produced for it."""
    spans: dict[str, dict[str, int]] = {}
    for partition, offset, _ev in placed:
        span = spans.setdefault(f"{topic}:{partition}", {"start": offset, "end": offset})
        span["start"], span["end"] = min(span["start"], offset), max(span["end"], offset)
    return spans


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("service", "conn_id"), [("spark-standalone", "spark_standalone"),
                                                  ("spark-connect", "spark_connect_default")])
def test_streaming_operator_on_a_cluster(service: str, conn_id: str, kafka_bootstrap: str, unique: str,
                                         tmp_path: Path) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from confluent_kafka.admin import AdminClient, NewTopic

    _start(service)
    topic, table = f"stream-cluster-{unique}", f"public.stream_cluster_{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    # run 1: 0..24 minutes, out of order within the 10-minute lateness
    first = [_event(i, "ab"[i % 2], m, f"{i}.50") for i, m in enumerate([3, 1, 7, 12, 9, 16, 14, 22, 19, 24])]
    # run 2: after run 1 the watermark is 24 - 10 = 14 minutes: events in windows ending at or before it are late
    second = [_event(100 + i, "ab"[i % 2], m, f"{i}.25") for i, m in enumerate([2, 8, 13, 16, 27, 31, 26, 40])]
    pg = PostgresHook(postgres_conn_id="postgres_default")
    try:
        placed1 = _produce(kafka_bootstrap, topic, first)
        driver = _Driver(conn_id, topic, table, tmp_path)
        try:
            r1 = driver.result(1)
            placed2 = _produce(kafka_bootstrap, topic, second)
            driver.next_run()
            r2 = driver.result(2)
        finally:
            driver.close()
        final, late, wm = _reference([placed1, placed2], WindowSpec.from_config(TUMBLING))

        # each run read exactly what was produced before it, in one batch: the second one only the new data
        assert (r1["batches"], r1["input_rows"], r1["offsets"]) == (1, 10, _spans(topic, placed1))
        assert (r2["batches"], r2["input_rows"], r2["offsets"]) == (1, 8, _spans(topic, placed2))
        assert r2["epoch"] == r1["epoch"]  # the same checkpoint, found again by the second run
        assert r2["watermark"]["before"] == r1["watermark"]["after"]
        assert r2["watermark"]["after"] == datetime.fromtimestamp(wm / 1e6, tz=UTC).isoformat()
        assert (r1["late_rows"], r2["late_rows"]) == (0, len(late))
        assert len(late) > 0
        assert r1["window_pairs"] + r2["window_pairs"] == r1["aggregated_rows"] + r2["aggregated_rows"] + len(late)

        sink = _sink(table)
        assert set(sink) == set(final)
        for key, events in final.items():
            amounts = [Decimal(e["amount"]) for e in events]
            s_sum, s_avg, s_min, s_max, s_count, s_distinct = sink[key]
            assert (s_sum, s_min, s_max, s_count) == (sum(amounts), min(amounts), max(amounts), len(events)), key
            assert abs(Decimal(s_avg) - sum(amounts, Decimal(0)) / len(amounts)) < Decimal("1e-6"), key
            assert s_distinct == len({e["order_id"] for e in events}), key  # HLL is exact at this size

        letters = _late_letters(tmp_path)
        by_position = {(e["original_location"]["partition"], e["original_location"]["offset"],
                        _us(datetime.fromisoformat(e["context"]["window"].split("/")[0]).replace(tzinfo=UTC)))
                       for e in letters}
        assert by_position == late  # exactly the reference's late (partition, offset, window) pairs ...
        assert len(letters) == len(late)  # ... each once
        assert {e["stage"] for e in letters} == {"late_data"}
        assert {e["original_location"]["topic"] for e in letters} == {topic}
    finally:
        pg.run(f"drop table if exists {table}; drop table if exists {table}__etl_state")
