"""The PostgreSQL load engine: a Spark DataFrame into a table, atomically, idempotently, row-isolating.

How a load runs (:meth:`PostgresLoader.load`):

1. **Plan** (one short psycopg session): the target's columns are read from the catalog, the
   DataFrame's columns are matched against them (a DataFrame column the target lacks, or a target
   ``NOT NULL`` column without default the DataFrame lacks, fails with a :class:`ConfigError` listing
   every one), upsert keys must carry a unique index or primary key. The bookkeeping table
   ``etl_load_log`` (in the target's schema) is created if needed; if it already records this
   ``(table, load_id)`` the load was committed before and nothing is done (the recorded counts are
   returned, ``skipped=True``).
2. **Stage**: the DataFrame plus ``_etl_row_id`` (``monotonically_increasing_id()``: partition index
   << 33 + offset, unique and deterministic for a deterministic input) goes in parallel into an
   ``UNLOGGED`` staging table named from the target and the load id. The staging table has no
   constraint at all and its types have no length/precision modifiers, so every row Spark can write
   lands there and bad values fail later, in PostgreSQL, where they can be isolated. The staging table
   is dropped and recreated first, so rows a crashed run left there never count twice; rows a
   re-executed Spark task wrote twice share a row id and are deduplicated before the merge.

   ``stage_method="copy"``: ``df.mapInArrow`` (classic and Spark Connect) runs, on the
   executors, one ``COPY staging (...) FROM STDIN (FORMAT csv)`` per partition over its own psycopg
   connection, in one transaction per task attempt (a failed attempt leaves nothing behind). The
   Arrow batches Spark hands the Python worker are rendered by Arrow's C++ CSV writer: NULL is an
   unquoted empty field, every string is quoted (empty string, tabs, newlines, backslashes, quotes,
   any Unicode survive), decimals are written exactly, timestamps with their UTC offset (into a
   ``timestamp without time zone`` column: the wall-clock time in the session time zone, like
   Spark's JDBC writer with the default JVM time zone), binary as ``\\x`` hex. Each partition
   returns one status row (partition, attempt, rows written); their sum must equal the staged row ids
   the merge counts. The connection parameters are resolved on the driver from the Airflow
   connection and travel inside the task closure; they are never logged. The executors' Python needs
   ``psycopg`` (3) and ``pyarrow``. A DataFrame with a column COPY cannot render (arrays, maps,
   structs, intervals) is staged with JDBC instead.
   ``stage_method="jdbc"`` (the default: nothing needed on the executors; staging ~20% slower at 1M
   rows): Spark's JDBC writer appends the rows (batched, rewritten multi-row inserts).
3. **Merge**, in ONE transaction: the load-log row is inserted first (``ON CONFLICT DO NOTHING``: a
   concurrent or earlier run with the same load id makes this one a no-op), overwrite deletes the old
   rows, then one set-based statement moves every staged row: ``INSERT ... SELECT``, or for upsert
   ``MERGE INTO target USING staging ON keys ... WHEN MATCHED THEN UPDATE ... WHEN NOT MATCHED THEN
   INSERT`` (PostgreSQL 15+; ~25% cheaper than ``INSERT ... ON CONFLICT DO UPDATE``). The one scan that
   counts the staged rows also tells whether a key occurs twice: only then is the source deduplicated
   (``SELECT DISTINCT ON (keys) ... ORDER BY keys, _etl_row_id DESC``); rows staged in random key
   order are sorted by key (index locality). A ``MERGE`` that fails other than on a bad row (a unique
   violation: a concurrent insert, a key equal only once stored) or that the target does not support
   (rules, PostgreSQL < 15) is replaced by ``INSERT ... SELECT DISTINCT ON ... ON CONFLICT (keys) DO
   UPDATE``, in the same transaction (one visible difference: a ``BEFORE INSERT`` row trigger fires
   for the inserted rows only under ``MERGE``, for every row under ``ON CONFLICT``). If it fails with a *data* error (:func:`classify_postgres` -> ``DATA``), it is rolled back to a
   savepoint and the rows are applied in chunks of ``chunk_rows`` (in row-id order), each under a
   savepoint; a failing chunk is bisected down to single rows, each refused row recorded with
   PostgreSQL's own message and error class; everything else is applied, still in the same
   transaction, so readers see the target change all at once. The rejected rows are copied, in that
   same transaction, into the **reject store** ``etl_load_rejects`` (staged columns as ``jsonb``, row
   id, message, error class) and the load log row says ``dead_letter_state = 'pending'`` (``'none'``
   when nothing was rejected). Transient and system errors are raised (the transaction rolls back;
   retrying the whole load is safe).
4. **Rejected rows** are read back from the reject store (each column cast back to its staging type
   with ``jsonb_to_record``: the values staging held) with the original columns and types plus
   ``_etl_error`` / ``_etl_error_class``, in row-id order (up to 10,000 through psycopg, more with Spark's
   JDBC reader and ``localCheckpoint``). The staging tables are dropped (always, also on failure).
5. **Dead-letter delivery** is the caller's half: once the dead-letter queue confirmed *every*
   rejected row, :meth:`PostgresLoader.record_dead_letters` (``delivered=True``) sets the state to
   ``delivered`` and deletes the rows from the reject store, in one transaction; if the DLQ could not
   take them, ``delivered=False`` records the local spool files instead and the state stays
   ``pending``. A later run with the same load id finds the load committed but its dead letters
   pending: it loads nothing and hands the rejected rows over again (``rejected``, read from the
   reject store exactly as the first time, so the envelopes and their deterministic ``envelope_id``
   are the same). The rejected rows therefore outlive a DLQ outage, a lost worker and its spool:
   they are never lost, and delivery is at-least-once with stable ids (consumers deduplicate on
   ``envelope_id``). ``ResilientSparkLoadOperator`` does all this; the load log columns
   ``dead_letter_state``, ``dead_letter_spooled``, ``dead_letter_spool``, ``dead_letter_location``,
   ``dead_letter_at`` are added to an existing log (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``), and a
   load logged before they existed (state NULL) counts as delivered.

Semantics:

* **Dedup (upsert)**: within one batch the row with the highest ``_etl_row_id`` -- the last one in the
  DataFrame's order -- wins for each key; rows whose key contains a NULL are never collapsed. Earlier
  rows of the key are *superseded*: they count as loaded (the batch's effect is the one of applying
  the rows in order), unless the winning row is rejected: then the key does not change and its
  superseded rows are rejected too (``_etl_error`` = ``superseded by rejected row <id> with the same
  key: <PostgreSQL's message>``), so nothing is silently lost.
* **Accounting**: ``records_read`` = rows staged (distinct row ids = DataFrame rows);
  ``records_rejected`` = rows PostgreSQL refused (+ superseded rows of rejected keys);
  ``records_loaded`` = rows applied by the merge (inserted or updated) + superseded rows of applied
  keys. ``records_read == records_loaded + records_rejected`` is checked (and the statement row counts
  against the staged rows); a mismatch raises :class:`RowAccountingError` and rolls back.
* **Idempotency**: the load log row ``(table_name, load_id)`` commits with the data. A run whose load id
  already committed loads nothing and returns the recorded counts (``rejected`` is then ``None``, unless
  the dead letters are still pending: then it holds the rejected rows again, see 5.). Without a
  ``load_id`` a random one is used, so every call loads. A crash before the commit leaves the target
  untouched.
* **Overwrite** uses ``DELETE`` by default: readers are never blocked and keep seeing the old rows
  until the commit (MVCC, also for REPEATABLE READ readers, which ``TRUNCATE`` would show an empty
  table), and referencing foreign keys keep working. ``overwrite_method="truncate"`` is faster for big
  tables (no dead tuples) but takes an ACCESS EXCLUSIVE lock: readers wait until the commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError, ErrorKind, RowAccountingError, classify_postgres
from airflow_etl_provider.core.guard import Guard
from airflow_etl_provider.core.identifiers import quote_table, validate_identifier
from airflow_etl_provider.executor.postgres_copy import COPY_STATUS_SCHEMA, copy_writer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from airflow_etl_provider.hooks.postgres import SparkPostgresHook

log = logging.getLogger(__name__)

T = TypeVar("T")
MODES = ("append", "overwrite", "upsert")
STAGE_METHODS = ("copy", "jdbc")
#: psycopg connection parameters the COPY writers never take from the connection's extras.
WORK_TABLE = "_etl_work"
#: The durable copy of every committed load's rejected rows until the dead-letter queue confirmed them.
REJECT_STORE_TABLE = "etl_load_rejects"
#: ``etl_load_log.dead_letter_state``: nothing rejected / rejected rows not yet confirmed by the DLQ /
#: confirmed. NULL (rows written before these columns existed) is treated as delivered.
NONE, PENDING, DELIVERED = "none", "pending", "delivered"
#: Columns added to an existing load log (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``).
LOAD_LOG_DLQ_COLUMNS = (("dead_letter_state", "text"), ("dead_letter_spooled", "bigint"),
                        ("dead_letter_spool", "text[]"), ("dead_letter_location", "text"),
                        ("dead_letter_at", "timestamptz"))


def _literal(value: str) -> str:
    """A PostgreSQL string literal (``E'...'``: backslashes escaped whatever standard_conforming_strings
    says), for the one query Spark's JDBC reader runs without parameters."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass
class LoadOutcome:
    """What a load did.

    :param records_read: rows of the DataFrame (rows staged, distinct row ids).
    :param records_loaded: rows applied, including superseded in-batch duplicates of applied keys.
    :param records_rejected: rows PostgreSQL refused (and superseded rows of refused keys).
    :param rejected: the rejected rows (original columns + ``_etl_error``, ``_etl_error_class``), or
        ``None`` when there are none (or the load was skipped).
    :param staging_table: the staging table used (dropped by now).
    :param statements: SQL statements run in the merge transaction.
    :param duration_s: wall time of the whole load.
    :param records_superseded: in-batch duplicate-key rows superseded by a later row (upsert).
    :param load_id: the load id recorded in the load log.
    :param skipped: the load id had already been committed: nothing was loaded this time.
    :param isolated: the merge fell back to chunks and bisection because of data errors.
    :param timings: seconds per phase (plan, stage, merge, rejected, cleanup).
    :param stage_method: how the rows were staged (``copy`` or ``jdbc``; empty when skipped).
    :param dead_letter_state: delivery of the rejected rows to the dead-letter queue, as recorded in the
        load log: ``none`` (nothing rejected), ``pending`` (rejected rows not yet confirmed by the DLQ:
        :meth:`PostgresLoader.record_dead_letters` must be called once it confirmed them) or
        ``delivered``.
    :param dead_letter_spooled: (pending, skipped) rows an earlier try could not deliver and spooled.
    :param dead_letter_spool: (pending, skipped) the local spool files that earlier try wrote them to.
    """

    records_read: int
    records_loaded: int
    records_rejected: int
    rejected: DataFrame | None
    staging_table: str
    statements: int
    duration_s: float
    records_superseded: int = 0
    load_id: str = ""
    skipped: bool = False
    isolated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    stage_method: str = ""
    dead_letter_state: str = "none"
    dead_letter_spooled: int = 0
    dead_letter_spool: list[str] = field(default_factory=list)

    @property
    def dead_letters_pending(self) -> bool:
        """The rejected rows still have to reach the dead-letter queue (``rejected`` holds them)."""
        return self.dead_letter_state == PENDING


@dataclass
class _Plan:
    schema: str
    table: str
    target: str  # quoted
    columns: list[S.StagedColumn]
    staging_name: str
    staging: str  # quoted
    rejects: str  # quoted
    log_table: str  # quoted
    table_key: str  # schema.table, as recorded in the load log
    recorded: tuple[int, int, int] | None = None  # (read, loaded, rejected) from the load log
    staged_rows: int | None = None  # rows the COPY writers reported (None: JDBC staging)
    stage_method: str = ""
    reject_store: str = ""  # quoted: the durable copy of the rejected rows (etl_load_rejects)
    dead_letter_state: str | None = None  # of the recorded load: none | pending | delivered (NULL: legacy)
    dead_letter_spooled: int = 0  # rows an earlier try left in its local spool (pending)
    dead_letter_spool: list[str] = field(default_factory=list)  # those spool files


@dataclass
class _MergeResult:
    read: int
    loaded: int
    rejected: int
    superseded: int
    statements: int
    skipped: bool = False
    isolated: bool = False


def _create_reject_store_sql(store: str) -> str:
    """The reject store: each rejected row of a committed load (its staged columns as ``jsonb``, read back
    with ``jsonb_to_record`` and the staging types) with PostgreSQL's message, until the DLQ confirmed it."""
    return (f"CREATE TABLE IF NOT EXISTS {store} (table_name text NOT NULL, load_id text NOT NULL, "
            "row_id bigint NOT NULL, record jsonb NOT NULL, error text, error_class text, "
            "PRIMARY KEY (table_name, load_id, row_id))")


class _Counter:
    """A cursor wrapper that counts statements."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.statements = 0

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        self.statements += 1
        return self.cursor.execute(sql, params) if params is not None else self.cursor.execute(sql)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        self.statements += 1
        return self.cursor.executemany(sql, params)

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)

    def fetchone(self) -> Any:
        return self.cursor.fetchone()

    def fetchall(self) -> Any:
        return self.cursor.fetchall()



def _in_savepoint(cur: _Counter, name: str, sql: str, params: Sequence[Any] | None = None) -> tuple[int, Any]:
    """Run one statement under a savepoint: ``(rows affected, None)``, or ``(0, error)`` after rolling back a
    *data* error (the transaction goes on without the statement). Any other error is raised."""
    cur.execute(f"SAVEPOINT {name}")
    try:
        cur.execute(sql, params)
        affected = cur.rowcount
    except Exception as err:
        if classify_postgres(err) is not ErrorKind.DATA:
            raise
        cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
        cur.execute(f"RELEASE SAVEPOINT {name}")
        return 0, err
    cur.execute(f"RELEASE SAVEPOINT {name}")
    return affected, None

def error_class(exc: BaseException) -> str:
    """``module.QualName`` of a driver error, e.g. ``psycopg.errors.NotNullViolation``."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def error_message(exc: BaseException) -> str:
    """PostgreSQL's own message as the driver reports it (primary message, DETAIL ...)."""
    return str(exc).strip()


class PostgresLoader:
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
    :param stage_method: ``jdbc`` (default: Spark's JDBC writer) or ``copy`` (COPY from the executors,
        see the module doc). Measured on 2 cores (``benchmarks/bench_load_postgres.py``, 1M rows, quiet
        box), COPY staging takes ~3.2 s where JDBC takes ~3.8 s (the whole upsert: 7.0 vs 7.6 s), but
        the executors need ``psycopg`` and ``pyarrow`` and a session's first COPY load pays ~2 s to start
        the Python workers; so JDBC stays the default.
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
        if load_id is not None and (not isinstance(load_id, str) or not load_id or len(load_id) > 200
                                    or "\x00" in load_id):
            raise ConfigError("load_id", "must be a non-empty string of at most 200 characters without NUL",
                              value=load_id)
        self.load_id = load_id or uuid.uuid4().hex
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ConfigError("chunk_rows", "must be an integer >= 1", value=chunk_rows)
        if overwrite_method not in ("delete", "truncate"):
            raise ConfigError("overwrite_method", "is not known", value=overwrite_method,
                              allowed=("delete", "truncate"))
        if stage_method not in STAGE_METHODS:
            raise ConfigError("stage_method", "is not known", value=stage_method, allowed=STAGE_METHODS)
        self.stage_method = stage_method
        self.log_table_name = validate_identifier(log_table, "log_table")
        self.reject_store_name = validate_identifier(reject_store, "reject_store")
        if progress_interval_s is not None and (isinstance(progress_interval_s, bool)
                                                or not isinstance(progress_interval_s, int | float)
                                                or progress_interval_s < 0):
            raise ConfigError("progress_interval_s", "must be a number of seconds >= 0 (0 or None: no progress "
                              "log)", value=progress_interval_s)
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
                log.warning("Load %s into %s already committed, but the dead-letter queue never confirmed its %d "
                            "rejected row(s): handing them over again from %s", self.load_id, plan.table_key,
                            rejected, plan.reject_store)
            else:
                log.info("Load %s into %s already committed: nothing to do", self.load_id, plan.table_key)
            return LoadOutcome(read, loaded, rejected, pending, plan.staging_name, 0, time.monotonic() - t0,
                               load_id=self.load_id, skipped=True, timings=timings,
                               dead_letter_state=plan.dead_letter_state or NONE,
                               dead_letter_spooled=plan.dead_letter_spooled, dead_letter_spool=plan.dead_letter_spool)
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
            result.read, result.loaded, result.rejected, rejected_df, plan.staging_name, result.statements,
            time.monotonic() - t0, records_superseded=result.superseded, load_id=self.load_id,
            skipped=result.skipped, isolated=result.isolated, timings=timings, stage_method=plan.stage_method,
            dead_letter_state=PENDING if result.rejected else NONE,
        )
        log.info("Loaded %s (%s, load id %s): read=%d loaded=%d rejected=%d superseded=%d in %.2fs %s",
                 plan.table_key, self.mode, self.load_id, outcome.records_read, outcome.records_loaded,
                 outcome.records_rejected, outcome.records_superseded, outcome.duration_s,
                 {k: round(v, 2) for k, v in timings.items()})
        return outcome

    @staticmethod
    def _df_columns(df: DataFrame) -> list[tuple[str, str]]:
        return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]

    # ---------------------------------------------------------------------------------------- plan

    def _prepare(self, df_columns: Sequence[tuple[str, str]]) -> _Plan:
        for name, _ in df_columns:
            validate_identifier(name, "columns")
        with self._connect(autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", (self.target,))
            row = cur.fetchone()
            if row is None or row[2] not in ("r", "p"):
                raise ConfigError("table", "is not an existing table", value=self.table)
            schema, table = str(row[0]), str(row[1])
            target = S.qualified(schema, table)
            cur.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, NULL), "
                "t.typcategory, a.attnotnull, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''), "
                "a.attgenerated <> '' FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (target,))
            target_cols = {str(r[0]): r for r in cur.fetchall()}
            columns = self._match_columns(df_columns, target_cols, f"{schema}.{table}")
            if self.mode == "upsert":
                self._check_unique_index(cur, target, columns, f"{schema}.{table}")
            log_table = S.qualified(schema, self.log_table_name, "log_table")
            reject_store = S.qualified(schema, self.reject_store_name, "reject_store")
            self._create_bookkeeping(cur, log_table, reject_store)
            table_key = f"{schema}.{table}"
            recorded = self._recorded(cur, log_table, table_key)
            state: Any = None
            if recorded is not None:
                cur.execute(f"SELECT dead_letter_state, dead_letter_spooled, dead_letter_spool FROM {log_table} "
                            "WHERE table_name = %s AND load_id = %s", (table_key, self.load_id))
                state = cur.fetchone()
        staging_name = S.staging_table_name(schema, table, self.load_id)
        plan = _Plan(
            schema=schema, table=table, target=target, columns=columns, staging_name=staging_name,
            staging=S.qualified(schema, staging_name), rejects=S.qualified(schema, S.rejects_table_name(staging_name)),
            log_table=log_table, table_key=table_key, recorded=recorded, reject_store=reject_store,
        )
        if state is not None:
            plan.dead_letter_state = DELIVERED if state[0] is None else str(state[0])  # NULL: logged before 0.x
            plan.dead_letter_spooled = int(state[1] or 0)
            plan.dead_letter_spool = [str(p) for p in state[2] or ()]
        return plan

    @staticmethod
    def _create_bookkeeping(cur: Any, log_table: str, reject_store: str) -> None:
        """Create the load log and the reject store if needed; add the dead-letter columns to a load log
        created by an earlier version (only when missing: ``ALTER TABLE`` takes an ACCESS EXCLUSIVE lock,
        which would wait for every open merge transaction that wrote to the log)."""
        for ddl in (S.create_load_log_sql(log_table), _create_reject_store_sql(reject_store)):
            try:
                cur.execute(ddl)
            except Exception as err:  # a concurrent CREATE IF NOT EXISTS: the table is there now
                if "already exists" not in str(err) and "duplicate key" not in str(err):
                    raise
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                    "AND NOT attisdropped", (log_table,))
        present = {str(r[0]) for r in cur.fetchall()}
        missing = [(name, kind) for name, kind in LOAD_LOG_DLQ_COLUMNS if name not in present]
        if missing:
            log.info("Adding column(s) %s to the load log %s", ", ".join(n for n, _ in missing), log_table)
            cur.execute(f"ALTER TABLE {log_table} "
                        + ", ".join(f"ADD COLUMN IF NOT EXISTS {S.q(name)} {kind}" for name, kind in missing))

    def _recorded(self, cur: Any, log_table: str, table_key: str) -> tuple[int, int, int] | None:
        cur.execute(f"SELECT rows_read, rows, rows_rejected FROM {log_table} WHERE table_name = %s AND load_id = %s",
                    (table_key, self.load_id))
        row = cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def _match_columns(
        self, df_columns: Sequence[tuple[str, str]], target_cols: Mapping[str, Any], table: str
    ) -> list[S.StagedColumn]:
        by_lower: dict[str, list[str]] = {}
        for target_name in target_cols:
            by_lower.setdefault(target_name.lower(), []).append(target_name)
        problems: list[str] = []
        extra: list[str] = []
        generated: list[str] = []
        columns: list[S.StagedColumn] = []
        seen: set[str] = set()
        for df_name, spark_type in df_columns:
            name = df_name if df_name in target_cols else None
            if name is None and len(by_lower.get(df_name.lower(), [])) == 1:
                name = by_lower[df_name.lower()][0]
            if name is None:
                extra.append(df_name)
                continue
            if name in seen:
                problems.append(f"DataFrame column {df_name!r} maps to target column {name!r} twice")
                continue
            seen.add(name)
            _, full_type, base_type, category, _, _, is_generated = target_cols[name]
            if is_generated:
                generated.append(df_name)
                continue
            staging_type, cast = S.staging_column_type(spark_type, str(base_type), str(category))
            columns.append(S.StagedColumn(name, df_name, staging_type, str(full_type), cast))
        if extra:
            problems.append(f"DataFrame column(s) not in table {table}: {', '.join(extra)}")
        if generated:
            problems.append(f"DataFrame column(s) that are generated columns of {table}: {', '.join(generated)}")
        missing = [n for n, r in target_cols.items() if r[4] and not r[5] and n not in seen]
        if missing:
            problems.append(
                f"NOT NULL column(s) of {table} without a default missing from the DataFrame: {', '.join(missing)}")
        missing_keys = [k for k in self.keys if k not in seen]
        if missing_keys:
            problems.append(f"key column(s) missing from the DataFrame: {', '.join(missing_keys)}")
        if problems:
            raise ConfigError("columns", "; ".join(problems))
        if not columns:
            raise ConfigError("columns", "the DataFrame has no column to load")
        return columns

    def _check_unique_index(self, cur: Any, target: str, columns: Sequence[S.StagedColumn], table: str) -> None:
        cur.execute(
            "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) "
            "AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL "
            "GROUP BY i.indexrelid", (target,))
        if not any(set(r[0]) == set(self.keys) for r in cur.fetchall()):
            cols = ", ".join(self.keys)
            raise ConfigError(
                "keys", f"table {table} has no primary key or unique index on exactly ({cols}), which "
                f"upsert (ON CONFLICT) needs; create one, e.g. CREATE UNIQUE INDEX ON {target} ({cols})")

    # --------------------------------------------------------------------------------------- stage

    def _create_staging(self, plan: _Plan) -> None:
        with self._connect(autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {plan.staging}, {plan.rejects}")
            cur.execute(S.create_staging_sql(plan.staging, plan.columns))
            cur.execute(S.create_rejects_sql(plan.rejects))

    def _default_partitions(self, df: DataFrame) -> int:
        if self.num_partitions:
            return self.num_partitions
        try:
            parallelism = int(df.sparkSession.sparkContext.defaultParallelism)
        except Exception:  # Spark Connect has no SparkContext
            parallelism = 4
        return max(2, min(parallelism, 8))

    def _staged_df(self, df: DataFrame, plan: _Plan) -> DataFrame:
        from pyspark.sql import functions as F

        return df.select(
            F.monotonically_increasing_id().alias(S.ROW_ID),
            *[F.col(c.source).alias(c.name) for c in plan.columns],
        )

    def _effective_stage_method(self, df: DataFrame, plan: _Plan) -> str:
        if self.stage_method != "copy":
            return self.stage_method
        types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        unsupported = [f"{c.source} ({types[c.source]})" for c in plan.columns if not S.copy_supported(types[c.source])]
        if unsupported:
            log.info("Staging %s with JDBC, not COPY: column(s) COPY cannot render: %s", plan.staging_name,
                     ", ".join(unsupported))
            return "jdbc"
        return "copy"

    def _stage(self, df: DataFrame, plan: _Plan) -> None:
        method = self._effective_stage_method(df, plan)
        plan.stage_method = method
        with _StagingProgress(self, plan, df.sparkSession, method):
            if method == "copy":
                self._stage_copy(df, plan)
            else:
                self._stage_jdbc(df, plan)

    def _stage_jdbc(self, df: DataFrame, plan: _Plan) -> None:
        options = self._jdbc_options(batchsize=10000, numPartitions=self._default_partitions(df))
        options["dbtable"] = plan.staging
        self._staged_df(df, plan).write.format("jdbc").options(**options).mode("append").save()
        plan.staged_rows = None

    def copy_conn_args(self) -> dict[str, Any]:
        """psycopg connection parameters for the executors' COPY writers (:meth:`SparkPostgresHook.psycopg_conn_args`).
        They hold the password: never log them."""
        return self.hook.psycopg_conn_args(application_name="airflow-etl-copy")

    def _stage_copy(self, df: DataFrame, plan: _Plan) -> None:
        staged = self._staged_df(df, plan).coalesce(self._default_partitions(df))  # never more than that
        fields = staged.schema.fields
        staging_types = {c.name: c.staging_type for c in plan.columns}
        to_utc = [i for i, f in enumerate(fields) if f.dataType.simpleString() == "timestamp"
                  and staging_types.get(f.name) == "timestamp with time zone"]
        binary = [i for i, f in enumerate(fields) if f.dataType.simpleString() == "binary"]
        writer = copy_writer(self.copy_conn_args(), S.copy_staging_sql(plan.staging, plan.columns), to_utc, binary)
        statuses = staged.mapInArrow(writer, COPY_STATUS_SCHEMA).collect()
        plan.staged_rows = sum(int(r["rows"]) for r in statuses)
        log.info("Staged %d row(s) into %s with COPY from %d partition(s)", plan.staged_rows, plan.staging_name,
                 len(statuses))

    # --------------------------------------------------------------------------------------- merge

    def _merge(self, plan: _Plan) -> _MergeResult:
        with self._connect(autocommit=False) as conn:
            cur = _Counter(conn.cursor())
            try:
                result = self._merge_in(cur, plan)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise
            if result.skipped:
                conn.rollback()
            else:
                conn.commit()
            return result

    def _merge_in(self, cur: _Counter, plan: _Plan) -> _MergeResult:
        rid = S.q(S.ROW_ID)
        cur.execute("SELECT set_config('work_mem', %s, true)", (self.merge_work_mem,))
        cur.execute(S.staging_counts_sql(plan.staging, self.keys if self.mode == "upsert" else ()))
        counts = [int(v) for v in cur.fetchone()]
        staged, read = counts[0], counts[1]
        # duplicate keys (or row ids) in the batch: the upsert collapses them first, otherwise it need not sort
        dedup = self.mode == "upsert" and (staged != read or counts[2] != counts[3])
        if plan.staged_rows is not None and plan.staged_rows != read:
            raise RowAccountingError(
                f"load into {plan.table_key}: the COPY writers reported {plan.staged_rows} row(s) but staging "
                f"{plan.staging_name} holds {read} distinct row id(s); rolled back")
        if staged != read:  # a Spark task that ran twice: same row ids, keep one copy
            log.warning("Staging %s holds %d copies of %d rows: deduplicating by row id",
                        plan.staging_name, staged, read)
            cur.execute(f"DELETE FROM {plan.staging} a USING {plan.staging} b "
                        f"WHERE a.{rid} = b.{rid} AND a.ctid > b.ctid")
            cur.execute(S.staging_counts_sql(plan.staging, self.keys if self.mode == "upsert" else ()))
            counts = [int(v) for v in cur.fetchone()]  # without the copies: what the merge will apply
        cur.execute(
            f"INSERT INTO {plan.log_table} (table_name, load_id, mode, rows, rows_read, rows_rejected) "
            "VALUES (%s, %s, %s, 0, 0, 0) ON CONFLICT (table_name, load_id) DO NOTHING",
            (plan.table_key, self.load_id, self.mode))
        if cur.rowcount == 0:
            recorded = self._recorded(cur, plan.log_table, plan.table_key)
            assert recorded is not None
            return _MergeResult(*recorded, superseded=0, statements=cur.statements, skipped=True)
        if self.mode == "overwrite":
            if self.overwrite_method == "truncate":
                cur.execute(f"TRUNCATE {plan.target}")
            else:
                cur.execute(f"DELETE FROM {plan.target}")
        isolated = False
        applied, err = self._apply_all(cur, plan, dedup)
        # rows the statement must apply: every row, less the in-batch duplicates of a key an upsert collapses
        # (not ``applied``: a trigger that silently drops rows would then pass for superseded duplicates)
        deduped = read - (counts[2] - counts[3]) if self.mode == "upsert" else read
        if err is not None:
            log.warning("Set-based merge into %s failed with a data error (%s: %s); isolating bad rows "
                        "in chunks of %d", plan.table_key, error_class(err), error_message(err).splitlines()[0],
                        self.chunk_rows)
            isolated = True
            applied, deduped = self._isolate(cur, plan)
        cur.execute(f"SELECT count(*) FROM {plan.rejects}")
        rejected_winners = int(cur.fetchone()[0])
        rejected_superseded = 0
        if self.mode == "upsert" and rejected_winners:
            cur.execute(S.superseded_rejects_sql(plan.staging, plan.rejects, self.keys))
            rejected_superseded = max(cur.rowcount, 0)
        superseded = read - deduped
        if applied + rejected_winners != deduped or superseded < 0:
            raise RowAccountingError(
                f"load into {plan.table_key}: {deduped} row(s) to apply but {applied} applied + "
                f"{rejected_winners} rejected (read {read}); rolled back")
        loaded = applied + superseded - rejected_superseded
        rejected = rejected_winners + rejected_superseded
        if read != loaded + rejected:
            raise RowAccountingError(
                f"load into {plan.table_key}: read {read} != loaded {loaded} + rejected {rejected}; rolled back")
        self._keep_rejects(cur, plan, rejected)
        self._record_log(cur, plan, read, loaded, rejected)
        return _MergeResult(read, loaded, rejected, superseded, cur.statements, isolated=isolated)

    def _record_log(self, cur: _Counter, plan: _Plan, read: int, loaded: int, rejected: int) -> None:
        cur.execute(
            f"UPDATE {plan.log_table} SET rows = %s, rows_read = %s, rows_rejected = %s, loaded_at = now(), "
            "dead_letter_state = %s, dead_letter_spooled = 0, dead_letter_spool = NULL, "
            "dead_letter_location = NULL, dead_letter_at = NULL WHERE table_name = %s AND load_id = %s",
            (loaded, read, rejected, PENDING if rejected else NONE, plan.table_key, self.load_id))

    def _keep_rejects(self, cur: _Counter, plan: _Plan, rejected: int) -> None:
        """Copy the rejected rows into the reject store, in the merge transaction: they commit with the load
        and stay until the dead-letter queue confirmed them (:meth:`record_dead_letters`)."""
        key = (plan.table_key, self.load_id)
        # rows of an earlier commit of this load id whose log row was deleted by hand to load it again
        cur.execute(f"DELETE FROM {plan.reject_store} WHERE table_name = %s AND load_id = %s", key)
        if not rejected:
            return
        rid = S.q(S.ROW_ID)
        record = "to_jsonb(s) - %s"
        # jsonb numbers have no -0, so floats go as their text (-0, NaN, Infinity and every digit survive)
        floats = [c.name for c in plan.columns if c.staging_type.removesuffix("[]") in ("double precision", "real")]
        if floats:
            names = ", ".join(_literal(n) for n in floats)
            texts = ", ".join(f"s.{S.q(n)}::text" for n in floats)
            record = f"({record}) || jsonb_object(ARRAY[{names}]::text[], ARRAY[{texts}]::text[])"
        cur.execute(
            f"INSERT INTO {plan.reject_store} (table_name, load_id, row_id, record, error, error_class) "
            f"SELECT %s, %s, s.{rid}, {record}, r.{S.q(S.ERROR)}, r.{S.q(S.ERROR_CLASS)} "
            f"FROM {plan.staging} s JOIN {plan.rejects} r ON r.{rid} = s.{rid}", (*key, S.ROW_ID))
        if cur.rowcount != rejected:
            raise RowAccountingError(
                f"load into {plan.table_key}: {rejected} row(s) rejected but {cur.rowcount} kept in "
                f"{plan.reject_store} for the dead-letter queue; rolled back")

    def record_dead_letters(self, *, delivered: bool, location: str | None = None, spooled: int = 0,
                            spool_paths: Sequence[str] = ()) -> None:
        """Record in the load log whether the dead-letter queue confirmed every rejected row of this load.

        Call it after :meth:`load` committed rows with rejects (``dead_letter_state == "pending"``):
        ``delivered=True`` only once the DLQ confirmed *every* rejected row; the state becomes ``delivered``
        and the rows leave the reject store, in one transaction. ``delivered=False`` keeps the state
        ``pending`` (and the rows) and records where the rows that could not be delivered were spooled,
        so that a retry on the same worker can re-send exactly those.

        :param delivered: the DLQ confirmed every rejected row.
        :param location: where they went (safe to log: no credentials).
        :param spooled: rows written to the local spool instead (``delivered=False``).
        :param spool_paths: the spool files holding them.
        :raises RuntimeError: :meth:`load` has not run.
        """
        plan = self._plan
        if plan is None:
            raise RuntimeError("record_dead_letters() needs a load(): call it after PostgresLoader.load()")

        def record() -> None:
            with self._connect(autocommit=False) as conn:
                cur = conn.cursor()
                try:
                    cur.execute(
                        f"UPDATE {plan.log_table} SET dead_letter_state = %s, dead_letter_spooled = %s, "
                        "dead_letter_spool = %s, dead_letter_location = %s, dead_letter_at = now() "
                        "WHERE table_name = %s AND load_id = %s",
                        (DELIVERED if delivered else PENDING, 0 if delivered else spooled,
                         None if delivered else list(spool_paths), location, plan.table_key, self.load_id))
                    if cur.rowcount != 1:
                        raise RowAccountingError(
                            f"load {self.load_id} into {plan.table_key} has no row in {plan.log_table}: cannot "
                            "record its dead letters (was the log row deleted?)")
                    if delivered:
                        cur.execute(f"DELETE FROM {plan.reject_store} WHERE table_name = %s AND load_id = %s",
                                    (plan.table_key, self.load_id))
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise
                conn.commit()

        self._call(record)
        log.info("Load %s into %s: dead letters %s%s", self.load_id, plan.table_key,
                 "delivered" if delivered else f"pending, {spooled} spooled to {', '.join(spool_paths) or '-'}",
                 f" ({location})" if location else "")

    #: ``False`` once the client library could not report a ``MERGE``'s row count (libpq < 15): from then on
    #: this process upserts with ``INSERT ... ON CONFLICT`` only.
    merge_row_counts = True

    def _apply_all(self, cur: _Counter, plan: _Plan, dedup: bool) -> tuple[int, Any]:
        """The clean path: every staged row in one set-based statement, under a savepoint. ``(rows applied,
        None)``, or ``(0, error)`` after rolling back a *data* error (then the rows are isolated).

        An upsert runs as ``MERGE`` (PostgreSQL 15+, a target without rules): ~25% less CPU and WAL than
        ``INSERT ... ON CONFLICT DO UPDATE`` (measured, ``benchmarks/bench_load_postgres.py``). The staged rows
        are deduplicated only when a key occurs twice (``dedup``: the sort costs ~15% of the merge), and
        sorted by key when they were staged in random key order (then the index and heap pages are visited
        in order: ~30% less CPU for 1M rows, more once the table outgrows memory). If ``MERGE`` fails other
        than on a bad row -- a unique violation (a concurrent insert of the same key, or a key that only
        compares equal once stored), an unsupported target -- it is rolled back and the rows are applied
        with ``INSERT ... ON CONFLICT`` (deduplicated) as before.
        """
        conflict = S.fast_merge_sql(self.mode, plan.target, plan.staging, plan.columns, self.keys, dedup=dedup)
        if self.mode != "upsert" or not self._merge_usable(cur, plan):
            return _in_savepoint(cur, "etl_merge", conflict)
        ordered = not dedup and not self._staged_in_key_order(cur, plan)
        source = S.upsert_source_sql(plan.staging, self.keys, dedup, ordered)
        fallback = S.fast_merge_sql(self.mode, plan.target, plan.staging, plan.columns, self.keys)
        applied, err = self._merge_or_insert(cur, plan, "etl_merge", source, fallback)
        log.debug("Upsert into %s: %d row(s) applied (deduplicated: %s, sorted by key: %s)", plan.table_key, applied,
                  dedup, ordered)
        return applied, err

    def _merge_or_insert(self, cur: _Counter, plan: _Plan, savepoint: str, source: str,
                         fallback: str) -> tuple[int, Any]:
        """``MERGE`` the rows of ``source`` under a savepoint, like :func:`_in_savepoint`; if it fails other
        than on a bad row (a unique violation included), or its row count cannot be read, roll it back and run
        the ``INSERT ... ON CONFLICT`` statement ``fallback`` instead."""
        cur.execute(f"SAVEPOINT {savepoint}")
        try:
            cur.execute(S.merge_upsert_sql(plan.target, source, plan.columns, self.keys))
            applied = cur.rowcount
        except Exception as err:
            kind = classify_postgres(err)
            if kind is ErrorKind.TRANSIENT:
                raise
            cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
            cur.execute(f"RELEASE SAVEPOINT {savepoint}")
            if kind is ErrorKind.DATA and (getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)) != "23505":
                return 0, err  # a bad row, which INSERT ... ON CONFLICT would refuse just the same
            log.info("MERGE into %s failed (%s: %s); applying the rows with INSERT ... ON CONFLICT instead",
                     plan.table_key, error_class(err), error_message(err).splitlines()[0])
            return _in_savepoint(cur, savepoint, fallback)
        if applied < 0:  # the client library cannot read MERGE's command tag: undo, use ON CONFLICT
            cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
            cur.execute(f"RELEASE SAVEPOINT {savepoint}")
            PostgresLoader.merge_row_counts = False
            log.warning("The PostgreSQL client library reports no MERGE row count (libpq < 15?): upserting with "
                        "INSERT ... ON CONFLICT from now on")
            return _in_savepoint(cur, savepoint, fallback)
        cur.execute(f"RELEASE SAVEPOINT {savepoint}")
        return applied, None

    def _merge_usable(self, cur: _Counter, plan: _Plan) -> bool:
        """Whether the upsert can run as ``MERGE``: PostgreSQL 15+, a target without rules, row counts read."""
        if not PostgresLoader.merge_row_counts:
            return False
        cur.execute("SELECT current_setting('server_version_num')::int >= 150000 AND NOT c.relhasrules "
                    "FROM pg_class c WHERE c.oid = to_regclass(%s)", (plan.target,))
        row = cur.fetchone()
        return bool(row and row[0])

    def _staged_in_key_order(self, cur: _Counter, plan: _Plan) -> bool:
        """Whether the staged rows come page by page in key order (ascending or descending): Spark partitions
        of a key-ordered input, however many wrote at once, but not a shuffled DataFrame. Judged on the first
        20,000 staged rows (their neighbours in physical order); a few hundred rows are never sorted."""
        cur.execute(S.key_order_sample_sql(plan.staging, self.keys, 20_000))
        ascending, descending, pairs = (int(v or 0) for v in cur.fetchone())
        return pairs < 1000 or max(ascending, descending) >= 0.75 * pairs

    def _isolate(self, cur: _Counter, plan: _Plan) -> tuple[int, int]:
        """Apply the staged rows, isolating the bad ones; return (rows applied, rows to apply).

        First a set-based screen picks *suspects* (a NULL for a NOT NULL column, a string longer than
        its column, a failing CHECK expression, a dangling foreign key); the other rows go in with one
        statement and each suspect under its own savepoint, so PostgreSQL itself decides and words the
        error. If the screen cannot run or the rest still fails, chunks + bisection apply everything.
        """
        screened = self._screened(cur, plan)
        if screened is not None:
            return screened
        work = S.q(WORK_TABLE)
        cur.execute(f"DROP TABLE IF EXISTS {work}")
        cur.execute(S.work_table_sql(self.mode, work, plan.staging, self.keys))
        cur.execute(f"CREATE INDEX ON {work} ({S.q(S.ORDINAL)})")
        cur.execute(f"SELECT count(*) FROM {work}")
        total = int(cur.fetchone()[0])
        sql = S.range_merge_sql(self.mode, plan.target, work, plan.columns, self.keys)
        bad: list[tuple[str, str, int]] = []
        applied = 0
        for lo in range(1, total + 1, self.chunk_rows):
            applied += self._apply_range(cur, sql, lo, min(lo + self.chunk_rows - 1, total), bad)
        if bad:
            cur.executemany(
                f"INSERT INTO {plan.rejects} ({S.q(S.ROW_ID)}, {S.q(S.ERROR)}, {S.q(S.ERROR_CLASS)}) "
                f"SELECT {S.q(S.ROW_ID)}, %s, %s FROM {work} WHERE {S.q(S.ORDINAL)} = %s", bad)
        log.info("Isolated %d bad row(s) of %d in %s by chunks and bisection (%d statements)", len(bad), total,
                 plan.table_key, cur.statements)
        return applied, total

    def _screen_predicates(self, cur: _Counter, plan: _Plan) -> tuple[list[str], list[str]]:
        """(safe, risky) suspect predicates over the staged columns (alias ``w``)."""
        safe: list[str] = []
        risky: list[str] = []
        staged = {c.name for c in plan.columns}
        cur.execute("SELECT a.attname, a.attnotnull, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                    "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped", (plan.target,))
        for name, notnull, full_type in cur.fetchall():
            if name not in staged:
                continue
            if notnull:
                safe.append(f"w.{S.q(name)} IS NULL")
            length = S.declared_length(str(full_type))
            if length is not None:
                safe.append(f"char_length(w.{S.q(name)}::text) > {length}")
        cur.execute("SELECT pg_get_expr(conbin, conrelid) FROM pg_constraint WHERE conrelid = to_regclass(%s) "
                    "AND contype = 'c'", (plan.target,))
        risky += [f"({expr}) IS FALSE" for (expr,) in cur.fetchall()]
        cur.execute(
            "SELECT confrelid::regclass::text, array_agg(a.attname::text ORDER BY k.i), "
            "array_agg(f.attname::text ORDER BY k.i) FROM pg_constraint c "
            "CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(col, fcol, i) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.col "
            "JOIN pg_attribute f ON f.attrelid = c.confrelid AND f.attnum = k.fcol "
            "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' GROUP BY c.oid, c.confrelid", (plan.target,))
        for ref, cols, ref_cols in cur.fetchall():
            if not set(cols) <= staged:
                continue
            with contextlib.suppress(ConfigError):
                match = " AND ".join(f"r.{S.q(rc)} = w.{S.q(c)}" for c, rc in zip(cols, ref_cols, strict=True))
                present = " AND ".join(f"w.{S.q(c)} IS NOT NULL" for c in cols)
                risky.append(f"({present} AND NOT EXISTS (SELECT 1 FROM {ref} r WHERE {match}))")
        return safe, risky

    def _screened(self, cur: _Counter, plan: _Plan) -> tuple[int, int] | None:
        safe, risky = self._screen_predicates(cur, plan)
        suspect = S.q("_etl_suspect")
        source = (S.dedup_source_sql(plan.staging, self.keys) if self.mode == "upsert"
                  else f"SELECT s.* FROM {plan.staging} s")
        built = False
        for preds in ([*safe, *risky], safe):
            if not preds:
                continue
            cur.execute("SAVEPOINT etl_screen")
            try:
                cur.execute(f"DROP TABLE IF EXISTS {suspect}")
                cur.execute(f"CREATE TEMP TABLE {suspect} ON COMMIT DROP AS SELECT w.* FROM ({source}) w "
                            f"WHERE {' OR '.join(preds)}")
                cur.execute("RELEASE SAVEPOINT etl_screen")
                built = True
                break
            except Exception as err:  # a CHECK over a column staged as text, say: screen without it
                if classify_postgres(err) is ErrorKind.TRANSIENT:
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT etl_screen")
                cur.execute("RELEASE SAVEPOINT etl_screen")
        if not built:
            return None
        rid = S.q(S.ROW_ID)
        cur.execute(f"SELECT {rid} FROM {suspect} ORDER BY {rid}")
        suspects = [int(r[0]) for r in cur.fetchall()]
        select = ", ".join(c.expr() for c in plan.columns)
        conflict = S.on_conflict_sql(self.keys, plan.columns) if self.mode == "upsert" else ""
        rest = f"SELECT s.* FROM ({source}) s WHERE NOT EXISTS (SELECT 1 FROM {suspect} x WHERE x.{rid} = s.{rid})"
        rest_insert = S.insert_prefix(plan.target, plan.columns) + f"SELECT {select} FROM ({rest}) s" + conflict
        if self.mode == "upsert" and self._merge_usable(cur, plan):
            applied, err = self._merge_or_insert(cur, plan, "etl_rest", f"({rest})", rest_insert)
        else:
            applied, err = _in_savepoint(cur, "etl_rest", rest_insert)
        if err is not None:
            return None  # bad rows the screen did not catch: chunks and bisection
        one = S.insert_prefix(plan.target, plan.columns) + f"SELECT {select} FROM {suspect} s WHERE s.{rid} = %s" + conflict
        bad: list[tuple[int, str, str]] = []
        for row_id in suspects:
            n, err = _in_savepoint(cur, "etl_row", one, (row_id,))
            applied += n
            if err is not None:
                bad.append((row_id, error_message(err), error_class(err)))
        if bad:
            cur.executemany(f"INSERT INTO {plan.rejects} ({rid}, {S.q(S.ERROR)}, {S.q(S.ERROR_CLASS)}) "
                            "VALUES (%s, %s, %s)", bad)
        total = applied + len(bad)
        log.info("Isolated %d bad row(s) of %d in %s: %d suspect(s) screened set-based (%d statements)",
                 len(bad), total, plan.table_key, len(suspects), cur.statements)
        return applied, total

    def _apply_range(self, cur: _Counter, sql: str, lo: int, hi: int, bad: list[tuple[str, str, int]]) -> int:
        applied, err = _in_savepoint(cur, "etl_chunk", sql, (lo, hi))
        if err is None:
            return applied
        if lo == hi:
            bad.append((error_message(err), error_class(err), lo))
            return 0
        mid = (lo + hi) // 2
        return self._apply_range(cur, sql, lo, mid, bad) + self._apply_range(cur, sql, mid + 1, hi, bad)

    # ------------------------------------------------------------------------------------ rejected

    #: Up to this many rejected rows are fetched by the driver and become a local DataFrame (no Spark
    #: job); more are read by Spark's JDBC reader and materialised with ``localCheckpoint``.
    LOCAL_REJECTED_MAX = 10_000

    def _rejected_query(self, plan: _Plan) -> str:
        """The load's rejected rows from the reject store, each column back in its staging type, so they are
        exactly the values staging held: the first hand-over and every re-send build the same envelopes."""
        cols = ", ".join(f"x.{S.q(c.name)}" for c in plan.columns)
        defs = ", ".join(f"{S.q(c.name)} {c.staging_type}" for c in plan.columns)
        return (f"SELECT {cols}, r.error AS {S.q(S.ERROR)}, r.error_class AS {S.q(S.ERROR_CLASS)} "
                f"FROM {plan.reject_store} r CROSS JOIN LATERAL jsonb_to_record(r.record) AS x({defs}) "
                f"WHERE r.table_name = {_literal(plan.table_key)} AND r.load_id = {_literal(self.load_id)}")

    def _read_rejected(self, df: DataFrame, plan: _Plan, expected: int) -> DataFrame:
        """The rejected rows (original columns and types + ``_etl_error``, ``_etl_error_class``), in row-id order.

        :raises RowAccountingError: the reject store does not hold ``expected`` rows for this load.
        """
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType, StructField, StructType

        types = {f.name: f.dataType for f in df.schema.fields}
        schema = StructType([StructField(c.source, types[c.source]) for c in plan.columns]
                            + [StructField(S.ERROR, StringType()), StructField(S.ERROR_CLASS, StringType())])
        query = self._rejected_query(plan)
        rejected: DataFrame | None = None
        if expected <= self.LOCAL_REJECTED_MAX:
            with self._connect(autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(f"{query} ORDER BY r.row_id LIMIT {self.LOCAL_REJECTED_MAX + 1}")
                try:
                    rows = [tuple(r) for r in cur.fetchall()]
                    rejected = df.sparkSession.createDataFrame(rows, schema)
                    found = len(rows)
                except Exception as err:  # a value Python or the schema cannot take: Spark's JDBC reader can
                    log.info("Reading the rejected rows with Spark's JDBC reader (%s: %s)", type(err).__name__,
                             error_message(err).splitlines()[0] if str(err).strip() else "")
        if rejected is None:
            options = self._jdbc_options()
            options["query"] = query
            raw = df.sparkSession.read.format("jdbc").options(**options).load()
            rejected = raw.select(
                *[F.col(c.name).cast(types[c.source]).alias(c.source) for c in plan.columns],
                F.col(S.ERROR), F.col(S.ERROR_CLASS),
            ).localCheckpoint(eager=True)
            found = rejected.count()
        if found != expected:
            raise RowAccountingError(
                f"load {self.load_id} into {plan.table_key}: {expected} row(s) were rejected but {plan.reject_store} "
                f"holds {found} for it; check the rows of that load id there and in {plan.log_table}")
        return rejected

    # ------------------------------------------------------------------------------------- cleanup

    def _drop_staging(self, plan: _Plan) -> None:
        try:
            with self._connect(autocommit=True) as conn:
                conn.cursor().execute(f"DROP TABLE IF EXISTS {plan.staging}, {plan.rejects}")
        except Exception as err:  # never hide the load's own error; the next run with this load id drops it
            log.warning("Could not drop staging table %s: %s", plan.staging_name, err)


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
            log.info("Staging %s (%s): progress every %gs gives the rows staged so far; partitions are not "
                     "available on Spark Connect (no SparkContext status tracker)", self.plan.table_key, self.method,
                     self.interval)
        self._thread = threading.Thread(target=self._run, name=f"etl-progress-{self.plan.staging_name}", daemon=True)
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
        return (f"Staging {self.plan.table_key} ({self.method}, {elapsed:.0f}s): "
                + ("; ".join(parts) if parts else "waiting for the staging job to start"))

    def _partitions(self) -> str | None:
        if self.sc is None:
            return None
        try:
            tracker = self.sc.statusTracker()
            jobs = tracker.getJobIdsForGroup(self.group)
            info = tracker.getJobInfo(max(jobs)) if jobs else None
            stages = [tracker.getStageInfo(s) for s in sorted(info.stageIds)] if info is not None else []
        except Exception as err:  # the tracker is best effort: never let it fail the load
            log.warning("Staging progress: the Spark status tracker failed (%s: %s); partitions are no longer "
                        "reported", type(err).__name__, err)
            self.sc = None
            return None
        known = [s for s in stages if s is not None]
        if not known:
            return None
        last = known[-1]
        text = (f"{last.numCompletedTasks}/{last.numTasks} partitions done, {last.numActiveTasks} running"
                + (f", {last.numFailedTasks} failed attempt(s)" if last.numFailedTasks else ""))
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
                cur.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                            (str(timeout_ms), str(timeout_ms)))
                cur.execute(f"SELECT count(*) FROM {self.plan.staging}")
                rows = int(cur.fetchone()[0])
                if self.method == "copy":
                    cur.execute("SELECT coalesce(sum(tuples_processed), 0) FROM pg_stat_progress_copy "
                                "WHERE relid = to_regclass(%s)", (self.plan.staging,))
                    rows += int(cur.fetchone()[0])
        except Exception as err:  # best effort: never let the progress log fail or slow the load
            log.warning("Staging progress: counting the staged rows failed (%s: %s); rows are no longer "
                        "reported", type(err).__name__, error_message(err).splitlines()[0] if str(err).strip() else "")
            self.count_rows = False
            return None
        return rows
