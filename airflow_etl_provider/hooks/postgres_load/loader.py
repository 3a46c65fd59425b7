"""The :class:`PostgresLoader`: its configuration, plumbing and the load's phases in order."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.guard import Guard
from airflow_etl_provider.core.identifiers import quote_table, validate_identifier
from airflow_etl_provider.hooks.postgres_load.isolation import _Isolation
from airflow_etl_provider.hooks.postgres_load.load_log import _LoadLog
from airflow_etl_provider.hooks.postgres_load.merge import _Merging
from airflow_etl_provider.hooks.postgres_load.model import (
    COPY_FORMATS,
    COPY_WRITERS,
    MODES,
    NONE,
    PENDING,
    REJECT_STORE_TABLE,
    STAGE_METHODS,
    LoadOutcome,
    _Plan,
    log,
)
from airflow_etl_provider.hooks.postgres_load.planning import _Planning
from airflow_etl_provider.hooks.postgres_load.staging import _Staging

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

T = TypeVar("T")


class PostgresLoader(_Planning, _Staging, _Merging, _Isolation, _LoadLog):
    """Load a Spark DataFrame into a PostgreSQL table through a staging table (see the module doc).

    :param hook: the PostgreSQL connection (psycopg for the transaction, JDBC options for Spark).
    :param table: ``table`` or ``schema.table``.
    :param mode: ``append``, ``overwrite`` or ``upsert``.
    :param keys: the upsert keys (a unique index or primary key must cover exactly these columns).
    :param load_id: the idempotency key: a load id that already committed into this table is not loaded
        again. ``None``: a random one (no idempotency across calls).
    :param guard: retries + circuit breaker around each phase (plan, staging DDL, Spark write, merge);
        every phase is idempotent.
    :param chunk_rows: rows per savepoint in the data-error fallback.
    :param jdbc_options: extra options for Spark's JDBC writer/reader (override the defaults).
    :param num_partitions: Spark write connections (default: the default parallelism, 2..8).
    :param overwrite_method: ``delete`` (default, readers never blocked) or ``truncate``.
    :param merge_work_mem: ``work_mem`` for the merge transaction (the upsert dedup sorts in memory).
    :param log_table: the load-log table's name (created in the target's schema).
    :param reject_store: the table (created in the target's schema) that keeps the rejected rows of each
        committed load until the dead-letter queue confirmed them (see :meth:`record_dead_letters`).
    :param progress_interval_s: while staging, log the progress every this many seconds (``0``/``None``: never):
        the staging job's partitions done/running/total (the SparkContext's status tracker; Spark Connect has
        none, so there only the rows are logged) and the rows in staging so far (a ``count(*)`` of the
        partitions that committed plus, with COPY, the rows the running COPYs sent; the count runs under a
        statement timeout and is given up, said once, when it takes too long).
    :param stage_method: ``jdbc`` (default: Spark's JDBC writer, nothing needed on the executors) or
        ``copy`` (COPY from the executors, see the module doc; the load operator's ``target.stage_method``).
        Measured (``benchmarks/bench_load_postgres.py``, 1M rows, 2 cores), COPY staging costs about half of
        JDBC staging; the executors' Python needs ``psycopg`` and ``pyarrow`` (``requirements-executor.txt``).
        Executors without them fail the COPY job with a ``ModuleNotFoundError``; the rows are then staged
        with JDBC (a warning says so).
    :param copy_writer: with ``stage_method="copy"``, who renders and sends the rows: ``jvm`` (Spark's JVM,
        PgJDBC's ``CopyManager``: the fastest, a classic session with ``airflow-etl-jvm.jar`` on
        ``spark.jars``), ``python`` (the executors' Python workers through Arrow and psycopg; also on
        Spark Connect; the default here, as before the JVM writer existed) or ``auto`` (the load operator's
        default): ``jvm`` where it can run, else ``python`` (logged with the reason). The same rows and text
        either way (:mod:`~airflow_etl_provider.hooks.postgres_load.jvm_copy`).
    :param copy_format: the JVM writer's COPY format: ``auto`` (default) sends PostgreSQL's binary form when
        every staging column's type takes it (:func:`~airflow_etl_provider.core.sql.binary_copy_supported`:
        strings into ``text``/``varchar``, integers, booleans, floats, decimals, dates, timestamps, bytes into
        their natural types) and CSV otherwise; ``csv`` always CSV; ``binary`` or fail naming the columns
        that cannot. PostgreSQL reads binary values without parsing text: measured on 1M orders
        (``benchmarks/bench_load_postgres.py``, alternating runs) the staging took 3.8-4.2 s as CSV and 2.4-3.6 s
        as binary. The same values either way (``tests/integration/test_jvm_copy.py``); the Python writer always
        sends CSV.
    """

    def __init__(
        self,
        hook: SparkPostgresHook,
        table: str,
        mode: Literal["append", "overwrite", "upsert"],
        keys: Sequence[str] = (),
        load_id: str | None = None,
        guard: Guard | None = None,
        chunk_rows: int = 5000,
        jdbc_options: Mapping[str, str] | None = None,
        *,
        num_partitions: int | None = None,
        overwrite_method: Literal["delete", "truncate"] = "delete",
        merge_work_mem: str = "256MB",
        log_table: str = S.LOAD_LOG_TABLE,
        stage_method: Literal["copy", "jdbc"] = "jdbc",
        reject_store: str = REJECT_STORE_TABLE,
        progress_interval_s: float | None = 30.0,
        copy_writer: Literal["auto", "jvm", "python"] = "python",
        copy_format: Literal["auto", "binary", "csv"] = "auto",
    ) -> None:
        if mode not in MODES:
            raise ConfigError("mode", "is not a load mode", value=mode, allowed=MODES)
        self.target = quote_table(table, "table")
        self.table = table
        self.mode = mode
        if isinstance(keys, str):
            keys = [keys]
        self.keys = [validate_identifier(k, "keys") for k in keys]
        if mode == "upsert" and not self.keys:
            raise ConfigError("keys", "upsert needs at least one key column")
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError("keys", "lists a column twice", value=list(keys))
        if load_id is not None and (
            not isinstance(load_id, str) or not load_id or len(load_id) > 200 or "\x00" in load_id
        ):
            raise ConfigError(
                "load_id", "must be a non-empty string of at most 200 characters without NUL", value=load_id
            )
        self.load_id = load_id or uuid.uuid4().hex
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ConfigError("chunk_rows", "must be an integer >= 1", value=chunk_rows)
        if overwrite_method not in ("delete", "truncate"):
            raise ConfigError(
                "overwrite_method", "is not known", value=overwrite_method, allowed=("delete", "truncate")
            )
        if stage_method not in STAGE_METHODS:
            raise ConfigError("stage_method", "is not known", value=stage_method, allowed=STAGE_METHODS)
        self.stage_method = stage_method
        if copy_writer not in COPY_WRITERS:
            raise ConfigError("copy_writer", "is not known", value=copy_writer, allowed=COPY_WRITERS)
        self.copy_writer = copy_writer
        if copy_format not in COPY_FORMATS:
            raise ConfigError("copy_format", "is not known", value=copy_format, allowed=COPY_FORMATS)
        self.copy_format = copy_format
        self.log_table_name = validate_identifier(log_table, "log_table")
        self.reject_store_name = validate_identifier(reject_store, "reject_store")
        if progress_interval_s is not None and (
            isinstance(progress_interval_s, bool)
            or not isinstance(progress_interval_s, int | float)
            or progress_interval_s < 0
        ):
            raise ConfigError(
                "progress_interval_s",
                "must be a number of seconds >= 0 (0 or None: no progress log)",
                value=progress_interval_s,
            )
        self.progress_interval_s = float(progress_interval_s or 0)
        self._plan: _Plan | None = None
        self.hook = hook
        self.guard = guard
        self.chunk_rows = chunk_rows
        self.extra_jdbc_options = dict(jdbc_options or {})
        self.num_partitions = num_partitions
        self.overwrite_method = overwrite_method
        self.merge_work_mem = merge_work_mem

    # ------------------------------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return self.guard.call(fn, *args) if self.guard is not None else fn(*args)

    @contextlib.contextmanager
    def _connect(self, autocommit: bool) -> Iterator[Any]:
        conn: Any = self.hook.get_conn()
        try:
            conn.autocommit = autocommit
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _jdbc_options(self, **extra: Any) -> dict[str, str]:
        options = self.hook.jdbc_options(**extra)
        options.update({k: str(v) for k, v in self.extra_jdbc_options.items()})
        return options

    # ---------------------------------------------------------------------------------------- load

    def load(self, df: DataFrame) -> LoadOutcome:
        """Load ``df`` (see the module doc for the guarantees).

        :raises ConfigError: bad names, schema mismatch, missing unique index for the upsert keys.
        :raises RowAccountingError: the rows do not add up (nothing is committed then).
        """
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        plan = self._call(self._prepare, self._df_columns(df))
        self._plan = plan
        timings["plan"] = time.monotonic() - t0
        if plan.recorded is not None:
            self._drop_staging(plan)  # a crash after the commit may have left it
            read, loaded, rejected = plan.recorded
            pending = None
            if plan.dead_letter_state == PENDING:
                t = time.monotonic()
                pending = self._call(self._read_rejected, df, plan, rejected)
                timings["rejected"] = time.monotonic() - t
                log.warning(
                    "Load %s into %s already committed, but the dead-letter queue never confirmed its %d "
                    "rejected row(s): handing them over again from %s",
                    self.load_id,
                    plan.table_key,
                    rejected,
                    plan.reject_store,
                )
            else:
                log.info("Load %s into %s already committed: nothing to do", self.load_id, plan.table_key)
            return LoadOutcome(
                read,
                loaded,
                rejected,
                pending,
                plan.staging_name,
                0,
                time.monotonic() - t0,
                load_id=self.load_id,
                skipped=True,
                timings=timings,
                dead_letter_state=plan.dead_letter_state or NONE,
                dead_letter_spooled=plan.dead_letter_spooled,
                dead_letter_spool=plan.dead_letter_spool,
            )
        rejected_df = None
        try:

            def stage_and_merge() -> Any:
                # One retry unit: PostgreSQL's crash recovery empties UNLOGGED tables, so a merge retried
                # after a server crash must re-stage, or it would commit the load id with 0 rows.
                t = time.monotonic()
                self._create_staging(plan)
                self._stage(df, plan)
                timings["stage"] = time.monotonic() - t
                t = time.monotonic()
                merged = self._merge(plan)
                timings["merge"] = time.monotonic() - t
                return merged

            result = self._call(stage_and_merge)
            if result.rejected and not result.skipped:
                t = time.monotonic()
                rejected_df = self._read_rejected(df, plan, result.rejected)
                timings["rejected"] = time.monotonic() - t
        finally:
            t = time.monotonic()
            self._drop_staging(plan)
            timings["cleanup"] = time.monotonic() - t
        outcome = LoadOutcome(
            result.read,
            result.loaded,
            result.rejected,
            rejected_df,
            plan.staging_name,
            result.statements,
            time.monotonic() - t0,
            records_superseded=result.superseded,
            load_id=self.load_id,
            skipped=result.skipped,
            isolated=result.isolated,
            timings=timings,
            stage_method=plan.stage_method,
            dead_letter_state=PENDING if result.rejected else NONE,
        )
        log.info(
            "Loaded %s (%s, load id %s): read=%d loaded=%d rejected=%d superseded=%d in %.2fs %s",
            plan.table_key,
            self.mode,
            self.load_id,
            outcome.records_read,
            outcome.records_loaded,
            outcome.records_rejected,
            outcome.records_superseded,
            outcome.duration_s,
            {k: round(v, 2) for k, v in timings.items()},
        )
        return outcome
