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
        cur.execute(
            f"INSERT INTO {plan.log_table} (table_name, load_id, mode, rows, rows_read, rows_rejected) "
            "VALUES (%s, %s, %s, 0, 0, 0) ON CONFLICT (table_name, load_id) DO NOTHING",
            (plan.table_key, self.load_id, self.mode),
        )
        if cur.rowcount == 0:
            recorded = self._recorded(cur, plan.log_table, plan.table_key)
            assert recorded is not None
            return _MergeResult(*recorded, superseded=0, statements=cur.statements, skipped=True)
        merged, first_error = self._merge_before_counting(cur, plan)
        if merged is not None:
            return merged
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
        if self.mode == "overwrite":
            if self.overwrite_method == "truncate":
                cur.execute(f"TRUNCATE {plan.target}")
            else:
                cur.execute(f"DELETE FROM {plan.target}")
        isolated = False
        # the MERGE that already failed before the counts ran on this same source: not run twice
        applied, err = self._apply_all(cur, plan, dedup, failed=None if dedup else first_error)
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

    def _merge_before_counting(self, cur: _Counter, plan: _Plan) -> tuple[_MergeResult | None, Any]:
        """The clean upsert's shortcut: ``MERGE`` the staged rows as they are, *then* check them, instead of
        counting their distinct keys first (a sort or hash of every staged key: ~0.25 s per 1M rows, measured
        in ``benchmarks/bench_load_postgres.py``). ``(result, None)`` when it holds; else it is rolled back
        and ``(None, the MERGE's error or None)`` sends the caller through the counts.

        Taken for an upsert staged by COPY (the writers reported their row total) into a table ``MERGE``
        takes, whose unique index on exactly the keys is checked at once (not ``DEFERRABLE``). Then the
        checks the counts would make are made by PostgreSQL itself, or after the statement:

        * a key twice in the batch fails the statement -- a second row for a key the target holds with
          ``MERGE command cannot affect row a second time``, a second new one with a unique violation --
          so a ``MERGE`` that succeeded had one row per key: nothing to deduplicate;
        * ``MERGE`` counted as many rows as the writers committed, and so many are staged (``count(*)``: no
          task attempt's rows twice, no row a trigger dropped).

        Anything else -- an error, other numbers -- and the savepoint is rolled back: the counts decide
        as before, and a data error is handed on so that the same ``MERGE`` is not run twice.
        """
        if (
            self.mode != "upsert"
            or plan.staged_rows is None
            or not plan.keys_checked_at_once
            or not self._merge_usable(cur, plan)
        ):
            return None, None
        ordered = not self._staged_in_key_order(cur, plan)
        source = S.upsert_source_sql(plan.staging, self.keys, dedup=False, ordered=ordered)
        savepoint = "etl_merge_unchecked"
        applied, err = self._try_merge(cur, plan, savepoint, source)
        if err is not None:
            log.debug("Upsert into %s: MERGE before the counts failed (%s)", plan.table_key, error_class(err))
            return None, err
        if applied == plan.staged_rows:
            cur.execute(f"SELECT count(*) FROM {plan.staging}")
            staged = int(cur.fetchone()[0])
            if staged == applied:
                cur.execute(f"RELEASE SAVEPOINT {savepoint}")
                self._keep_rejects(cur, plan, 0)
                self._record_log(cur, plan, staged, applied, 0)
                log.debug(
                    "Upsert into %s: %d row(s) merged before the counts (sorted by key: %s)",
                    plan.table_key,
                    applied,
                    ordered,
                )
                return _MergeResult(staged, applied, 0, 0, cur.statements), None
        log.debug(
            "Upsert into %s: MERGE before the counts applied %d row(s), the writers staged %d: rolled back",
            plan.table_key,
            applied,
            plan.staged_rows,
        )
        self._undo(cur, savepoint)
        return None, None

    #: ``False`` once the client library could not report a ``MERGE``'s row count (libpq < 15): from then on
    #: this process upserts with ``INSERT ... ON CONFLICT`` only.
    merge_row_counts = True

    def _apply_all(self, cur: _Counter, plan: _Plan, dedup: bool, failed: Any = None) -> tuple[int, Any]:
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

        :param failed: the error the same ``MERGE`` (no dedup) raised in this transaction already
            (:meth:`_merge_before_counting`): it is not run again.
        """
        conflict = S.fast_merge_sql(
            self.mode, plan.target, plan.staging, plan.columns, self.keys, dedup=dedup
        )
        if self.mode != "upsert" or not self._merge_usable(cur, plan):
            return _in_savepoint(cur, "etl_merge", conflict)
        fallback = S.fast_merge_sql(self.mode, plan.target, plan.staging, plan.columns, self.keys)
        if failed is not None:
            log.debug(
                "Upsert into %s: the MERGE failed before the counts already (%s): not run again",
                plan.table_key,
                error_class(failed),
            )
            return self._after_failed_merge(cur, plan, "etl_merge", failed, fallback)
        ordered = not dedup and not self._staged_in_key_order(cur, plan)
        source = S.upsert_source_sql(plan.staging, self.keys, dedup, ordered)
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
        applied, err = self._try_merge(cur, plan, savepoint, source)
        if err is not None:
            return self._after_failed_merge(cur, plan, savepoint, err, fallback)
        if applied < 0:  # the client library cannot read MERGE's command tag: undo, use ON CONFLICT
            self._undo(cur, savepoint)
            _Merging.merge_row_counts = False
            log.warning(
                "The PostgreSQL client library reports no MERGE row count (libpq < 15?): upserting with "
                "INSERT ... ON CONFLICT from now on"
            )
            return _in_savepoint(cur, savepoint, fallback)
        cur.execute(f"RELEASE SAVEPOINT {savepoint}")
        return applied, None

    def _try_merge(self, cur: _Counter, plan: _Plan, savepoint: str, source: str) -> tuple[int, Any]:
        """``MERGE`` ``source`` after ``SAVEPOINT savepoint``: ``(its row count, None)`` with the savepoint
        still open (the caller releases or undoes it), or ``(0, error)`` with the statement rolled back and the
        savepoint released. A transient error is raised."""
        cur.execute(f"SAVEPOINT {savepoint}")
        try:
            cur.execute(S.merge_upsert_sql(plan.target, source, plan.columns, self.keys))
            return cur.rowcount, None
        except Exception as err:
            if classify_postgres(err) is ErrorKind.TRANSIENT:
                raise
            self._undo(cur, savepoint)
            return 0, err

    def _after_failed_merge(
        self, cur: _Counter, plan: _Plan, savepoint: str, err: Any, fallback: str
    ) -> tuple[int, Any]:
        """After a ``MERGE`` failed (rolled back): ``(0, err)`` for a bad row -- which ``INSERT ... ON
        CONFLICT`` would refuse just the same -- otherwise the rows applied by ``fallback`` instead."""
        if (
            classify_postgres(err) is ErrorKind.DATA
            and (getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)) != "23505"
        ):
            return 0, err
        log.info(
            "MERGE into %s failed (%s: %s); applying the rows with INSERT ... ON CONFLICT instead",
            plan.table_key,
            error_class(err),
            error_message(err).splitlines()[0],
        )
        return _in_savepoint(cur, savepoint, fallback)

    @staticmethod
    def _undo(cur: _Counter, savepoint: str) -> None:
        cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        cur.execute(f"RELEASE SAVEPOINT {savepoint}")

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
