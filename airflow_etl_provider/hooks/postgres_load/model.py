"""What the load's phases pass on: the plan, the merge result, the outcome; names and states."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_etl_provider.core import sql as S

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


log = logging.getLogger("airflow_etl_provider.hooks.postgres_load")  # one logger for the engine


MODES = ("append", "overwrite", "upsert")
STAGE_METHODS = S.STAGE_METHODS
COPY_WRITERS = S.COPY_WRITERS
COPY_FORMATS = S.COPY_FORMATS
#: psycopg connection parameters the COPY writers never take from the connection's extras.
WORK_TABLE = "_etl_work"
#: The durable copy of every committed load's rejected rows until the dead-letter queue confirmed them.
REJECT_STORE_TABLE = "etl_load_rejects"
#: ``etl_load_log.dead_letter_state``: nothing rejected / rejected rows not yet confirmed by the DLQ /
#: confirmed. NULL (rows written before these columns existed) is treated as delivered.
NONE, PENDING, DELIVERED = "none", "pending", "delivered"
#: Columns added to an existing load log (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``).
LOAD_LOG_DLQ_COLUMNS = (
    ("dead_letter_state", "text"),
    ("dead_letter_spooled", "bigint"),
    ("dead_letter_spool", "text[]"),
    ("dead_letter_location", "text"),
    ("dead_letter_at", "timestamptz"),
)


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
    keys_checked_at_once: bool = False  # upsert: a unique index on exactly the keys is not DEFERRABLE
    stage_method: str = ""
    copy_writer: str = ""  # with COPY: jvm | python
    copy_format: str = ""  # with COPY: binary | csv
    reject_store: str = ""  # quoted: the durable copy of the rejected rows (etl_load_rejects)
    reject_source: str = ""  # quoted: a table of the merge transaction holding every rejected row's staged
    #                          columns (the screen's suspects); empty: the staging table
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
