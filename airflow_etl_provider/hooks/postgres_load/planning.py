"""Planning a load: the target's columns matched against the DataFrame's, upsert keys checked, the
bookkeeping tables created, an earlier commit of the load id found."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.identifiers import validate_identifier
from airflow_etl_provider.hooks.postgres_load.load_log import _create_reject_store_sql
from airflow_etl_provider.hooks.postgres_load.model import (
    DELIVERED,
    LOAD_LOG_DLQ_COLUMNS,
    _Plan,
    log,
)


class _Planning:
    """Planning (a part of :class:`PostgresLoader`)."""

    # ---------------------------------------------------------------------------------------- plan

    def _prepare(self, df_columns: Sequence[tuple[str, str]]) -> _Plan:
        for name, _ in df_columns:
            validate_identifier(name, "columns")
        with self._connect(autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                (self.target,),
            )
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
                (target,),
            )
            target_cols = {str(r[0]): r for r in cur.fetchall()}
            columns = self._match_columns(df_columns, target_cols, f"{schema}.{table}")
            keys_checked_at_once = (
                self._check_unique_index(cur, target, f"{schema}.{table}") if self.mode == "upsert" else False
            )
            log_table = S.qualified(schema, self.log_table_name, "log_table")
            reject_store = S.qualified(schema, self.reject_store_name, "reject_store")
            self._create_bookkeeping(cur, log_table, reject_store)
            table_key = f"{schema}.{table}"
            recorded = self._recorded(cur, log_table, table_key)
            state: Any = None
            if recorded is not None:
                cur.execute(
                    f"SELECT dead_letter_state, dead_letter_spooled, dead_letter_spool FROM {log_table} "
                    "WHERE table_name = %s AND load_id = %s",
                    (table_key, self.load_id),
                )
                state = cur.fetchone()
        staging_name = S.staging_table_name(schema, table, self.load_id)
        plan = _Plan(
            schema=schema,
            table=table,
            target=target,
            columns=columns,
            staging_name=staging_name,
            staging=S.qualified(schema, staging_name),
            rejects=S.qualified(schema, S.rejects_table_name(staging_name)),
            log_table=log_table,
            table_key=table_key,
            recorded=recorded,
            reject_store=reject_store,
            keys_checked_at_once=keys_checked_at_once,
        )
        if state is not None:
            plan.dead_letter_state = (
                DELIVERED if state[0] is None else str(state[0])
            )  # NULL: logged before 0.x
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
        cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped",
            (log_table,),
        )
        present = {str(r[0]) for r in cur.fetchall()}
        missing = [(name, kind) for name, kind in LOAD_LOG_DLQ_COLUMNS if name not in present]
        if missing:
            log.info("Adding column(s) %s to the load log %s", ", ".join(n for n, _ in missing), log_table)
            cur.execute(
                f"ALTER TABLE {log_table} "
                + ", ".join(f"ADD COLUMN IF NOT EXISTS {S.q(name)} {kind}" for name, kind in missing)
            )

    def _recorded(self, cur: Any, log_table: str, table_key: str) -> tuple[int, int, int] | None:
        cur.execute(
            f"SELECT rows_read, rows, rows_rejected FROM {log_table} WHERE table_name = %s AND load_id = %s",
            (table_key, self.load_id),
        )
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
            problems.append(
                f"DataFrame column(s) that are generated columns of {table}: {', '.join(generated)}"
            )
        missing = [n for n, r in target_cols.items() if r[4] and not r[5] and n not in seen]
        if missing:
            problems.append(
                f"NOT NULL column(s) of {table} without a default missing from the DataFrame: {', '.join(missing)}"
            )
        missing_keys = [k for k in self.keys if k not in seen]
        if missing_keys:
            problems.append(f"key column(s) missing from the DataFrame: {', '.join(missing_keys)}")
        if problems:
            raise ConfigError("columns", "; ".join(problems))
        if not columns:
            raise ConfigError("columns", "the DataFrame has no column to load")
        return columns

    def _check_unique_index(self, cur: Any, target: str, table: str) -> bool:
        """Refuse a target without a unique index on exactly the keys; return whether one of them is checked
        row by row (not ``DEFERRABLE``)."""
        cur.execute(S.unique_indexes_sql(), (target,))
        on_keys = [bool(r[1]) for r in cur.fetchall() if set(r[0]) == set(self.keys)]
        if not on_keys:
            cols = ", ".join(self.keys)
            raise ConfigError(
                "keys",
                f"table {table} has no primary key or unique index on exactly ({cols}), which "
                f"upsert (ON CONFLICT) needs; create one, e.g. CREATE UNIQUE INDEX ON {target} ({cols})",
            )
        return any(on_keys)
