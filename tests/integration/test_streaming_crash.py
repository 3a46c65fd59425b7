"""StreamingWatermarkOperator: exactly once when the task is killed at any moment of a micro-batch.

The real operator runs in a task process of its own (``streaming_crash_job.py``) that SIGKILLs itself (its
Python driver and Spark JVM together) at a chosen point of a chosen batch: mid-batch (state and sink rows
written, PostgreSQL transaction open), during the dead-letter write (one Spark partition's late rows out, the
others not), after the whole dead-letter write (before the commit), and after the PostgreSQL commit (before
Spark's commit log). Each crash is followed by more runs on the same checkpoint and topic, some crashing again
while they replay. Every run is a new Airflow try (the file DLQ writes each try under its own ``try=N``), so a
replay's re-sent dead letters land next to the first ones and must carry the same ``envelope_id``.

After every step the sink, the open window state, the ledger and the checkpoint's commit log are checked, and
at the end: the sink equals the pure reference of test_streaming_operator.py on the on-time rows, each window
once; every late (partition, offset, window) is in the DLQ at least once, exactly once by ``envelope_id``, and
re-sent only by the batches that were replayed after reaching their dead-letter write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_etl_provider.core.streaming import WindowSpec
from tests.integration.test_streaming_operator import (
    _event,
    _late_letters,
    _operator,
    _produce,
    _reference,
    _sink,
    _us,
)

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

JOB = Path(__file__).with_name("streaming_crash_job.py")
REPO = Path(__file__).resolve().parents[2]
TUMBLING = {"type": "tumbling", "duration": "5 minutes"}

# batch 0: 0..24 minutes, out of order within the lateness: the watermark moves to 14 minutes
A = [(3, "3.10"), (1, "1.20"), (7, "7.30"), (12, "12.40"), (9, "9.50"), (16, "16.60"), (14, "14.70"), (22, "22.80"),
     (19, "19.90"), (24, "24.05")]
# batch 1 (judged with 14 min): 2 and 8 are late (Kafka partitions 0 and 1); the watermark moves to 30 minutes
B = [(2, "2.25"), (8, "8.25"), (13, "13.25"), (16, "16.25"), (27, "27.25"), (31, "31.25"), (26, "26.25"), (40, "40.25")]
# batch 2 (judged with 30 min): 5, 21, 12, 29 ([25, 30) ends at 30) and 3 are late, on all 3 partitions
C = [(5, "5.75"), (21, "21.75"), (12, "12.75"), (33, "33.75"), (29, "29.75"), (44, "44.75"), (3, "3.75"), (50, "50.75")]


class Stream:
    """One stream under test: its topic, sink table, checkpoint and DLQ, and the runs of its task."""

    def __init__(self, kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from confluent_kafka.admin import AdminClient, NewTopic

        self.bootstrap, self.tmp = kafka_bootstrap, tmp_path
        self.topic, self.table = f"stream-crash-{unique}", f"public.stream_crash_{unique}"
        self.pipeline = f"test.{self.table}"
        self.pg = PostgresHook(postgres_conn_id="postgres_default")
        self.spec = WindowSpec.from_config(TUMBLING)
        self.batches: list[list[tuple[int, int, dict[str, Any]]]] = []
        self.tries = 0
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(self.topic, 3, 1)])[self.topic].result(30)

    def produce(self, events: list[tuple[float, str]], first_id: int) -> None:
        """Send the events of the next micro-batch (every run reads all that arrived in one batch)."""
        self.batches.append(_produce(self.bootstrap, self.topic, [
            _event(first_id + i, "ab"[i % 2], minutes, amount) for i, (minutes, amount) in enumerate(events)]))

    def run(self) -> dict[str, Any]:
        """A normal try of the task, in this process (on the test session's SparkSession)."""
        self.tries += 1
        ti = SimpleNamespace(dag_id="streaming_crash", task_id="orders_per_5min", run_id="crash-test",
                             try_number=self.tries)
        return _operator(self.topic, self.tmp, self.table, TUMBLING).execute(context={"ti": ti})

    def crash(self, point: str, batch: int) -> dict[str, Any]:
        """A try of the task in its own process, killed at ``point`` of ``batch``: what it had done then."""
        self.tries += 1
        marker, log = self.tmp / f"crash-{self.tries}.json", self.tmp / f"crash-{self.tries}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(JOB), "--topic", self.topic, "--table", self.table, "--tmp", str(self.tmp),
                 "--window", json.dumps(TUMBLING), "--point", point, "--batch", str(batch), "--marker", str(marker),
                 "--try-number", str(self.tries)],
                env=dict(os.environ), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=300)
            finally:
                _kill_group(proc)
        tail = log.read_text(errors="replace")[-4000:]
        assert proc.returncode == -9, f"the {point} task was not killed (exit {proc.returncode}):\n{tail}"
        self._wait_until_dead(proc.pid)
        return json.loads(marker.read_text())

    def _wait_until_dead(self, pgid: int) -> None:
        """Wait for the killed task's JVM to be gone and PostgreSQL to have ended its sessions (the advisory
        lock and the open transaction), as before a real retry."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_group_alive(pgid) or self._sessions()):
            time.sleep(0.2)
        assert not _group_alive(pgid) and self._sessions() == 0, "the killed task's processes or sessions remain"

    def _sessions(self) -> int:
        return int(self.pg.get_first("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                                     parameters=(f"airflow-etl stream {self.pipeline}%",))[0])

    # ---------------------------------------------------------------------------------------- state
    def ledger(self) -> list[int]:
        return [r[0] for r in self.pg.get_records(
            "SELECT batch_id FROM public.etl_stream_ledger WHERE pipeline = %s ORDER BY batch_id", parameters=(self.pipeline,))]

    def sink(self) -> dict[tuple[str, int, int], tuple[Any, ...]]:
        """The sink's windows (none while no batch has created the table)."""
        exists = self.pg.get_first("SELECT to_regclass(%s)", parameters=(self.table,))[0] is not None
        return _sink(self.table) if exists else {}

    def sink_rows(self) -> tuple[int, int]:
        """(rows, distinct window keys) of the sink."""
        n, keys = self.pg.get_first(f"SELECT count(*), count(DISTINCT (customer, window_start, window_end)) "
                                    f"FROM {self.table}")
        return int(n), int(keys)

    def open_windows(self) -> dict[tuple[str, int, int], int]:
        """The window state: (customer, start, end) -> the merged count of its rows."""
        rows = self.pg.get_records(f"SELECT group_key, window_start_us, window_end_us, partials FROM "
                                   f"{self.table}__etl_state WHERE pipeline = %s", parameters=(self.pipeline,))
        return {(json.loads(r[0])[0]["v"], int(r[1]), int(r[2])): int(r[3]["count__n"]["v"]) for r in rows}

    def commits(self) -> set[int]:
        """The batches in Spark's commit log (offsets/N without commits/N: Spark runs batch N again)."""
        return {int(f.name) for f in (self.tmp / "checkpoint" / "commits").glob("[0-9]*")}

    def letters(self) -> list[tuple[tuple[int, int, int], str]]:
        """Every dead letter on disk, every try: ((partition, offset, window start), envelope_id)."""
        letters = _late_letters(self.tmp) if (self.tmp / "dlq").exists() else []
        assert {e["stage"] for e in letters} <= {"late_data"}
        return [((e["original_location"]["partition"], e["original_location"]["offset"],
                  _us(datetime.fromisoformat(e["context"]["window"].split("/")[0]).replace(tzinfo=UTC))),
                 e["envelope_id"]) for e in letters]

    # ------------------------------------------------------------------------------------ reference
    def reference(self, upto: int) -> tuple[dict, dict, set]:
        """For batches 0..upto-1: (final windows -> events, open windows -> row count, late pairs)."""
        final, late, _wm = _reference(self.batches[:upto], self.spec)
        every = _reference(self.batches[:upto], self.spec, only_final=False)[0]
        return final, {k: len(v) for k, v in every.items() if k not in final}, late

    def assert_exactly(self, upto: int, step: str) -> None:
        """Sink and window state equal the reference of batches 0..upto-1, each window once."""
        final, open_, _late = self.reference(upto)
        sink = self.sink()
        assert set(sink) == set(final), f"{step}: the sink's windows differ from the reference"
        assert self.sink_rows() == (len(final), len(final)), f"{step}: a window is in the sink more than once"
        for key, events in final.items():
            amounts = [Decimal(e["amount"]) for e in events]
            s_sum, s_avg, s_min, s_max, s_count, s_distinct = sink[key]
            assert (s_sum, s_min, s_max, s_count, s_distinct) == (
                sum(amounts), min(amounts), max(amounts), len(events), len({e["order_id"] for e in events})), \
                f"{step}: window {key} was aggregated wrongly (a batch counted twice or not at all)"
            assert abs(Decimal(s_avg) - sum(amounts) / len(amounts)) < Decimal("1e-6"), f"{step}: avg of {key}"
        assert self.open_windows() == open_, f"{step}: the open windows' state differs from the reference"


def _kill_group(proc: subprocess.Popen) -> None:
    """Never leave a task process behind (a run that hung or overran its timeout)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_at_any_moment_and_rerun_gives_exactly_the_reference(spark, kafka_bootstrap, unique,
                                                                    tmp_path) -> None:
    s = Stream(kafka_bootstrap, unique, tmp_path)

    # 1. killed mid-batch 0: windows written to the sink, the transaction not committed -> nothing remains
    s.produce(A, 0)
    died = s.crash("mid_batch", 0)
    assert died["output_rows"] > 0 and died["transaction"] == "INTRANS", died  # it had written windows
    assert s.sink() == {} and s.ledger() == [] and s.commits() == set()

    # 2. the retry runs batch 0 again, from the offsets Spark logged before the kill
    r = s.run()
    assert (r["batches"], r["input_rows"]) == (1, len(A))
    assert s.ledger() == [0] and s.commits() == {0} and s.letters() == []
    s.assert_exactly(1, "batch 0 re-run after a mid-batch kill")
    sink_after_0 = s.sink()

    # 3. killed in batch 1 right after its late rows were published, before the commit
    s.produce(B, 100)
    late_b = s.reference(2)[2]
    assert len(late_b) == 2
    died = s.crash("after_dlq", 1)
    assert died["late_rows"] == len(late_b), died
    assert s.ledger() == [0] and s.commits() == {0} and s.sink() == sink_after_0
    assert {pos for pos, _id in s.letters()} == late_b  # at-least-once: they are out although the batch is not

    # 4. the retry replays batch 1 (late rows published again), commits it, and is killed before Spark's commit log
    died = s.crash("after_commit", 1)
    assert died["replayed"] is False and died["late_rows"] == len(late_b), died
    assert s.ledger() == [0, 1] and s.commits() == {0}  # PostgreSQL has batch 1, Spark's checkpoint does not
    s.assert_exactly(2, "batch 1 committed, then killed before Spark's commit log")
    ids_b = dict(Counter(s.letters()))
    assert sorted(ids_b.values()) == [2] * len(late_b), ids_b  # each late row re-sent once, under the same id

    # 5. the next retry replays batch 1 (a no-op: it is in the ledger), then is killed while batch 2's late rows are
    #    being published: the Spark task that publishes them (one task for a few late rows) has delivered its
    #    dead letters, and the batch is not committed
    s.produce(C, 200)
    late_c = s.reference(3)[2] - late_b
    assert len(late_c) == 5 and len({p for p, _o, _w in late_c}) == 3
    died = s.crash("mid_dlq", 2)
    published = {tuple(k) for k in died["published"]}
    assert died["delivered"] == len(published) > 0, died
    assert s.ledger() == [0, 1] and s.commits() == {0, 1}  # Spark committed the replay of batch 1 this time
    s.assert_exactly(2, "batch 1 replayed after the post-commit kill")  # nothing counted twice
    out_c = {pos for pos, _id in s.letters()} - late_b
    assert {(p, o) for p, o, _w in out_c} == published and 0 < len(out_c) <= len(late_c), (out_c, late_c)

    # 6. the last retry runs batch 2 to the end
    r = s.run()
    assert (r["batches"], r["input_rows"], r["late_rows"]) == (1, len(C), len(late_c)), r
    assert s.ledger() == [0, 1, 2] and s.commits() == {0, 1, 2}
    s.assert_exactly(3, "after every kill and retry")
    letters = s.letters()
    ids_by_pair: dict[tuple[int, int, int], set[str]] = defaultdict(set)
    for pos, envelope_id in letters:
        ids_by_pair[pos].add(envelope_id)
    late = late_b | late_c
    assert set(ids_by_pair) == late, "a late row is missing from the DLQ, or an on-time row is in it"
    assert all(len(ids) == 1 for ids in ids_by_pair.values()), f"a re-sent late row changed its id: {ids_by_pair}"
    assert len({envelope_id for _pos, envelope_id in letters}) == len(late)  # exactly once by envelope_id
    sends = Counter(pos for pos, _id in letters)  # at-least-once: re-sent only by the batches replayed after the DLQ
    assert sends == {pos: 2 if pos in late_b or pos in out_c else 1 for pos in late}, sends
    s.pg.run(f"DROP TABLE {s.table}; DROP TABLE {s.table}__etl_state")
