"""The load log row and the reject store: what a committed load recorded, its rejected rows kept
until the dead-letter queue confirmed them, and reading them back."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import RowAccountingError
from airflow_etl_provider.hooks.postgres_load.model import (
    DELIVERED,
    NONE,
    PENDING,
    _Plan,
    log,
)
from airflow_etl_provider.hooks.postgres_load.savepoints import (
    _Counter,
    error_message,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def _literal(value: str) -> str:
    """A PostgreSQL string literal (``E'...'``: backslashes escaped whatever standard_conforming_strings
    says), for the one query Spark's JDBC reader runs without parameters."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _create_reject_store_sql(store: str) -> str:
    """The reject store: each rejected row of a committed load (its staged columns as ``jsonb``, read back
    with ``jsonb_to_record`` and the staging types) with PostgreSQL's message, until the DLQ confirmed it."""
    return (
        f"CREATE TABLE IF NOT EXISTS {store} (table_name text NOT NULL, load_id text NOT NULL, "
        "row_id bigint NOT NULL, record jsonb NOT NULL, error text, error_class text, "
        "PRIMARY KEY (table_name, load_id, row_id))"
    )


class _LoadLog:
    """The load log and the reject store (a part of :class:`PostgresLoader`)."""

    def _record_log(self, cur: _Counter, plan: _Plan, read: int, loaded: int, rejected: int) -> None:
        cur.execute(
            f"UPDATE {plan.log_table} SET rows = %s, rows_read = %s, rows_rejected = %s, loaded_at = now(), "
            "dead_letter_state = %s, dead_letter_spooled = 0, dead_letter_spool = NULL, "
            "dead_letter_location = NULL, dead_letter_at = NULL WHERE table_name = %s AND load_id = %s",
            (loaded, read, rejected, PENDING if rejected else NONE, plan.table_key, self.load_id),
        )

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
        floats = [
            c.name for c in plan.columns if c.staging_type.removesuffix("[]") in ("double precision", "real")
        ]
        if floats:
            names = ", ".join(_literal(n) for n in floats)
            texts = ", ".join(f"s.{S.q(n)}::text" for n in floats)
            record = f"({record}) || jsonb_object(ARRAY[{names}]::text[], ARRAY[{texts}]::text[])"
        cur.execute(
            f"INSERT INTO {plan.reject_store} (table_name, load_id, row_id, record, error, error_class) "
            f"SELECT %s, %s, s.{rid}, {record}, r.{S.q(S.ERROR)}, r.{S.q(S.ERROR_CLASS)} "
            f"FROM {plan.reject_source or plan.staging} s JOIN {plan.rejects} r ON r.{rid} = s.{rid}",
            (*key, S.ROW_ID),
        )
        if cur.rowcount != rejected:
            raise RowAccountingError(
                f"load into {plan.table_key}: {rejected} row(s) rejected but {cur.rowcount} kept in "
                f"{plan.reject_store} for the dead-letter queue; rolled back"
            )

    def record_dead_letters(
        self,
        *,
        delivered: bool,
        location: str | None = None,
        spooled: int = 0,
        spool_paths: Sequence[str] = (),
    ) -> None:
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
                        (
                            DELIVERED if delivered else PENDING,
                            0 if delivered else spooled,
                            None if delivered else list(spool_paths),
                            location,
                            plan.table_key,
                            self.load_id,
                        ),
                    )
                    if cur.rowcount != 1:
                        raise RowAccountingError(
                            f"load {self.load_id} into {plan.table_key} has no row in {plan.log_table}: cannot "
                            "record its dead letters (was the log row deleted?)"
                        )
                    if delivered:
                        cur.execute(
                            f"DELETE FROM {plan.reject_store} WHERE table_name = %s AND load_id = %s",
                            (plan.table_key, self.load_id),
                        )
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise
                conn.commit()

        self._call(record)
        log.info(
            "Load %s into %s: dead letters %s%s",
            self.load_id,
            plan.table_key,
            "delivered" if delivered else f"pending, {spooled} spooled to {', '.join(spool_paths) or '-'}",
            f" ({location})" if location else "",
        )

    # ------------------------------------------------------------------------------------ rejected

    #: Up to this many rejected rows are fetched by the driver and become a local DataFrame (no Spark
    #: job); more are read by Spark's JDBC reader and materialised with ``localCheckpoint``.
    LOCAL_REJECTED_MAX = 10_000

    def _rejected_query(self, plan: _Plan) -> str:
        """The load's rejected rows from the reject store, each column back in its staging type, so they are
        exactly the values staging held: the first hand-over and every re-send build the same envelopes."""
        cols = ", ".join(f"x.{S.q(c.name)}" for c in plan.columns)
        defs = ", ".join(f"{S.q(c.name)} {c.staging_type}" for c in plan.columns)
        return (
            f"SELECT {cols}, r.error AS {S.q(S.ERROR)}, r.error_class AS {S.q(S.ERROR_CLASS)} "
            f"FROM {plan.reject_store} r CROSS JOIN LATERAL jsonb_to_record(r.record) AS x({defs}) "
            f"WHERE r.table_name = {_literal(plan.table_key)} AND r.load_id = {_literal(self.load_id)}"
        )

    def _read_rejected(self, df: DataFrame, plan: _Plan, expected: int) -> DataFrame:
        """The rejected rows (original columns and types + ``_etl_error``, ``_etl_error_class``), in row-id order.

        :raises RowAccountingError: the reject store does not hold ``expected`` rows for this load.
        """
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType, StructField, StructType

        types = {f.name: f.dataType for f in df.schema.fields}
        schema = StructType(
            [StructField(c.source, types[c.source]) for c in plan.columns]
            + [StructField(S.ERROR, StringType()), StructField(S.ERROR_CLASS, StringType())]
        )
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
                    log.info(
                        "Reading the rejected rows with Spark's JDBC reader (%s: %s)",
                        type(err).__name__,
                        error_message(err).splitlines()[0] if str(err).strip() else "",
                    )
        if rejected is None:
            options = self._jdbc_options()
            options["query"] = query
            raw = df.sparkSession.read.format("jdbc").options(**options).load()
            rejected = raw.select(
                *[F.col(c.name).cast(types[c.source]).alias(c.source) for c in plan.columns],
                F.col(S.ERROR),
                F.col(S.ERROR_CLASS),
            ).localCheckpoint(eager=True)
            found = rejected.count()
        if found != expected:
            raise RowAccountingError(
                f"load {self.load_id} into {plan.table_key}: {expected} row(s) were rejected but {plan.reject_store} "
                f"holds {found} for it; check the rows of that load id there and in {plan.log_table}"
            )
        return rejected
