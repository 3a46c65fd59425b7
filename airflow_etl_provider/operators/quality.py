"""DataQualityOperator: declarative rules on a Spark DataFrame, in one pass, with fail / warn / quarantine.

The operator is thin. At parse time it only validates its configuration (rules given as a list are parsed
and every mistake names the rule and the fix; no I/O). At run time it reads the source
(:func:`~airflow_etl_provider.hooks.sources.read_source`), evaluates the rules with
:func:`~airflow_etl_provider.hooks.quality.evaluate` (one aggregation for every row-level rule), optionally
profiles the columns, then acts:

* ``fail`` (the default): the task fails with a readable table of the failed rules, after the report,
  the history and the HTML page are written (a failed check never looks like a success);
* ``warn``: the failures are logged and the task succeeds;
* ``quarantine``: rows failing a quarantine rule go to the dead-letter queue, each with the names of every
  rule it failed; the other rows go to ``output``; ``passed + quarantined == read`` is checked.

A rule's own ``action`` wins over ``on_failure``; a rule of severity ``warn`` only warns. Quarantine acts
on row-level and ``unique`` rules; a dataset rule (row_count, freshness, sql ...) with action quarantine
fails the task, since there is no row to set aside. A quarantine rule with an explicit threshold
(``mostly`` / ``max_failures``) fails the task when the threshold is exceeded: a few bad rows are set
aside, a flood means the source is broken. When the task fails, the batch is rejected as a whole: nothing
is quarantined and nothing is written to ``output`` (``records_failed`` = rows read), so a re-run after
the fix does not meet dead letters of a previous try.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_etl_provider.core.config import is_templated as _templated
from airflow_etl_provider.core.config import parse_dead_letter
from airflow_etl_provider.core.errors import ConfigError, DataQualityError, RowAccountingError
from airflow_etl_provider.core.metrics import parse_backends
from airflow_etl_provider.core.rules import ACTIONS, Rule, RuleResult, parse_rules, to_jsonable
from airflow_etl_provider.core.rules.actions import (  # noqa: F401 (resolve_action: public here too)
    check_quarantine_config,
    decide,
    resolve_action,
    resolve_rules,
)
from airflow_etl_provider.hooks.quality_history import validate_history
from airflow_etl_provider.hooks.sources import validate_source

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from airflow_etl_provider.hooks.dead_letter import DeadLetterHook
    from airflow_etl_provider.hooks.observability import TaskObservation

REPORT_XCOM_KEY = "dq_report"
REPORT_URL_XCOM_KEY = "dq_report_url"
OUTPUT_FORMATS = ("parquet", "orc", "json", "csv")
OUTPUT_MODES = ("overwrite", "append", "error", "ignore")
OUTPUT_KEYS = ("format", "path", "mode", "partition_by", "options")


def validate_output(output: Mapping[str, Any], field: str = "output") -> None:
    """Check an ``output`` config's shape without I/O."""
    if not isinstance(output, Mapping):
        raise ConfigError(field, "must be a mapping such as {'format': 'parquet', 'path': ...}", value=output)
    unknown = sorted(set(output) - set(OUTPUT_KEYS))
    if unknown:
        raise ConfigError(field, f"unknown key(s) {unknown}", allowed=OUTPUT_KEYS)
    if not output.get("path"):
        raise ConfigError(f"{field}.path", "is required: where the rows that pass go (for the next task)")
    if output.get("format", "parquet") not in OUTPUT_FORMATS:
        raise ConfigError(f"{field}.format", "is not a supported output format", value=output.get("format"),
                          allowed=OUTPUT_FORMATS)
    if output.get("mode", "overwrite") not in OUTPUT_MODES:
        raise ConfigError(f"{field}.mode", "is not a supported save mode", value=output.get("mode"),
                          allowed=OUTPUT_MODES)


class DataQualityReportLink(BaseOperatorLink):
    """The task's "Data quality report" button: the HTML report written to ``report_path``."""

    name = "Data quality report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=REPORT_URL_XCOM_KEY, ti_key=ti_key) or ""


class DataQualityOperator(BaseOperator):
    """Check a dataset against declarative rules in one pass; fail, warn or quarantine what fails.

    :param source: what to check (templated), the same forms as the load operator: ``{"format":
        "parquet"|"orc"|"csv"|"json", "path": ..., "options": {...}, "schema": "<DDL>"}``, ``{"format":
        "jdbc", "conn_id": ..., "table"|"query": ...}``, ``{"format": "table", "table": ...}``. Rows of a
        CSV/JSON source that cannot be parsed are quarantined (stage ``parse``) or fail the task.
    :param rules: a list of rule dicts, a mapping with ``rules`` / ``column_mapping`` / ``checks`` (the
        common-sql forms) or a YAML/JSON file path (relative paths are relative to the DAG file). Templated.
    :param on_failure: the action of rules that do not set one: ``fail`` (default), ``warn`` or
        ``quarantine``.
    :param dead_letter: where quarantined rows go (templated): ``{"type": "kafka", "conn_id": ...,
        "topic": ...}``, ``{"type": "s3", ...}`` or ``{"type": "file", "path": ...}``. Required for
        quarantine.
    :param output: where the rows that pass go, for the next task (templated): ``{"format": "parquet",
        "path": ..., "mode": "overwrite", "partition_by": [...], "options": {...}}``. Not written when the
        task fails.
    :param sample_size: failing rows kept per rule in the report (key columns + the rule's columns).
    :param profile: add column profiles to the report (null ratio, approximate distinct count, min/max,
        mean/stddev, string lengths, top values); two more Spark queries.
    :param report_path: where to write the HTML report (templated): a local path or ``s3://bucket/key``
        (through ``aws_conn_id``). The task's "Data quality report" link points at it: a ``file://`` URI,
        the AWS console page of the object, or (S3-compatible endpoints) a 7-day pre-signed URL.
    :param report_url: the link to show instead of the one derived from ``report_path`` (e.g. the URL a web
        server publishes the report folder under). Templated.
    :param history: keep per-run metrics in PostgreSQL (and feed ``row_count_change`` rules):
        ``{"conn_id": "postgres_default", "table": "etl_dq_history", "dataset": "<dag>.<task>",
        "window": 30}``.
    :param key_columns: business-key columns shown in every sample and used as the DLQ message key.
    :param spark_conn_id: ``spark`` (local[*] or spark://) or ``spark_connect`` connection.
    :param spark_conf: Spark conf overriding the connection's extras.
    :param aws_conn_id: the connection for an ``s3://`` report_path.
    :param pipeline_id: the pipeline name in dead letters (default: the dag_id).
    :param fail_fast: when rules fail, fail without Airflow retries (default ``True``: re-checking the same
        data gives the same answer). ``False`` raises a retryable error, for sources that are fixed
        upstream between tries.
    :param metrics: metrics backends for this task (see the load operator); ``None``: the deployment's
        ``[etl_provider] metrics_backends``; ``[]``: none.
    """

    template_fields: Sequence[str] = ("source", "rules", "dead_letter", "output_config", "report_path", "report_url",
                                      "history", "pipeline_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"source": "json", "rules": "json",
                                                            "dead_letter": "json", "output_config": "json",
                                                            "history": "json"}
    operator_extra_links = (DataQualityReportLink(),)
    ui_color = "#eef3fb"

    def __init__(
        self,
        *,
        source: Mapping[str, Any],
        rules: Any,
        on_failure: str = "fail",
        dead_letter: Mapping[str, Any] | None = None,
        output: Mapping[str, Any] | None = None,
        sample_size: int = 10,
        profile: bool = False,
        report_path: str | None = None,
        report_url: str | None = None,
        history: Mapping[str, Any] | None = None,
        key_columns: Sequence[str] = (),
        spark_conn_id: str = "spark_default",
        spark_conf: Mapping[str, Any] | None = None,
        aws_conn_id: str = "aws_default",
        pipeline_id: str | None = None,
        fail_fast: bool = True,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_failure not in ACTIONS:
            raise ConfigError("on_failure", "is not a supported action", value=on_failure, allowed=ACTIONS)
        if not isinstance(sample_size, int) or isinstance(sample_size, bool) or sample_size < 0:
            raise ConfigError("sample_size", "must be an integer >= 0 (0 disables samples)", value=sample_size)
        if not _templated(source):
            validate_source(source)
        if output is not None and not _templated(output):
            validate_output(output)
        if history is not None:
            validate_history(history)
        if dead_letter is not None and not _templated(dead_letter):
            parse_dead_letter(dead_letter)
        # Rules given inline are parsed now, so a bad rule fails when the DAG file is parsed; a rules file
        # is read at run time (no I/O at parse time), with the same checks before any Spark job.
        if not isinstance(rules, str | os.PathLike) and not _templated(rules):
            check_quarantine_config(parse_rules(rules), on_failure, dead_letter)
        self.source = dict(source)
        self.rules = rules if isinstance(rules, str | os.PathLike) else to_jsonable(rules)
        self.on_failure = on_failure
        self.dead_letter = dict(dead_letter) if dead_letter is not None else None
        # ``BaseOperator.output`` is the XComArg of the return value: the config lives in ``output_config``.
        self.output_config = dict(output) if output is not None else None
        self.sample_size = sample_size
        self.profile = profile
        self.report_path = report_path
        self.report_url = report_url
        self.history = dict(history) if history is not None else None
        self.key_columns = list(key_columns)
        self.spark_conn_id = spark_conn_id
        self.spark_conf = dict(spark_conf or {})
        self.aws_conn_id = aws_conn_id
        self.pipeline_id = pipeline_id
        self.fail_fast = fail_fast
        if metrics is not None and not _templated(metrics):
            parse_backends(metrics)
        self.metrics = metrics

    # ------------------------------------------------------------------------------------ execute
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_etl_provider.hooks.observability import observe

        with observe(self, context, "quality", self.metrics, pipeline=self.pipeline_id) as obs:
            return obs.done(self._execute(context, obs))

    def _execute(self, context: Any, obs: TaskObservation) -> dict[str, Any]:
        from airflow_etl_provider.hooks.quality import evaluate
        from airflow_etl_provider.hooks.quality import profile as profile_columns
        from airflow_etl_provider.hooks.resilience import run_context
        from airflow_etl_provider.hooks.sources import read_source
        from airflow_etl_provider.hooks.spark import SparkSessionHook

        started = time.monotonic()
        validate_source(self.source)
        if self.output_config is not None:
            validate_output(self.output_config)
        rules = resolve_rules(self.rules, context if isinstance(context, Mapping) else None)
        check_quarantine_config(rules, self.on_failure, self.dead_letter)
        rc = run_context(context, self.pipeline_id)
        dataset = (self.history or {}).get("dataset") or f"{rc.dag_id or 'adhoc'}.{rc.task_id or self.task_id}"
        history_hook = self._history_hook()
        previous: list[int] = []
        if history_hook is not None and any(r.type == "row_count_change" for r in rules):
            window = int((self.history or {}).get("window", 30))
            previous = history_hook.previous_row_counts(dataset, rc.run_id, window)
        logical = context.get("logical_date") if isinstance(context, Mapping) else None
        reference = logical if isinstance(logical, datetime) else datetime.now(UTC)
        source_name = f"{self.source.get('format')}:{self.source.get('path') or self.source.get('table') or 'query'}"

        with SparkSessionHook(self.spark_conn_id, self.spark_conf,
                              app_name=f"{rc.dag_id}.{rc.task_id}").session() as spark:
            frames = read_source(spark, self.source)
            data = frames.data.cache()
            try:
                obs.start_stage("validate")
                report = evaluate(data, rules, sample_size=self.sample_size, key_columns=self.key_columns,
                                  reference_time=reference, spark=spark, row_count_history=previous)
                obs.end_stage("validate", rows=report.row_count or 0, status=report.status)
                corrupt_n = frames.corrupt.count() if frames.corrupt is not None else 0
                doc = report.to_dict()
                doc["run"] = {"dag_id": rc.dag_id, "task_id": rc.task_id, "run_id": rc.run_id,
                              "try_number": rc.try_number}
                doc["source"] = source_name
                if self.profile:
                    doc["profile"] = to_jsonable(profile_columns(data))
                results = {r.name: r for r in report.results}
                failed, quarantine = decide(rules, report.results, doc["rules"], self.on_failure)
                if corrupt_n:
                    doc["rules"].insert(0, self._parse_entry(corrupt_n, report.row_count or 0))
                if corrupt_n and self.dead_letter is None:
                    failed.insert(0, doc["rules"][0])
                total_read = (report.row_count or 0) + corrupt_n
                if failed:  # the batch is rejected as a whole: nothing quarantined, nothing written
                    accounting: dict[str, Any] = {"records_read": total_read, "records_passed": 0,
                                                  "records_quarantined": 0, "records_failed": total_read,
                                                  "dead_letter_location": None}
                else:
                    obs.start_stage("dead_letter")
                    accounting = self._quarantine_and_output(data, frames.corrupt, rules, results, quarantine,
                                                             corrupt_n, doc, rc, source_name)
                    obs.end_stage("dead_letter", rows=accounting["records_quarantined"])
                    accounting["records_read"] = total_read
                    if total_read != accounting["records_passed"] + accounting["records_quarantined"]:
                        raise RowAccountingError(
                            f"row accounting failed for {source_name}: records_read={total_read} != records_passed="
                            f"{accounting['records_passed']} + records_quarantined={accounting['records_quarantined']}")
                doc["accounting"] = accounting
                # The outcome: fail (the task fails), warn (rules failed but were quarantined or only warn),
                # pass. Each rule keeps its own status.
                doc["status"] = "fail" if failed else ("warn" if doc["status"] != "pass" or corrupt_n else "pass")
            finally:
                data.unpersist()

        doc["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["duration_s"] = round(time.monotonic() - started, 3)
        self._publish_report(doc, context)
        if history_hook is not None and rc.run_id is not None:
            history_hook.record(dataset, rc.run_id, doc, dag_id=rc.dag_id, task_id=rc.task_id,
                                logical_date=logical if isinstance(logical, datetime) else None)
        self._log_outcome(doc)
        obs.partial = {**accounting, "report": doc, "report_path": doc.get("report_path")}
        if failed:
            self._raise(failed, doc)
        return {**accounting, "status": doc["status"], "summary": doc["summary"], "report": doc,
                "report_path": doc.get("report_path"), "output": doc.get("output")}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the checked source in (with the ``dataQualityAssertions`` facet), the output and the
        dead-letter queue out, row accounting (:mod:`airflow_etl_provider.hooks.lineage`)."""
        from airflow_etl_provider.hooks import lineage

        outputs = [lineage.target_dataset(self.output_config) if self.output_config else None,
                   lineage.dead_letter_dataset(self.dead_letter)]
        return lineage.operator_lineage(getattr(self, "etl_run_summary", None), [lineage.source_dataset(self.source)],
                                        outputs)

    # ----------------------------------------------------------------------------------- helpers
    def _quarantine_and_output(self, data: DataFrame, corrupt: DataFrame | None, rules: Sequence[Rule],
                               results: Mapping[str, RuleResult], quarantine: Sequence[Rule], corrupt_n: int,
                               doc: dict[str, Any], rc: Any, source_name: str) -> dict[str, Any]:
        """Send the rows failing quarantine rules (and unparseable rows) to the DLQ, write the others to
        ``output``; return the accounting."""
        from airflow_etl_provider.hooks.quality import split_rows

        dlq = self._dead_letter_hook(rc) if (quarantine or corrupt_n) and self.dead_letter else None
        passing, passed, quarantined = data, doc.get("row_count") or 0, 0
        if quarantine:
            assert dlq is not None  # check_quarantine_config
            counted = [r for r in rules if r.counted and (results[r.rule_name].failing_rows or 0) > 0]
            passing, failing = split_rows(data, counted, only=[r.rule_name for r in quarantine])
            quarantined += dlq.publish_dataframe(failing, stage="quality", key_columns=self.key_columns,
                                                 source=source_name, target=self._output_name(),
                                                 default_error="failed quality rules").delivered
            passed = passing.count()
            names = {r.rule_name for r in quarantine}
            for entry in doc["rules"]:
                if entry["name"] in names:
                    entry["action_taken"] = f"quarantined {entry['failing_rows']:,} row(s)"
        if corrupt_n and corrupt is not None and dlq is not None:
            from pyspark.sql import functions as F

            from airflow_etl_provider.hooks.dead_letter import ERROR_CLASS_COLUMN, ERROR_COLUMN

            bad = (corrupt.withColumn(ERROR_COLUMN, F.lit("the row could not be parsed with the source's schema"))
                   .withColumn(ERROR_CLASS_COLUMN, F.lit("CorruptRecord")))
            quarantined += dlq.publish_dataframe(bad, stage="parse", source=source_name,
                                                 target=self._output_name()).delivered
            doc["rules"][0]["action_taken"] = f"quarantined {corrupt_n:,} row(s)"
        if self.output_config is not None:
            self._write_output(passing)
            doc["output"] = self.output_config["path"]
        return {"records_passed": passed, "records_quarantined": quarantined, "records_failed": 0,
                "dead_letter_location": dlq.location if dlq is not None and quarantined else None}

    def _parse_entry(self, corrupt: int, parsed: int) -> dict[str, Any]:
        total = corrupt + parsed
        action = "quarantine" if self.dead_letter is not None else "fail"
        return {"name": "parseable", "type": "parse", "columns": [], "status": "fail", "severity": "error",
                "action": action, "failing_rows": corrupt, "failure_ratio": corrupt / total if total else 0.0,
                "threshold": "no failing rows", "observed": None, "samples": [],
                "message": f"{corrupt} row(s) could not be parsed with the source's schema"
                           + ("" if self.dead_letter else ": configure dead_letter to quarantine them")}

    def _history_hook(self) -> Any:
        if self.history is None:
            return None
        from airflow_etl_provider.hooks.quality_history import DEFAULT_TABLE, QualityHistoryHook

        return QualityHistoryHook(self.history.get("conn_id") or "postgres_default",
                                  self.history.get("table") or DEFAULT_TABLE)

    def _dead_letter_hook(self, rc: Any) -> DeadLetterHook:
        from airflow_etl_provider.hooks.dead_letter import DeadLetterHook

        assert self.dead_letter is not None
        return DeadLetterHook(self.dead_letter, pipeline_id=rc.pipeline_id, run_context=rc)

    def _output_name(self) -> str | None:
        return f"{self.output_config.get('format', 'parquet')}:{self.output_config['path']}" if self.output_config else None

    def _write_output(self, df: DataFrame) -> None:
        assert self.output_config is not None
        fmt, mode = self.output_config.get("format", "parquet"), self.output_config.get("mode", "overwrite")
        if fmt == "parquet" and mode == "overwrite" and not self.output_config.get("options"):
            from airflow_etl_provider.hooks.parquet import overwrite_parquet

            # a failed write keeps the previous output (staged, then swapped in): see overwrite_parquet
            overwrite_parquet(df, self.output_config["path"], self.output_config.get("partition_by") or (),
                              field="output.path")
            return
        writer = df.write.mode(self.output_config.get("mode", "overwrite")).format(self.output_config.get("format", "parquet"))
        if self.output_config.get("partition_by"):
            writer = writer.partitionBy(*self.output_config["partition_by"])
        if self.output_config.get("options"):
            writer = writer.options(**{str(k): str(v) for k, v in self.output_config["options"].items()})
        writer.save(self.output_config["path"])

    def _publish_report(self, doc: dict[str, Any], context: Any) -> None:
        """Write the HTML page (``report_path``) and push the report and its link to XCom."""
        from airflow_etl_provider.core.report import render_html

        url = self.report_url
        if self.report_path:
            page = render_html(doc)
            if self.report_path.startswith("s3://"):
                url = url or self._write_s3(self.report_path, page)
            else:
                path = Path(self.report_path).expanduser().absolute()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(page, encoding="utf-8")
                tmp.replace(path)  # readers never see half a page
                url = url or path.as_uri()
            doc["report_path"] = self.report_path
            self.log.info("Data-quality report written to %s", self.report_path)
        if url:
            doc["report_url"] = url
        ti = context.get("ti") if isinstance(context, Mapping) else None
        if ti is not None:
            ti.xcom_push(key=REPORT_XCOM_KEY, value=doc)
            if url:
                ti.xcom_push(key=REPORT_URL_XCOM_KEY, value=url)

    def _write_s3(self, uri: str, page: str) -> str:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket or not key:
            raise ConfigError("report_path", "an S3 report path needs a bucket and a key: s3://bucket/path.html",
                              value=uri)
        hook = S3Hook(aws_conn_id=self.aws_conn_id)
        hook.get_conn().put_object(Bucket=bucket, Key=key, Body=page.encode("utf-8"),
                                   ContentType="text/html; charset=utf-8")
        if hook.conn_config.endpoint_url:
            # An S3-compatible server (MinIO, moto ...) has no console: a pre-signed GET, valid for the
            # longest time SigV4 allows (7 days); pass report_url for a permanent link.
            return str(hook.generate_presigned_url("get_object", params={"Bucket": bucket, "Key": key},
                                                   expires_in=7 * 24 * 3600))
        return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}"

    def _log_outcome(self, doc: Mapping[str, Any]) -> None:
        from airflow_etl_provider.core.report import failure_table

        bad = [r for r in doc["rules"] if r.get("status") != "pass"]
        self.log.info("Data quality %s: %s on %s row(s); accounting %s", doc["status"].upper(), doc["summary"],
                      doc.get("row_count"), doc.get("accounting"))
        if bad:
            self.log.warning("Rules that did not pass:\n%s", failure_table(bad))

    def _raise(self, failed: list[dict[str, Any]], doc: Mapping[str, Any]) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_etl_provider.core.report import failure_table

        where = f" (report: {doc['report_url']})" if doc.get("report_url") else ""
        message = (f"{len(failed)} data-quality rule(s) failed on {doc.get('row_count')} row(s){where}:\n"
                   + failure_table(failed))
        error = DataQualityError(message, report=doc)
        if self.fail_fast:
            raise AirflowFailException(message) from error
        raise error
