"""The staging progress log: partitions from Spark's status tracker, rows from PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.hooks.postgres_load.model import (
    _Plan,
    log,
)
from airflow_etl_provider.hooks.postgres_load.savepoints import (
    error_message,
)

if TYPE_CHECKING:
    from airflow_etl_provider.hooks.postgres_load.loader import PostgresLoader


def _spark_context(spark: Any) -> Any:
    """The session's SparkContext, or ``None`` on Spark Connect (which has none)."""
    try:
        return spark.sparkContext
    except Exception as err:  # pyspark.errors.PySparkNotImplementedError on Spark Connect
        log.debug("No SparkContext (%s: %s): Spark Connect", type(err).__name__, err)
        return None


class _StagingProgress:
    """Logs a load's staging progress every ``loader.progress_interval_s`` seconds from a daemon thread.

    Partitions come from the SparkContext's status tracker: the staging job runs in its own job group, and
    its last stage's tasks are the partitions being written. Rows come from PostgreSQL: ``count(*)`` of the
    staging table (the partitions that committed: Spark's JDBC writer and the COPY writers commit once per
    partition) plus, for COPY, ``pg_stat_progress_copy`` (rows the running COPYs sent). Reading the progress
    never fails or slows the load: each query runs under a statement and lock timeout, a failing source is
    reported once and dropped, and leaving the block does not wait for a report in flight.
    """

    def __init__(self, loader: PostgresLoader, plan: _Plan, spark: Any, method: str) -> None:
        self.loader, self.plan, self.method = loader, plan, method
        self.interval = loader.progress_interval_s
        self.sc = _spark_context(spark) if self.interval else None
        self.group = f"airflow-etl-stage-{uuid.uuid4().hex[:12]}"
        self.started = time.monotonic()
        self.count_rows = True
        self.reports = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: list[tuple[str, Any]] = []

    def __enter__(self) -> _StagingProgress:
        if not self.interval:
            return self
        if self.sc is not None:
            keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
            self._saved = [(k, self.sc.getLocalProperty(k)) for k in keys]
            self.sc.setJobGroup(self.group, f"airflow-etl: stage {self.plan.table_key} ({self.method})")
        else:
            log.info(
                "Staging %s (%s): progress every %gs gives the rows staged so far; partitions are not "
                "available on Spark Connect (no SparkContext status tracker)",
                self.plan.table_key,
                self.method,
                self.interval,
            )
        self._thread = threading.Thread(
            target=self._run, name=f"etl-progress-{self.plan.staging_name}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a report stuck on PostgreSQL ends with its statement timeout
        if self.sc is not None:
            for key, value in self._saved:
                self.sc.setLocalProperty(key, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            line = self.report()
            if line and not self._stop.is_set():
                log.info("%s", line)

    def report(self) -> str:
        """One progress line (partitions when known, rows when counted)."""
        parts = []
        partitions = self._partitions()
        if partitions:
            parts.append(partitions)
        rows = self._rows()
        if rows is not None:
            parts.append(f"{rows:,} row(s) in staging so far")
        self.reports += 1
        elapsed = time.monotonic() - self.started
        return f"Staging {self.plan.table_key} ({self.method}, {elapsed:.0f}s): " + (
            "; ".join(parts) if parts else "waiting for the staging job to start"
        )

    def _partitions(self) -> str | None:
        if self.sc is None:
            return None
        try:
            tracker = self.sc.statusTracker()
            jobs = tracker.getJobIdsForGroup(self.group)
            info = tracker.getJobInfo(max(jobs)) if jobs else None
            stages = [tracker.getStageInfo(s) for s in sorted(info.stageIds)] if info is not None else []
        except Exception as err:  # the tracker is best effort: never let it fail the load
            log.warning(
                "Staging progress: the Spark status tracker failed (%s: %s); partitions are no longer "
                "reported",
                type(err).__name__,
                err,
            )
            self.sc = None
            return None
        known = [s for s in stages if s is not None]
        if not known:
            return None
        last = known[-1]
        text = f"{last.numCompletedTasks}/{last.numTasks} partitions done, {last.numActiveTasks} running" + (
            f", {last.numFailedTasks} failed attempt(s)" if last.numFailedTasks else ""
        )
        if len(stages) > 1 and stages[-1] is None:  # the write waits for an earlier stage (a shuffle)
            text = f"preparing (stage {last.stageId}: {last.numCompletedTasks}/{last.numTasks} tasks done)"
        return text

    def _rows(self) -> int | None:
        if not self.count_rows:
            return None
        timeout_ms = int(max(1.0, min(self.interval / 3, 10.0)) * 1000)
        try:
            with self.loader._connect(autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(
                    "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                    (str(timeout_ms), str(timeout_ms)),
                )
                cur.execute(f"SELECT count(*) FROM {self.plan.staging}")
                rows = int(cur.fetchone()[0])
                if self.method == "copy":
                    cur.execute(
                        "SELECT coalesce(sum(tuples_processed), 0) FROM pg_stat_progress_copy "
                        "WHERE relid = to_regclass(%s)",
                        (self.plan.staging,),
                    )
                    rows += int(cur.fetchone()[0])
        except Exception as err:  # best effort: never let the progress log fail or slow the load
            log.warning(
                "Staging progress: counting the staged rows failed (%s: %s); rows are no longer reported",
                type(err).__name__,
                error_message(err).splitlines()[0] if str(err).strip() else "",
            )
            self.count_rows = False
            return None
        return rows
