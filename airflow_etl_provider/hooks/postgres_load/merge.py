"""The merge transaction: every staged row in one set-based statement (``INSERT ... SELECT``, ``MERGE`` or
``INSERT ... ON CONFLICT``), the accounting checks, the load log row in the same transaction."""

from __future__ import annotations

import contextlib
from typing import Any

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ErrorKind, RowAccountingError, classify_postgres
from airflow_etl_provider.hooks.postgres_load.model import (
    _MergeResult,
    _Plan,
    log,
)
from airflow_etl_provider.hooks.postgres_load.savepoints import (
    _Counter,
    _in_savepoint,
    error_class,
    error_message,
)


class _Merging:
    """The merge (a part of :class:`PostgresLoader`)."""

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
        plan.reject_source = ""  # a table of an earlier, rolled back attempt is gone
        cur.execute("SELECT set_config('work_mem', %s, true)", (self.merge_work_mem,))
        keys = self.keys if self.mode == "upsert" else ()
        # The COPY writers reported how many rows they committed: when staging holds exactly that many, no
        # task attempt wrote its rows twice and the distinct row ids need not be counted.
        quick = plan.staged_rows is not None
        cur.execute(S.staging_counts_sql(plan.staging, keys, row_ids=not quick))
        counts = [int(v) for v in cur.fetchone()]
        if quick and counts[0] != plan.staged_rows:
            cur.execute(S.staging_counts_sql(plan.staging, keys))
            counts = [int(v) for v in cur.fetchone()]
        staged, read = counts[0], counts[1]
        # duplicate keys (or row ids) in the batch: the upsert collapses them first, otherwise it need not sort
        dedup = self.mode == "upsert" and (staged != read or counts[2] != counts[3])
        if plan.staged_rows is not None and plan.staged_rows != read:
            raise RowAccountingError(
                f"load into {plan.table_key}: the COPY writers reported {plan.staged_rows} row(s) but staging "
                f"{plan.staging_name} holds {read} distinct row id(s); rolled back"
            )
        if staged != read:  # a Spark task that ran twice: same row ids, keep one copy
            log.warning(
                "Staging %s holds %d copies of %d rows: deduplicating by row id",
                plan.staging_name,
                staged,
                read,
            )
            cur.execute(
                f"DELETE FROM {plan.staging} a USING {plan.staging} b "
                f"WHERE a.{rid} = b.{rid} AND a.ctid > b.ctid"
            )
            cur.execute(S.staging_counts_sql(plan.staging, self.keys if self.mode == "upsert" else ()))
            counts = [int(v) for v in cur.fetchone()]  # without the copies: what the merge will apply
        cur.execute(
            f"INSERT INTO {plan.log_table} (table_name, load_id, mode, rows, rows_read, rows_rejected) "
            "VALUES (%s, %s, %s, 0, 0, 0) ON CONFLICT (table_name, load_id) DO NOTHING",
            (plan.table_key, self.load_id, self.mode),
        )
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
            log.warning(
                "Set-based merge into %s failed with a data error (%s: %s); isolating bad rows "
                "in chunks of %d",
                plan.table_key,
                error_class(err),
                error_message(err).splitlines()[0],
                self.chunk_rows,
            )
            isolated = True
            applied, deduped = self._isolate(cur, plan, dedup)
        cur.execute(f"SELECT count(*) FROM {plan.rejects}")
        rejected_winners = int(cur.fetchone()[0])
        rejected_superseded = 0
        # rows superseded by a rejected row of the same key: only where a key occurs twice (``dedup``), so
        # the join of staging with itself (~0.5-1 s per 1M rows) runs only then
        if self.mode == "upsert" and rejected_winners and dedup:
            cur.execute(S.superseded_rejects_sql(plan.staging, plan.rejects, self.keys))
            rejected_superseded = max(cur.rowcount, 0)
        superseded = read - deduped
        if applied + rejected_winners != deduped or superseded < 0:
            raise RowAccountingError(
                f"load into {plan.table_key}: {deduped} row(s) to apply but {applied} applied + "
                f"{rejected_winners} rejected (read {read}); rolled back"
            )
        loaded = applied + superseded - rejected_superseded
        rejected = rejected_winners + rejected_superseded
        if read != loaded + rejected:
            raise RowAccountingError(
                f"load into {plan.table_key}: read {read} != loaded {loaded} + rejected {rejected}; rolled back"
            )
        self._keep_rejects(cur, plan, rejected)
        self._record_log(cur, plan, read, loaded, rejected)
        return _MergeResult(read, loaded, rejected, superseded, cur.statements, isolated=isolated)

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
        conflict = S.fast_merge_sql(
            self.mode, plan.target, plan.staging, plan.columns, self.keys, dedup=dedup
        )
        if self.mode != "upsert" or not self._merge_usable(cur, plan):
            return _in_savepoint(cur, "etl_merge", conflict)
        ordered = not dedup and not self._staged_in_key_order(cur, plan)
        source = S.upsert_source_sql(plan.staging, self.keys, dedup, ordered)
        fallback = S.fast_merge_sql(self.mode, plan.target, plan.staging, plan.columns, self.keys)
        applied, err = self._merge_or_insert(cur, plan, "etl_merge", source, fallback)
        log.debug(
            "Upsert into %s: %d row(s) applied (deduplicated: %s, sorted by key: %s)",
            plan.table_key,
            applied,
            dedup,
            ordered,
        )
        return applied, err

    def _merge_or_insert(
        self, cur: _Counter, plan: _Plan, savepoint: str, source: str, fallback: str
    ) -> tuple[int, Any]:
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
            if (
                kind is ErrorKind.DATA
                and (getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)) != "23505"
            ):
                return 0, err  # a bad row, which INSERT ... ON CONFLICT would refuse just the same
            log.info(
                "MERGE into %s failed (%s: %s); applying the rows with INSERT ... ON CONFLICT instead",
                plan.table_key,
                error_class(err),
                error_message(err).splitlines()[0],
            )
            return _in_savepoint(cur, savepoint, fallback)
        if applied < 0:  # the client library cannot read MERGE's command tag: undo, use ON CONFLICT
            cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
            cur.execute(f"RELEASE SAVEPOINT {savepoint}")
            _Merging.merge_row_counts = False
            log.warning(
                "The PostgreSQL client library reports no MERGE row count (libpq < 15?): upserting with "
                "INSERT ... ON CONFLICT from now on"
            )
            return _in_savepoint(cur, savepoint, fallback)
        cur.execute(f"RELEASE SAVEPOINT {savepoint}")
        return applied, None

    def _merge_usable(self, cur: _Counter, plan: _Plan) -> bool:
        """Whether the upsert can run as ``MERGE``: PostgreSQL 15+, a target without rules, row counts read."""
        if not _Merging.merge_row_counts:
            return False
        cur.execute(
            "SELECT current_setting('server_version_num')::int >= 150000 AND NOT c.relhasrules "
            "FROM pg_class c WHERE c.oid = to_regclass(%s)",
            (plan.target,),
        )
        row = cur.fetchone()
        return bool(row and row[0])

    def _staged_in_key_order(self, cur: _Counter, plan: _Plan) -> bool:
        """Whether the staged rows come page by page in key order (ascending or descending): Spark partitions
        of a key-ordered input, however many wrote at once, but not a shuffled DataFrame. Judged on the first
        20,000 staged rows (their neighbours in physical order); a few hundred rows are never sorted."""
        cur.execute(S.key_order_sample_sql(plan.staging, self.keys, 20_000))
        ascending, descending, pairs = (int(v or 0) for v in cur.fetchone())
        return pairs < 1000 or max(ascending, descending) >= 0.75 * pairs
