"""Isolating the rows PostgreSQL refuses: suspects screened set-based, then chunks under savepoints,
bisected down to single rows; each refused row recorded with PostgreSQL's message."""

from __future__ import annotations

import contextlib

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError, ErrorKind, classify_postgres
from airflow_etl_provider.hooks.postgres_load.model import (
    WORK_TABLE,
    _Plan,
    log,
)
from airflow_etl_provider.hooks.postgres_load.savepoints import (
    _Counter,
    _in_savepoint,
    error_class,
    error_class_name,
    error_message,
)


class _Isolation:
    """Row isolation (a part of :class:`PostgresLoader`)."""

    def _isolate(self, cur: _Counter, plan: _Plan, dedup: bool = True) -> tuple[int, int]:
        """Apply the staged rows, isolating the bad ones; return (rows applied, rows to apply).

        :param dedup: (upsert) a key occurs more than once in staging, so the screened rows are deduplicated
            first; ``False`` (every key once) skips that sort of every staged row.

        First a set-based screen picks *suspects* (a NULL for a NOT NULL column, a string longer than
        its column, a failing CHECK expression, a dangling foreign key); the other rows go in with one
        statement and each suspect under its own savepoint, so PostgreSQL itself decides and words the
        error. If the screen cannot run or the rest still fails, chunks + bisection apply everything.
        """
        screened = self._screened(cur, plan, dedup)
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
                f"SELECT {S.q(S.ROW_ID)}, %s, %s FROM {work} WHERE {S.q(S.ORDINAL)} = %s",
                bad,
            )
        log.info(
            "Isolated %d bad row(s) of %d in %s by chunks and bisection (%d statements)",
            len(bad),
            total,
            plan.table_key,
            cur.statements,
        )
        return applied, total

    def _screen_predicates(self, cur: _Counter, plan: _Plan) -> tuple[list[str], list[str]]:
        """(safe, risky) suspect predicates over the staged columns (alias ``w``)."""
        safe: list[str] = []
        risky: list[str] = []
        staged = {c.name for c in plan.columns}
        cur.execute(
            "SELECT a.attname, a.attnotnull, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (plan.target,),
        )
        for name, notnull, full_type in cur.fetchall():
            if name not in staged:
                continue
            if notnull:
                safe.append(f"w.{S.q(name)} IS NULL")
            length = S.declared_length(str(full_type))
            if length is not None:
                safe.append(f"char_length(w.{S.q(name)}::text) > {length}")
        cur.execute(
            "SELECT pg_get_expr(conbin, conrelid) FROM pg_constraint WHERE conrelid = to_regclass(%s) "
            "AND contype = 'c'",
            (plan.target,),
        )
        risky += [f"({expr}) IS FALSE" for (expr,) in cur.fetchall()]
        cur.execute(
            "SELECT confrelid::regclass::text, array_agg(a.attname::text ORDER BY k.i), "
            "array_agg(f.attname::text ORDER BY k.i) FROM pg_constraint c "
            "CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(col, fcol, i) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.col "
            "JOIN pg_attribute f ON f.attrelid = c.confrelid AND f.attnum = k.fcol "
            "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' GROUP BY c.oid, c.confrelid",
            (plan.target,),
        )
        for ref, cols, ref_cols in cur.fetchall():
            if not set(cols) <= staged:
                continue
            with contextlib.suppress(ConfigError):
                match = " AND ".join(
                    f"r.{S.q(rc)} = w.{S.q(c)}" for c, rc in zip(cols, ref_cols, strict=True)
                )
                present = " AND ".join(f"w.{S.q(c)} IS NOT NULL" for c in cols)
                risky.append(f"({present} AND NOT EXISTS (SELECT 1 FROM {ref} r WHERE {match}))")
        return safe, risky

    def _screened(self, cur: _Counter, plan: _Plan, dedup: bool = True) -> tuple[int, int] | None:
        safe, risky = self._screen_predicates(cur, plan)
        suspect = S.q("_etl_suspect")
        source = (
            S.dedup_source_sql(plan.staging, self.keys)
            if self.mode == "upsert" and dedup
            else f"SELECT s.* FROM {plan.staging} s"
        )
        built = False
        for preds in ([*safe, *risky], safe):
            if not preds:
                continue
            cur.execute("SAVEPOINT etl_screen")
            try:
                cur.execute(f"DROP TABLE IF EXISTS {suspect}")
                cur.execute(
                    f"CREATE TEMP TABLE {suspect} ON COMMIT DROP AS SELECT w.* FROM ({source}) w "
                    f"WHERE {' OR '.join(preds)}"
                )
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
        if suspects:
            # Each suspect is applied by its row id (and the rest excludes them by row id): without an index
            # every lookup scans all suspects. 10,000 suspects among 1M rows took 5.96 s to apply that way,
            # O(suspects^2) (benchmarks/bench_load_postgres.py, P4 with 10,000 poison rows).
            cur.execute(f"CREATE INDEX ON {suspect} ({rid})")
            cur.execute(f"ANALYZE {suspect}")
        select = ", ".join(c.expr() for c in plan.columns)
        conflict = S.on_conflict_sql(self.keys, plan.columns) if self.mode == "upsert" else ""
        rest = f"SELECT s.* FROM ({source}) s WHERE NOT EXISTS (SELECT 1 FROM {suspect} x WHERE x.{rid} = s.{rid})"
        rest_insert = (
            S.insert_prefix(plan.target, plan.columns) + f"SELECT {select} FROM ({rest}) s" + conflict
        )
        if self.mode == "upsert" and self._merge_usable(cur, plan):
            applied, err = self._merge_or_insert(cur, plan, "etl_rest", f"({rest})", rest_insert)
        else:
            applied, err = _in_savepoint(cur, "etl_rest", rest_insert)
        if err is not None:
            return None  # bad rows the screen did not catch: chunks and bisection
        one = (
            S.insert_prefix(plan.target, plan.columns)
            + f"SELECT {select} FROM {suspect} s WHERE s.{rid} = %s"
            + conflict
        )
        bad: list[tuple[int, str, str]] = []
        server_side = self._apply_in_server(cur, one, suspects) if suspects else None
        if server_side is not None:
            n, bad = server_side
            applied += n
        else:
            for row_id in suspects:
                n, err = _in_savepoint(cur, "etl_row", one, (row_id,))
                applied += n
                if err is not None:
                    bad.append((row_id, error_message(err), error_class(err)))
        if bad:
            cur.executemany(
                f"INSERT INTO {plan.rejects} ({rid}, {S.q(S.ERROR)}, {S.q(S.ERROR_CLASS)}) "
                "VALUES (%s, %s, %s)",
                bad,
            )
        total = applied + len(bad)
        # every rejected row is a suspect (nothing superseded without a repeated key): the reject store copies
        # them from the suspects, not from a join with every staged row
        if not (self.mode == "upsert" and dedup):
            plan.reject_source = suspect
        log.info(
            "Isolated %d bad row(s) of %d in %s: %d suspect(s) screened set-based (%d statements)",
            len(bad),
            total,
            plan.table_key,
            len(suspects),
            cur.statements,
        )
        return applied, total

    #: Apply the suspect rows inside the server (:data:`~airflow_etl_provider.core.sql.APPLY_ROWS_FUNCTION`).
    #: Measured (``benchmarks/bench_load_postgres.py``, 10,000 poison rows among 1M): ~1.8 ms per suspect row
    #: with a savepoint round trip per statement, a fraction of that in one call.
    apply_in_server = True

    def _apply_in_server(
        self, cur: _Counter, one: str, suspects: list[int]
    ) -> tuple[int, list[tuple[int, str, str]]] | None:
        """Apply each suspect row with ``one`` (its row id as the one parameter) in its own subtransaction,
        all in one call; return (rows applied, [(row id, message, error class)]) -- the same messages and
        classes psycopg 3 reports for the same statements (``tests/integration/test_suspect_rows_in_server.py``) -- or
        ``None`` when this cannot run here (psycopg 2, no PL/pgSQL): then the caller applies them one by one."""
        driver = type(cur.cursor).__module__.split(".")[0]
        if not self.apply_in_server or driver != "psycopg":
            return None
        import psycopg

        cur.execute("SAVEPOINT etl_rows_fn")
        try:
            cur.execute(S.apply_rows_function_sql())
        except psycopg.Error as err:
            cur.execute("ROLLBACK TO SAVEPOINT etl_rows_fn")
            cur.execute("RELEASE SAVEPOINT etl_rows_fn")
            log.info("Applying suspect rows one statement at a time (%s: %s)", error_class(err), error_message(err))
            return None
        cur.execute("RELEASE SAVEPOINT etl_rows_fn")
        cur.execute(
            f"SELECT row_id, applied, state, message, detail, hint FROM {S.APPLY_ROWS_FUNCTION}(%s, %s::bigint[])",
            (one.replace("%s", "$1"), suspects),
        )
        applied = 0
        bad: list[tuple[int, str, str]] = []
        for row_id, n, state, message, detail, hint in cur.fetchall():
            if state is None:
                applied += int(n)
                continue
            try:
                cls = psycopg.errors.lookup(state)
            except KeyError:  # a code psycopg does not know: the class it would raise for it
                cls = psycopg.errors.DataError if state.startswith("22") else psycopg.errors.IntegrityError
            bad.append((int(row_id), S.server_error_message(message, detail, hint), error_class_name(cls)))
        return applied, bad

    def _apply_range(self, cur: _Counter, sql: str, lo: int, hi: int, bad: list[tuple[str, str, int]]) -> int:
        applied, err = _in_savepoint(cur, "etl_chunk", sql, (lo, hi))
        if err is None:
            return applied
        if lo == hi:
            bad.append((error_message(err), error_class(err), lo))
            return 0
        mid = (lo + hi) // 2
        return self._apply_range(cur, sql, lo, mid, bad) + self._apply_range(cur, sql, mid + 1, hi, bad)
