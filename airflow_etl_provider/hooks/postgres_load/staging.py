"""Staging: the DataFrame into an UNLOGGED staging table with Spark's JDBC writer or COPY from the
executors; dropping it afterwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_etl_provider.core import sql as S
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.executor.postgres_copy import COPY_STATUS_SCHEMA, copy_writer
from airflow_etl_provider.hooks.postgres_load.jvm_copy import (
    column_kinds,
    jdbc_target,
    jvm_copy_unavailable,
    stage_on_jvm,
)
from airflow_etl_provider.hooks.postgres_load.model import (
    _Plan,
    log,
)
from airflow_etl_provider.hooks.postgres_load.progress import _StagingProgress

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class _Staging:
    """Staging and cleanup (a part of :class:`PostgresLoader`)."""

    @staticmethod
    def _df_columns(df: DataFrame) -> list[tuple[str, str]]:
        return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]

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
        unsupported = [
            f"{c.source} ({types[c.source]})" for c in plan.columns if not S.copy_supported(types[c.source])
        ]
        if unsupported:
            log.info(
                "Staging %s with JDBC, not COPY: column(s) COPY cannot render: %s",
                plan.staging_name,
                ", ".join(unsupported),
            )
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
        to_utc = [
            i
            for i, f in enumerate(fields)
            if f.dataType.simpleString() == "timestamp"
            and staging_types.get(f.name) == "timestamp with time zone"
        ]
        binary = [i for i, f in enumerate(fields) if f.dataType.simpleString() == "binary"]
        copy_sql = S.copy_staging_sql(plan.staging, plan.columns)
        conn_args = self.copy_conn_args()
        jvm_target, why_not = self._jvm_copy_target(df, conn_args)
        if jvm_target is not None:
            plan.copy_writer = "jvm"
            url, properties = jvm_target
            kinds = column_kinds([f.dataType.simpleString() for f in fields], to_utc)
            binary_format = self._binary_copy(fields, {S.ROW_ID: "bigint", **staging_types})
            plan.copy_format = "binary" if binary_format else "csv"
            copy_sql = S.copy_staging_sql(plan.staging, plan.columns, binary=binary_format)
            statuses = stage_on_jvm(staged, url, properties, copy_sql, kinds, binary_format)
            self._staged_with_copy(plan, statuses)
            return
        if self.copy_writer == "jvm":
            raise ConfigError("copy_writer", f"'jvm' cannot run here: {why_not}", value="jvm")
        if self.copy_format == "binary":
            raise ConfigError("copy_format", f"'binary' needs the JVM COPY writer, which cannot run here: {why_not}",
                              value="binary")
        if self.copy_writer == "auto":
            log.info("Staging %s with the Python COPY writer: %s", plan.staging_name, why_not)
        plan.copy_writer = "python"
        plan.copy_format = "csv"
        writer = copy_writer(conn_args, copy_sql, to_utc, binary)
        try:
            statuses = staged.mapInArrow(writer, COPY_STATUS_SCHEMA).collect()
        except Exception as err:
            missing = _missing_executor_module(err)
            if missing is None:
                raise
            # The executors cannot COPY (no psycopg or pyarrow there): JDBC needs nothing from them. Rows some
            # partitions may have written already are dropped with the staging table first.
            log.warning(
                "Staging %s with JDBC: the Spark executors have no %s module, which COPY staging needs "
                "(install requirements-executor.txt into the executors' Python, or set stage_method='jdbc' "
                "to skip this attempt)",
                plan.staging_name,
                missing,
            )
            self._create_staging(plan)
            plan.stage_method = "jdbc"
            self._stage_jdbc(df, plan)
            return
        self._staged_with_copy(plan, statuses)

    def _binary_copy(self, fields: Any, staging_types: dict[str, str]) -> bool:
        """Whether the JVM writer sends binary COPY (``copy_format``; ``auto``: when every column can)."""
        if self.copy_format == "csv":
            return False
        cannot = [
            f"{f.name} ({f.dataType.simpleString()} into {staging_types[f.name]})"
            for f in fields
            if not S.binary_copy_supported(f.dataType.simpleString(), staging_types[f.name])
        ]
        if cannot and self.copy_format == "binary":
            raise ConfigError(
                "copy_format",
                f"'binary' cannot send these column(s) in their staging type's binary form: {', '.join(cannot)} "
                "(use 'auto' to fall back to CSV, or cast the column in the DataFrame to the target's type)",
                value="binary",
            )
        return not cannot

    def _jvm_copy_target(
        self, df: DataFrame, conn_args: dict[str, Any]
    ) -> tuple[tuple[str, dict[str, str]] | None, str | None]:
        """PgJDBC's URL and properties for the JVM COPY writer, or why it cannot run (``copy_writer``)."""
        if self.copy_writer == "python":
            return None, "copy_writer='python'"
        why_not = jvm_copy_unavailable(df.sparkSession)
        if why_not is not None:
            return None, why_not
        target = jdbc_target(conn_args)
        if isinstance(target, str):
            return None, target
        return target, None

    @staticmethod
    def _staged_with_copy(plan: _Plan, statuses: list[Any]) -> None:
        plan.staged_rows = sum(int(r["rows"]) for r in statuses)
        log.info(
            "Staged %d row(s) into %s with COPY (%s writer) from %d partition(s), %s format",
            plan.staged_rows,
            plan.staging_name,
            plan.copy_writer,
            len(statuses),
            plan.copy_format,
        )

    # ------------------------------------------------------------------------------------- cleanup

    def _drop_staging(self, plan: _Plan) -> None:
        try:
            with self._connect(autocommit=True) as conn:
                conn.cursor().execute(f"DROP TABLE IF EXISTS {plan.staging}, {plan.rejects}")
        except Exception as err:  # never hide the load's own error; the next run with this load id drops it
            log.warning("Could not drop staging table %s: %s", plan.staging_name, err)


_EXECUTOR_MODULES = ("psycopg", "pyarrow")


def _missing_executor_module(err: BaseException) -> str | None:
    """The module COPY staging needs that an executor lacked (``psycopg``, ``pyarrow``), if that is what
    failed the staging job: Spark reports the worker's ``ModuleNotFoundError`` inside its own exception."""
    text = str(err)
    for module in _EXECUTOR_MODULES:
        if f"No module named '{module}'" in text:
            return module
    return None
