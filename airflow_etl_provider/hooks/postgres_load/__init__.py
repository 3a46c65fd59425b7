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
   any Unicode survive), decimals are written exactly, timestamps in UTC with a ``Z`` (into a
   ``timestamp without time zone`` column: the wall-clock time in the session time zone, like
   Spark's JDBC writer with the default JVM time zone; both rendered with Arrow's vectorised kernels,
   since the CSV writer's own zoned-timestamp formatting costs ~5 s of CPU per million values), binary
   as ``\\x`` hex. Each partition
   returns one status row (partition, attempt, rows written); their sum must equal the staged row ids
   the merge counts. The connection parameters are resolved on the driver from the Airflow
   connection and travel inside the task closure; they are never logged. The executors' Python needs
   ``psycopg`` (3) and ``pyarrow``. A DataFrame with a column COPY cannot render (arrays, maps,
   structs, intervals) is staged with JDBC instead, and so is every row when the executors have no
   ``psycopg`` or ``pyarrow`` (the COPY job fails with ``ModuleNotFoundError``; a warning names the fix).
   Staging 1M rows this way costs about half of JDBC staging (``benchmarks/bench_load_postgres.py``); the
   load operator takes it as ``target.stage_method``. ``copy_writer="jvm"`` (what ``auto``, the load
   operator's default, picks on a classic session with ``airflow-etl-jvm.jar`` on ``spark.jars``) renders the
   same CSV on Spark's JVM side from its internal rows and streams it with PgJDBC's ``CopyManager``, one
   connection and transaction per task attempt, one status row per partition, no Python worker and no Arrow
   hand-over (:mod:`.jvm_copy`); ``copy_writer="python"`` is the Arrow writer above (this class's default).
   ``stage_method="jdbc"`` (the default: nothing needed on the executors): Spark's JDBC writer appends the
   rows (batched, rewritten multi-row inserts).
3. **Merge**, in ONE transaction: the load-log row is inserted first (``ON CONFLICT DO NOTHING``: a
   concurrent or earlier run with the same load id makes this one a no-op), overwrite deletes the old
   rows, then one set-based statement moves every staged row: ``INSERT ... SELECT``, or for upsert
   ``MERGE INTO target USING staging ON keys ... WHEN MATCHED THEN UPDATE ... WHEN NOT MATCHED THEN
   INSERT`` (PostgreSQL 15+; ~25% cheaper than ``INSERT ... ON CONFLICT DO UPDATE``). Staged by COPY, into a
   target whose unique key index is checked at once, the upsert runs ``MERGE`` first and checks after: a key
   twice in the batch fails the statement itself, and its row count must equal the writers' total and
   ``count(*)`` of staging; otherwise it is rolled back to a savepoint and the counts below decide (a
   ``MERGE`` that failed on a bad row is not run twice). Else the one scan that
   counts the staged rows (the distinct row ids only when the COPY writers' reported total differs from
   ``count(*)``) also tells whether a key occurs twice: only then is the source deduplicated
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

from airflow_etl_provider.hooks.postgres_load.loader import PostgresLoader
from airflow_etl_provider.hooks.postgres_load.model import (
    DELIVERED,
    LOAD_LOG_DLQ_COLUMNS,
    MODES,
    NONE,
    PENDING,
    REJECT_STORE_TABLE,
    STAGE_METHODS,
    WORK_TABLE,
    LoadOutcome,
)
from airflow_etl_provider.hooks.postgres_load.savepoints import error_class, error_message

__all__ = [
    "DELIVERED",
    "LOAD_LOG_DLQ_COLUMNS",
    "MODES",
    "NONE",
    "PENDING",
    "REJECT_STORE_TABLE",
    "STAGE_METHODS",
    "WORK_TABLE",
    "LoadOutcome",
    "PostgresLoader",
    "error_class",
    "error_message",
]
