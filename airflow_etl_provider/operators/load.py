"""ResilientSparkLoadOperator: load a Spark DataFrame into PostgreSQL or Parquet, accounting for every row.

The operator is thin: it validates its configuration at parse time (no I/O in ``__init__``) and, at run
time, wires the pieces together: :func:`~airflow_etl_provider.hooks.sources.read_source` (parse errors
split out), :class:`~airflow_etl_provider.hooks.postgres_load.PostgresLoader` (staging + one-transaction
merge, poison-row isolation) behind a :class:`~airflow_etl_provider.core.guard.Guard` (retry + the circuit
breaker shared through Airflow Variables), and :class:`~airflow_etl_provider.hooks.dead_letter.DeadLetterHook`
(rejected and unparseable rows, with their errors, published from the executors). It then checks
``records_read == records_loaded + records_dead_lettered`` and returns the load result as XCom.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.config import ErrorHandlingConfig, parse_dead_letter
from airflow_etl_provider.core.config import is_templated as _templated
from airflow_etl_provider.core.errors import (
    CircuitOpenError,
    ConfigError,
    DeadLetterUnavailableError,
    RowAccountingError,
    classify_postgres,
)
from airflow_etl_provider.core.identifiers import quote_table, validate_identifier
from airflow_etl_provider.core.metrics import parse_backends
from airflow_etl_provider.core.retry import RetryPolicy
from airflow_etl_provider.core.sql import COPY_FORMATS, COPY_WRITERS, STAGE_METHODS
from airflow_etl_provider.hooks.parquet import overwrite_parquet
from airflow_etl_provider.hooks.sources import validate_source

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from airflow_etl_provider.core.guard import Guard
    from airflow_etl_provider.hooks.dead_letter import DeadLetterHook, PublishResult
    from airflow_etl_provider.hooks.observability import TaskObservation


_DEFAULT = object()
TARGET_TYPES = ("postgres", "parquet")
POSTGRES_MODES = ("append", "overwrite", "upsert")
PARQUET_MODES = ("append", "overwrite")


TARGET_KEYS = {
    "postgres": ("type", "conn_id", "table", "mode", "keys", "load_id", "stage_method", "copy_writer",
                 "copy_format"),
    "parquet": ("type", "path", "mode", "partition_by"),
}


def _names(value: Any, field: str) -> list[str]:
    """A column name or a list of them, as a list (``None``: none)."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(field, "must be a column name or a list of column names", value=value)
    return list(names)


def validate_target(target: Mapping[str, Any], field: str = "target") -> None:
    """Check a target's shape without I/O; identifiers are validated unless still templated.

    Unknown keys (for the target's type) are refused, naming them.
    """
    if not isinstance(target, Mapping):
        raise ConfigError(field, "must be a mapping such as {'type': 'postgres', 'table': ..., 'mode': ...}",
                          value=target)
    kind = target.get("type")
    if not isinstance(kind, str) or kind not in TARGET_TYPES:
        problem = "is not a supported target type"
        unknown = sorted(str(k) for k in target if not any(k in keys for keys in TARGET_KEYS.values()))
        if unknown:  # a misspelt key is named, even when the type is what is missing
            problem += f" (unknown key(s) given: {', '.join(map(repr, unknown))})"
        raise ConfigError(f"{field}.type", problem, value=kind, allowed=TARGET_TYPES)
    unknown = sorted(str(k) for k in target if k not in TARGET_KEYS[kind])
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", f"unknown key for a {kind} target", allowed=TARGET_KEYS[kind])
    mode = target.get("mode", "append")
    for key in ("conn_id", "table", "load_id", "path"):
        if target.get(key) is not None and not isinstance(target[key], str):
            raise ConfigError(f"{field}.{key}", "must be a string", value=target[key])
    if kind == "postgres":
        if not target.get("table"):
            raise ConfigError(f"{field}.table", "is required for a postgres target (e.g. 'public.orders')")
        if not isinstance(mode, str) or mode not in POSTGRES_MODES:
            raise ConfigError(f"{field}.mode", "is not a supported load mode", value=mode, allowed=POSTGRES_MODES)
        stage_method = target.get("stage_method", "jdbc")
        if not _templated(stage_method) and stage_method not in STAGE_METHODS:
            raise ConfigError(f"{field}.stage_method", "is not a staging method (jdbc: Spark's JDBC writer, the "
                              "default; copy: COPY from the executors, about twice as fast)", value=stage_method,
                              allowed=STAGE_METHODS)
        copy_writer = target.get("copy_writer", "auto")
        if not _templated(copy_writer) and copy_writer not in COPY_WRITERS:
            raise ConfigError(f"{field}.copy_writer", "is not a COPY writer (auto: Spark's JVM where it can run, "
                              "else the executors' Python; jvm; python)", value=copy_writer, allowed=COPY_WRITERS)
        copy_format = target.get("copy_format", "auto")
        if not _templated(copy_format) and copy_format not in COPY_FORMATS:
            raise ConfigError(f"{field}.copy_format", "is not a COPY format of the JVM writer (auto: binary where "
                              "every column takes it, else csv; binary; csv)", value=copy_format,
                              allowed=COPY_FORMATS)
        keys = _names(target.get("keys"), f"{field}.keys")
        if mode == "upsert" and not keys:
            raise ConfigError(f"{field}.keys", "is required for mode 'upsert': the business key columns")
        if not _templated(target["table"]):
            quote_table(target["table"], f"{field}.table")
        for key in keys:
            if not _templated(key):
                validate_identifier(key, f"{field}.keys")
    else:
        if not target.get("path"):
            raise ConfigError(f"{field}.path", "is required for a parquet target")
        if not isinstance(mode, str) or mode not in PARQUET_MODES:
            raise ConfigError(f"{field}.mode", "is not a supported mode for parquet", value=mode,
                              allowed=PARQUET_MODES)
        _names(target.get("partition_by"), f"{field}.partition_by")


class ResilientSparkLoadOperator(BaseOperator):
    """Load a source into PostgreSQL (append, overwrite, upsert) or Parquet, surviving the real world.

    Transient failures are retried with backoff and jitter; every attempt passes through a circuit
    breaker shared by all tasks on the same connection (Airflow Variable
    ``etl_circuit_breaker__<conn_id>``), and while it is open the task is rescheduled to the moment it
    turns half-open (or fails fast, ``on_open="fail"``) without touching the database. Rows the target
    rejects (NOT NULL, CHECK, FK, unique, bad casts, too long) and rows that cannot be parsed go to the
    dead-letter queue with the database's own error message; every other row is loaded, atomically.

    :param source: what to read (templated): ``{"format": "parquet"|"csv"|"json"|"orc", "path": ...,
        "options": {...}, "schema": "<DDL>"}``, ``{"format": "jdbc", "conn_id": ..., "table"|"query": ...}``
        or ``{"format": "table", "table": ...}``.
    :param target: where to load (templated): ``{"type": "postgres", "conn_id": "postgres_default",
        "table": "public.orders", "mode": "append"|"overwrite"|"upsert", "keys": [...], "load_id": ...,
        "stage_method": "jdbc"|"copy", "copy_writer": "auto"|"jvm"|"python"}`` (``jdbc``, the default, stages
        with Spark's JDBC writer and needs nothing on the executors; ``copy`` COPYs from the executors: staging
        costs about half. With ``copy``, ``copy_writer`` ``auto`` (default) renders and sends the rows in
        Spark's JVM with PgJDBC where the session is classic and ``airflow-etl-jvm.jar`` is on ``spark.jars``,
        else in the executors' Python, which then needs ``psycopg`` and ``pyarrow``; the JVM writer's
        ``copy_format`` ``auto`` (default) sends PostgreSQL's binary COPY format where every staging column
        takes it, else CSV; ``csv`` / ``binary`` force one)
        or ``{"type": "parquet", "path": ..., "mode": "append"|"overwrite", "partition_by": [...]}``
        (overwrite writes a hidden sibling first and swaps it in: a failed write keeps the old data, see
        :func:`overwrite_parquet`).
        ``load_id`` makes a re-run idempotent (default for append: ``<dag>.<task>.<run_id>``; upsert and
        overwrite are idempotent by themselves).
    :param retry: a :class:`RetryPolicy` or its config (the seed's ``errorHandling.retry`` block works).
    :param circuit_breaker: a :class:`CircuitBreakerPolicy` or its config; ``None`` disables it. The name
        defaults to the target's conn_id.
    :param dead_letter: where rejected rows go (templated): ``{"type": "kafka", "conn_id": ..., "topic": ...}``,
        ``{"type": "s3", ...}``, ``{"type": "file", "path": ...}``. Default: files under
        ``$AIRFLOW_ETL_DLQ_PATH`` (or ``$AIRFLOW_HOME/dead-letters``). ``None``: no DLQ, so a rejected row
        fails the task (nothing is ever dropped silently). Delivery is **at-least-once with stable ids**: the
        rejected rows commit with the load (``etl_load_rejects``, load log ``dead_letter_state='pending'``)
        and the task succeeds only once the DLQ confirmed every one of them; a try that could not deliver
        them fails, and its retry (which loads nothing again) re-sends them, from this worker's spool or
        else from ``etl_load_rejects``, with the same deterministic ``envelope_id`` to deduplicate on.
    :param error_handling: the seed pipeline config's ``errorHandling`` block, a whole pipeline config, or
        a path to a JSON/YAML file; the explicit arguments above win over it.
    :param quality_rules: an optional data-quality gate, the DataQualityOperator's rule format (list, mapping
        or YAML/JSON file path). Rows failing a row-level or ``unique`` rule go to the dead-letter queue
        (stage ``quality``, with the rules they failed) and are counted as dead-lettered; a failing dataset
        rule (row_count, freshness, sql ...) or a rule with ``action: fail`` fails the task before the
        target is touched; severity ``warn`` only logs.
    :param schema: the expected schema (DDL string or StructType): missing columns and impossible casts
        fail before loading, listing each mismatch; present columns are cast to it.
    :param spark_conn_id: ``spark`` (local[*] or spark://) or ``spark_connect`` connection.
    :param spark_conf: Spark conf overriding the connection's extras.
    :param pipeline_id: the pipeline name in dead letters (default: the dag_id).
    :param progress_interval_s: while a PostgreSQL load stages its rows, log the partitions done and the rows
        staged so far every this many seconds (``0``/``None``: never; on Spark Connect rows only).
    :param metrics: metrics backends for this task (``["airflow_stats", {"type": "pushgateway", "url": ...},
        {"type": "cloudwatch", "conn_id": ...}]``); ``None``: the deployment's ``[etl_provider] metrics_backends``;
        ``[]``: none. See the README's metric list.
    """

    template_fields: Sequence[str] = ("source", "target", "dead_letter", "pipeline_id")
    template_fields_renderers = {"source": "json", "target": "json", "dead_letter": "json"}
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        source: Mapping[str, Any],
        target: Mapping[str, Any],
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        circuit_breaker: CircuitBreakerPolicy | Mapping[str, Any] | None | object = _DEFAULT,
        dead_letter: Mapping[str, Any] | None | object = _DEFAULT,
        error_handling: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        quality_rules: Any = None,
        schema: Any = None,
        spark_conn_id: str = "spark_default",
        spark_conf: Mapping[str, Any] | None = None,
        pipeline_id: str | None = None,
        progress_interval_s: float | None = 30.0,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if quality_rules is not None and not isinstance(quality_rules, str | os.PathLike) \
                and not _templated(quality_rules):
            from airflow_etl_provider.core.rules import parse_rules
            from airflow_etl_provider.core.rules.actions import check_quarantine_config

            gate_dlq = dead_letter if dead_letter is not _DEFAULT else {"type": "file"}
            check_quarantine_config(parse_rules(quality_rules), "quarantine", gate_dlq)
        self.quality_rules = quality_rules
        if not _templated(source):
            validate_source(source)
        validate_target(target)
        # Pure parsing only (no I/O): bad values fail here, when the DAG file is parsed.
        base = ErrorHandlingConfig.from_config(error_handling) if error_handling is not None else None
        # Not ``retry_policy``: Airflow >= 3.3 reads that attribute as the task's own retry-policy object.
        self.etl_retry_policy = RetryPolicy.from_config(retry if retry is not None else (base.retry if base else None))
        if circuit_breaker is _DEFAULT:
            breaker = base.circuit_breaker if base and base.circuit_breaker is not None else CircuitBreakerPolicy()
        else:
            breaker = CircuitBreakerPolicy.from_config(circuit_breaker) if circuit_breaker is not None else None
        self.breaker_policy = breaker if breaker is not None and breaker.enabled else None
        if dead_letter is _DEFAULT:
            dead_letter = base.dead_letter.model_dump() if base and base.dead_letter else {"type": "file"}
        if dead_letter is not None and not _templated(dead_letter):
            parse_dead_letter(dead_letter)  # type: ignore[arg-type]
        self.source = dict(source)
        self.target = dict(target)
        self.dead_letter = dict(dead_letter) if isinstance(dead_letter, Mapping) else None
        self.schema = schema
        self.spark_conn_id = spark_conn_id
        self.spark_conf = dict(spark_conf or {})
        self.pipeline_id = pipeline_id
        if progress_interval_s is not None and (isinstance(progress_interval_s, bool)
                                                or not isinstance(progress_interval_s, int | float)
                                                or progress_interval_s < 0):
            raise ConfigError("progress_interval_s", "must be a number of seconds >= 0 (0 or None: no progress "
                              "log)", value=progress_interval_s)
        self.progress_interval_s = progress_interval_s
        if metrics is not None and not _templated(metrics):
            parse_backends(metrics)
        self.metrics = metrics

    # ------------------------------------------------------------------------------------ execute
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_etl_provider.hooks.observability import observe

        with observe(self, context, "load", self.metrics, pipeline=self.pipeline_id) as obs:
            return obs.done(self._execute(context, obs))

    def _execute(self, context: Any, obs: TaskObservation) -> dict[str, Any]:
        from airflow_etl_provider.hooks.resilience import raise_for_open_circuit, run_context
        from airflow_etl_provider.hooks.sources import read_source
        from airflow_etl_provider.hooks.spark import SparkSessionHook

        started = time.monotonic()
        validate_source(self.source)
        validate_target(self.target)
        rc = run_context(context, self.pipeline_id)
        guard = self._guard(context)
        obs.watch_guard(guard)
        on_open = self.breaker_policy.on_open if self.breaker_policy else "reschedule"
        self._refuse_if_open(guard)  # before starting Spark: an open breaker costs nothing
        dlq = self._dead_letter_hook(rc)
        source_name = _describe_source(self.source)
        target_name = _describe_target(self.target)

        with SparkSessionHook(self.spark_conn_id, self.spark_conf, app_name=f"{rc.dag_id}.{rc.task_id}").session() as spark:
            obs.start_stage("read")
            frames = read_source(spark, self.source)  # the source's own schema parses; self.schema checks
            data = self._conform(frames.data) if self.schema is not None else frames.data
            data = data.cache()
            corrupt_n = frames.corrupt.count() if frames.corrupt is not None else 0
            obs.end_stage("read", corrupt_rows=corrupt_n)
            quality: dict[str, Any] | None = None
            quarantined = None
            quality_read = 0
            if self.quality_rules is not None:  # the gate: before the target is touched
                checked = data
                obs.start_stage("validate")
                data, quarantined, quality = self._quality_gate(checked, context, obs)
                obs.end_stage("validate", rows_checked=quality["rows_checked"])
            try:
                obs.start_stage("load")
                outcome = self._load(data, guard, rc)
                obs.record_phases(outcome.get("timings") or {})
                obs.end_stage("load", rows_read=outcome["records_read"], rows_loaded=outcome["records_loaded"],
                              rows_rejected=outcome["records_rejected"])
            except CircuitOpenError as err:
                raise_for_open_circuit(err, on_open, policy=self.breaker_policy)
            obs.start_stage("dead_letter")
            dead = 0
            errors: dict[str, dict[str, Any]] = {}
            to_dlq = []
            if outcome["rejected"] is not None and outcome["records_rejected"]:
                errors.update(_summarise(outcome["rejected"]))
                to_dlq.append(outcome["rejected"])
            if corrupt_n:
                from pyspark.sql import functions as F

                from airflow_etl_provider.hooks.dead_letter import ERROR_CLASS_COLUMN, ERROR_COLUMN

                to_dlq.append(frames.corrupt.withColumn(ERROR_COLUMN, F.lit("the row could not be parsed "
                                                                            "with the source's schema"))
                              .withColumn(ERROR_CLASS_COLUMN, F.lit("CorruptRecord")))
                errors["CorruptRecord"] = {"count": corrupt_n, "example": "the row could not be parsed"}
            for frame in to_dlq:
                if dlq is None:
                    raise RowAccountingError(
                        f"{frame.count()} row(s) were rejected ({', '.join(errors)}) and dead_letter=None: "
                        "configure a dead-letter queue to load the good rows and keep the bad ones")
                if frame is outcome["rejected"]:
                    dead += self._dead_letter_rejected(dlq, outcome, source_name, target_name)
                    continue
                dead += dlq.publish_dataframe(frame, stage="parse", key_columns=self.target.get("keys") or (),
                                              source=source_name, target=target_name).delivered
            if quarantined is not None:
                # After the load committed: a retry re-evaluates the same rows and re-sends them (at least
                # once, with the same envelope ids), so a DLQ outage loses nothing.
                if dlq is None:
                    raise RowAccountingError("quality_rules quarantined rows and dead_letter=None: configure a "
                                             "dead-letter queue")
                sent = dlq.publish_dataframe(quarantined, stage="quality", key_columns=self.target.get("keys") or (),
                                             source=source_name, target=target_name,
                                             default_error="failed quality rules").delivered
                dead += sent
                errors["QualityRuleFailed"] = {"count": sent, "example": quality["example"] if quality else ""}
                quality_read = quality["rows_checked"] - data.count()  # the gate counted the rows; data is cached
                if quality_read != sent:
                    raise RowAccountingError(f"quality_rules: {quality_read} row(s) failed a quarantine rule but "
                                             f"{sent} reached the dead-letter queue")
                checked.unpersist()
            obs.end_stage("dead_letter", rows=dead)
            data.unpersist()

        dead += outcome.get("recorded_dead_lettered", 0)
        read = outcome["records_read"] + corrupt_n + quality_read
        loaded = outcome["records_loaded"]
        if read != loaded + dead:
            raise RowAccountingError(f"row accounting failed for {target_name}: records_read={read} != "
                                     f"records_loaded={loaded} + records_dead_lettered={dead}")
        state = guard.breaker.state().state.value if guard.breaker else "disabled"
        result = {
            "records_read": read,
            "records_loaded": loaded,
            "records_dead_lettered": dead,
            "records_failed": 0,
            "dead_letter_location": dlq.location if dlq is not None and dead else None,
            "attempts": guard.stats.attempts,
            "retries": guard.stats.retries,
            "duration_s": round(time.monotonic() - started, 3),
            "circuit_state": state,
            "errors": errors,
            "target": target_name,
            "skipped": outcome.get("skipped", False),
        }
        if quality is not None:
            result["quality"] = {k: v for k, v in quality.items() if k not in ("example", "rows_checked")}
        self.log.info("Load result: %s", result)
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the source in, the target and the dead-letter queue out, row accounting and the quality
        gate's assertions (:mod:`airflow_etl_provider.hooks.lineage`)."""
        from airflow_etl_provider.hooks import lineage

        return lineage.operator_lineage(getattr(self, "etl_run_summary", None), [lineage.source_dataset(self.source)],
                                        [lineage.target_dataset(self.target), lineage.dead_letter_dataset(self.dead_letter)])

    # ----------------------------------------------------------------------------------- helpers
    def _quality_gate(self, data: DataFrame, context: Any, obs: TaskObservation | None = None
                      ) -> tuple[DataFrame, DataFrame | None, dict[str, Any]]:
        """Evaluate ``quality_rules`` (default action ``quarantine``): fail before loading if a rule says so,
        else return the rows to load, the rows to dead-letter (or ``None``) and a summary."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_etl_provider.core.report import failure_table
        from airflow_etl_provider.core.rules.actions import check_quarantine_config, decide, resolve_rules
        from airflow_etl_provider.hooks.quality import evaluate, split_rows

        rules = resolve_rules(self.quality_rules, context if isinstance(context, Mapping) else None)
        check_quarantine_config(rules, "quarantine", self.dead_letter)
        logical = context.get("logical_date") if isinstance(context, Mapping) else None
        report = evaluate(data, rules, sample_size=3, key_columns=self.target.get("keys") or (),
                          reference_time=logical if isinstance(logical, datetime) else None)
        entries = report.to_dict()["rules"]
        failed, quarantine = decide(rules, report.results, entries, "quarantine")
        summary: dict[str, Any] = {"status": "fail" if failed else report.status, "rules": len(rules),
                                   "failed_rules": {e["name"]: e.get("failing_rows") for e in entries
                                                    if e["status"] != "pass"}, "example": "",
                                   "rows_checked": report.row_count or 0}
        if failed:
            if obs is not None:  # the run summary (quality_failed alerts) and metrics of the failed gate
                obs.partial = {"records_read": summary["rows_checked"], "quality": summary}
            raise AirflowFailException(f"quality_rules: {len(failed)} rule(s) failed on {report.row_count} row(s); "
                                       f"nothing was loaded:\n{failure_table(failed)}")
        if not quarantine:
            return data, None, summary
        counted = [r for r in rules if r.counted and (report[r.rule_name].failing_rows or 0) > 0]
        passing, failing = split_rows(data, counted, only=[r.rule_name for r in quarantine])
        summary["example"] = "failed quality rules: " + ", ".join(r.rule_name for r in quarantine)
        self.log.info("quality_rules: rows failing %s go to the dead-letter queue",
                      ", ".join(r.rule_name for r in quarantine))
        return passing.cache(), failing, summary

    def _guard(self, context: Any) -> Guard:
        from airflow_etl_provider.hooks.resilience import guard_for

        conn_id = self.target.get("conn_id") or ("postgres_default" if self.target["type"] == "postgres" else "local")
        return guard_for(conn_id, retry=self.etl_retry_policy, circuit_breaker=self.breaker_policy,
                         classifier=classify_postgres, context=context, op=f"load {_describe_target(self.target)}")

    def _refuse_if_open(self, guard: Guard) -> None:
        from airflow_etl_provider.core.circuit_breaker import variable_key
        from airflow_etl_provider.hooks.resilience import raise_for_open_circuit

        if guard.breaker is None or self.breaker_policy is None:
            return
        snap = guard.breaker.state()
        retry_at = snap.refused_until(self.breaker_policy, time.time())
        if retry_at is not None:
            err = CircuitOpenError(guard.breaker.name, datetime.fromtimestamp(retry_at, tz=UTC),
                                   variable_key(guard.breaker.name), snap.last_error)
            raise_for_open_circuit(err, self.breaker_policy.on_open, policy=self.breaker_policy)

    def _dead_letter_hook(self, rc: Any) -> DeadLetterHook | None:
        from airflow_etl_provider.hooks.dead_letter import DeadLetterHook

        if self.dead_letter is None:
            return None
        config = dict(self.dead_letter)
        nested = config.get("config") if isinstance(config.get("config"), Mapping) else {}
        if config.get("type") == "file" and not config.get("path") and not nested.get("path"):
            home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
            config["path"] = os.environ.get("AIRFLOW_ETL_DLQ_PATH", str(Path(home) / "dead-letters"))
        return DeadLetterHook(config, pipeline_id=rc.pipeline_id, run_context=rc)

    def _conform(self, df: DataFrame) -> DataFrame:
        """Cast to the expected schema; list every missing column and impossible cast at once."""
        from pyspark.sql import functions as F
        from pyspark.sql.types import StructType

        expected = self.schema if isinstance(self.schema, StructType) else StructType.fromDDL(self.schema)
        problems: list[str] = []
        present = {c.lower(): c for c in df.columns}
        for fld in expected.fields:
            if fld.name.lower() not in present:
                problems.append(f"missing column {fld.name} ({fld.dataType.simpleString()})")
                continue
            try:
                _ = df.select(F.col(present[fld.name.lower()]).cast(fld.dataType)).schema  # analysis only, no job
            except Exception as err:  # AnalysisException: the cast is impossible
                actual = df.schema[present[fld.name.lower()]].dataType.simpleString()
                problems.append(f"column {fld.name}: cannot cast {actual} to {fld.dataType.simpleString()} "
                                f"({type(err).__name__})")
        if problems:
            raise ConfigError("schema", "the data does not match the expected schema: " + "; ".join(problems))
        casts = [F.col(present[f.name.lower()]).cast(f.dataType).alias(f.name) for f in expected.fields]
        extra = [F.col(c) for c in df.columns if c.lower() not in {f.name.lower() for f in expected.fields}]
        return df.select(*casts, *extra)

    def _load(self, data: DataFrame, guard: Guard, rc: Any) -> dict[str, Any]:
        if self.target["type"] == "parquet":
            read = data.count()
            if self.target.get("mode", "append") == "overwrite":
                overwrite_parquet(data, self.target["path"], self.target.get("partition_by") or (), call=guard.call)
                return {"records_read": read, "records_loaded": read, "records_rejected": 0, "rejected": None}
            writer = data.write.mode(self.target.get("mode", "append"))
            if self.target.get("partition_by"):
                writer = writer.partitionBy(*self.target["partition_by"])
            guard.call(writer.parquet, self.target["path"])
            return {"records_read": read, "records_loaded": read, "records_rejected": 0, "rejected": None}

        from airflow_etl_provider.hooks.postgres import SparkPostgresHook
        from airflow_etl_provider.hooks.postgres_load import PostgresLoader

        mode = self.target.get("mode", "append")
        # Outside a task (no run id) there is no natural idempotency key: a random one, never "None.None.None".
        load_id = self.target.get("load_id") or (f"{rc.dag_id}.{rc.task_id}.{rc.run_id}"
                                                 if mode == "append" and rc.run_id else None)
        loader = PostgresLoader(SparkPostgresHook(postgres_conn_id=self.target.get("conn_id") or "postgres_default"),
                                self.target["table"], mode, keys=self.target.get("keys") or (), load_id=load_id,
                                guard=guard, progress_interval_s=self.progress_interval_s,
                                stage_method=self.target.get("stage_method", "jdbc"),
                                copy_writer=self.target.get("copy_writer", "auto"),
                                copy_format=self.target.get("copy_format", "auto"))
        expected = data.count()  # the DataFrame is cached: this fills the cache the staging then reads
        outcome = loader.load(data)
        if outcome.records_read != expected:
            # The loader counts what reached staging (or what an earlier try recorded). Fewer rows than the
            # DataFrame holds means rows were lost on the way, e.g. PostgreSQL crashed between staging and the
            # merge retry and crash recovery emptied the UNLOGGED staging table: never report that as success.
            raise RowAccountingError(
                f"row accounting failed for {_describe_target(self.target)}: the DataFrame has {expected} row(s) "
                f"but load id {loader.load_id} {'was committed earlier with' if outcome.skipped else 'staged'} "
                f"{outcome.records_read}; check the etl_load_log row of that load id before loading again")
        result = {"records_read": outcome.records_read, "records_loaded": outcome.records_loaded,
                  "records_rejected": outcome.records_rejected, "rejected": outcome.rejected,
                  "skipped": outcome.skipped, "loader": loader, "dead_letter_spooled": outcome.dead_letter_spooled,
                  "dead_letter_spool": outcome.dead_letter_spool, "timings": outcome.timings}
        if outcome.skipped and not outcome.dead_letters_pending:
            # committed by an earlier try, which also had the DLQ confirm every rejected row
            result["recorded_dead_lettered"] = outcome.records_rejected
        return result

    def _dead_letter_rejected(self, dlq: DeadLetterHook, outcome: Mapping[str, Any], source: str, target: str) -> int:
        """Hand the load's rejected rows to the DLQ and record the delivery in the load log; return how many
        rows the DLQ now holds for this load.

        A first try publishes the rows from the executors. A retry whose load committed earlier with its
        dead letters still pending re-sends the spool files that try left on this worker when they are all
        here and hold exactly the rows it could not deliver (no row is sent twice); otherwise it publishes
        every rejected row again from the reject store (rows an earlier try delivered are sent again, with
        the same ``envelope_id``). Only when the DLQ confirmed every row is the load log marked
        ``delivered``; otherwise it records the new spool and :class:`DeadLetterUnavailableError` is raised.
        """
        from airflow_etl_provider.hooks.dead_letter import read_spool

        expected = int(outcome["records_rejected"])
        earlier = list(outcome.get("dead_letter_spool") or ())
        here = [p for p in earlier if os.path.isfile(p)]
        if outcome.get("skipped") and earlier:
            if len(here) == len(earlier):
                envelopes = list(read_spool(here))
                if len(envelopes) == outcome["dead_letter_spooled"]:
                    self.log.info("Re-sending the %d dead letter(s) an earlier try spooled on this worker: %s",
                                  len(envelopes), ", ".join(here))
                    resent = dlq.publish(envelopes, raise_on_spool=False)
                    self._record_delivery(dlq, outcome, resent, len(envelopes), superseded=here)
                    return expected  # the rest was confirmed by the earlier try
                self.log.warning("The spool files of an earlier try hold %d dead letter(s), the load log says %d: "
                                 "publishing all %d rejected row(s) again", len(envelopes),
                                 outcome["dead_letter_spooled"], expected)
            else:
                self.log.warning("Spool file(s) of an earlier try are not on this worker (%s): publishing all %d "
                                 "rejected row(s) again from the reject store",
                                 ", ".join(sorted(set(earlier) - set(here))), expected)
        result = dlq.publish_dataframe(outcome["rejected"], stage="load", key_columns=self.target.get("keys") or (),
                                       source=source, target=target, raise_on_spool=False)
        self._record_delivery(dlq, outcome, result, expected, superseded=here)
        return expected

    def _record_delivery(self, dlq: DeadLetterHook, outcome: Mapping[str, Any], result: PublishResult,
                         expected: int, superseded: Sequence[str]) -> None:
        """Record in the load log what the DLQ confirmed; raise unless it confirmed all ``expected`` rows.

        :param superseded: spool files of an earlier try whose rows were just published again: removed once
            the new state is recorded (their rows are in the DLQ or in the new spool files).
        """
        loader = outcome["loader"]
        complete = not result.spooled and result.delivered == expected
        loader.record_dead_letters(delivered=complete, location=dlq.location, spooled=result.spooled,
                                   spool_paths=result.spool_paths)
        for path in superseded:
            Path(path).unlink(missing_ok=True)
            self.log.info("Removed spool file %s: its dead letters were published again", path)
        if complete:
            return
        if not result.spooled:
            raise RowAccountingError(f"the dead-letter queue {dlq.location} confirmed {result.delivered} of the "
                                     f"{expected} rejected row(s) of load {loader.load_id}")
        raise DeadLetterUnavailableError(
            spool_path=", ".join(result.spool_paths), rows=result.spooled,
            replay_command=dlq.replay_command(result.spool_paths),
            reason=(f"{dlq.location}: {result.errors[0] if result.errors else 'unknown error'}; load "
                    f"{loader.load_id} is committed and its rejected rows are kept in PostgreSQL with "
                    "dead_letter_state 'pending' in the load log: retrying this task sends them again"))


def _summarise(rejected: DataFrame) -> dict[str, dict[str, Any]]:
    """Errors by class: count and one example message (a tiny aggregation of the rejected rows)."""
    from pyspark.sql import functions as F

    from airflow_etl_provider.hooks.dead_letter import ERROR_CLASS_COLUMN, ERROR_COLUMN

    rows = rejected.groupBy(ERROR_CLASS_COLUMN).agg(F.count("*").alias("n"), F.first(ERROR_COLUMN).alias("ex"))
    return {str(r[ERROR_CLASS_COLUMN]): {"count": int(r["n"]), "example": str(r["ex"])[:500]} for r in rows.collect()}


def _describe_source(source: Mapping[str, Any]) -> str:
    return f"{source.get('format')}:{source.get('path') or source.get('table') or 'query'}"


def _describe_target(target: Mapping[str, Any]) -> str:
    if target.get("type") == "postgres":
        return f"postgres:{target.get('conn_id') or 'postgres_default'}:{target.get('table')}"
    return f"parquet:{target.get('path')}"
