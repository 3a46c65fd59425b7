"""A task process that dies hard at a chosen moment of one micro-batch, run by test_streaming_crash.py.

It builds the same StreamingWatermarkOperator as test_streaming_operator.py and calls ``execute`` exactly as a
worker would. Only here, never in the product, the StreamBatchProcessor (run by Spark's ``foreachBatch`` in
this driver process) and the dead-letter publisher (run in Spark's Python workers, or here for a few rows) are wrapped so that, when
the batch given by ``--batch`` reaches ``--point``, the whole task dies with SIGKILL sent to its process group
(this Python driver and its Spark JVM at once, like a worker killed by the OOM killer or a lost node; nothing
gets to clean up, nothing after that moment runs). Points:

* ``mid_batch``: inside ``_merge_and_write``, after the window state and the sink rows are written in the
  batch's PostgreSQL transaction, before it commits;
* ``mid_dlq``: during the late rows' dead-letter write: the first Spark partition with late rows publishes its
  envelopes, then kills the task while any other partitions have published nothing (a batch with few late rows
  publishes them from the batch function's own process, here the driver);
* ``after_dlq``: right after every late row of the batch was published, before the PostgreSQL commit;
* ``after_commit``: after ``process()`` committed the batch (window state, sink, ledger) and before it returns
  to Spark, so Spark's commit log for the batch is never written.

Before dying it writes ``--marker`` (JSON: the point, the batch, what had happened) so the test can check the
crash happened where it was meant to. A run in which the batch never reaches the point exits with code 3.

argv: --topic --table --tmp --window (JSON) --point --batch --marker --try-number
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: the shared test helpers

from airflow_etl_provider.executor import streaming as executor_streaming  # noqa: E402
from airflow_etl_provider.executor.streaming import StreamBatchProcessor  # noqa: E402
from tests.integration.test_streaming_operator import _operator  # noqa: E402

POINTS = ("mid_batch", "mid_dlq", "after_dlq", "after_commit")


def die(marker: str, pgid: int, **facts: Any) -> None:
    """Record where the task dies, then SIGKILL its process group (the driver and its JVM)."""
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, json.dumps(facts).encode())
    os.fsync(fd)
    os.close(fd)
    os.killpg(pgid, signal.SIGKILL)
    os._exit(137)  # not reached


def install(point: str, batch: int, marker: str) -> None:
    pgid = os.getpgid(0)  # the test starts this process in a session of its own: only its driver and JVM

    if point == "mid_batch":
        run_batch, merge_and_write = StreamBatchProcessor._process, StreamBatchProcessor._merge_and_write
        current: dict[str, int] = {}

        def _process(self: StreamBatchProcessor, df: Any, batch_id: int, watermark_before: int, cur: Any) -> Any:
            current["batch"] = batch_id
            return run_batch(self, df, batch_id, watermark_before, cur)

        def _merge_and_write(self: StreamBatchProcessor, cur: Any, partials: Any, watermark_after: int,
                             df: Any) -> int:
            written = merge_and_write(self, cur, partials, watermark_after, df)
            if current["batch"] == batch:  # state and sink rows written, the transaction still open
                die(marker, pgid, point=point, batch=batch, output_rows=written,
                    transaction=cur.connection.info.transaction_status.name)
            return written

        StreamBatchProcessor._process = _process  # type: ignore[method-assign]
        StreamBatchProcessor._merge_and_write = _merge_and_write  # type: ignore[method-assign]

    elif point == "after_dlq":
        dead_letter = StreamBatchProcessor._dead_letter

        def _dead_letter(self: StreamBatchProcessor, rows: Any, batch_id: int, watermark_us: int, *,
                         late: bool, **kwargs: Any) -> None:
            dead_letter(self, rows, batch_id, watermark_us, late=late, **kwargs)
            if late and batch_id == batch:
                die(marker, pgid, point=point, batch=batch_id, late_rows=rows.count())

        StreamBatchProcessor._dead_letter = _dead_letter  # type: ignore[method-assign]

    elif point == "after_commit":
        process = StreamBatchProcessor.process

        def _process(self: StreamBatchProcessor, df: Any, batch_id: int) -> Any:
            result = process(self, df, batch_id)  # the PostgreSQL transaction has committed on return
            if batch_id == batch:
                die(marker, pgid, point=point, batch=batch_id, replayed=result.replayed,
                    output_rows=result.output_rows, late_rows=result.late_pairs)
            return result

        StreamBatchProcessor.process = _process  # type: ignore[method-assign]

    elif point == "mid_dlq":
        publisher = executor_streaming.partition_publisher
        claim = f"{marker}.claim"

        def partition_publisher(sink: Any, **kwargs: Any) -> Any:
            inner = publisher(sink, **kwargs)
            if kwargs["stage"] != "late_data" or int(kwargs["batch_prefix"].rsplit("-b", 1)[1]) != batch:
                return inner

            def publish_then_die(batches: Any) -> Any:  # in a Spark Python worker, or in this driver (few rows)
                import time

                import pyarrow as pa
                from pyspark import TaskContext

                rows = [b for b in batches if b.num_rows]
                if not rows:
                    yield from inner(iter(()))
                    return
                try:
                    fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                except FileExistsError:  # another partition publishes and kills the task: publish nothing
                    time.sleep(600)
                    raise RuntimeError("the task was not killed") from None
                os.close(fd)
                statuses = list(inner(iter(rows)))
                delivered = sum(s["delivered"] for st in statuses for s in st.to_pylist())
                keys = pa.Table.from_batches(rows).select(["_etl_partition", "_etl_offset"]).to_pylist()
                ctx = TaskContext.get()  # None when the batch function publishes a few late rows itself
                die(marker, pgid, point=point, batch=batch, spark_partition=ctx.partitionId() if ctx else None,
                    delivered=delivered, published=[[k["_etl_partition"], k["_etl_offset"]] for k in keys])
                yield from statuses  # not reached

            return publish_then_die

        executor_streaming.partition_publisher = partition_publisher
    else:
        raise SystemExit(f"unknown crash point {point!r}: one of {POINTS}")


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--topic", "--table", "--tmp", "--window", "--point", "--marker"):
        parser.add_argument(name, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--try-number", type=int, required=True)
    args = parser.parse_args()
    install(args.point, args.batch, args.marker)
    op = _operator(args.topic, Path(args.tmp), args.table, json.loads(args.window))
    ti = SimpleNamespace(dag_id="streaming_crash", task_id=op.task_id, run_id="crash-test",
                         try_number=args.try_number)  # each try of the task dead-letters under its own try=N
    result = op.execute(context={"ti": ti})
    print("NOT KILLED: the run ended without reaching the crash point " + json.dumps(result, default=str), flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()
