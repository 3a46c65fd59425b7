"""One task run's observability: metrics, spans and the run summary the notifiers send.

An operator wraps its work in :func:`observe`::

    def execute(self, context):
        with observe(self, context, "load", self.metrics) as obs:
            return obs.done(self._execute(context, obs))

and marks its stages (``obs.start_stage("read")`` ... ``obs.end_stage("read", rows=n)``). At the end, success or
failure, :meth:`TaskObservation.finish` turns the result (or what was known when it failed) into the catalogue's
points (:mod:`airflow_etl_provider.core.metrics`), hands them to the configured backends within a bounded time
(a backend down or slow costs one warning each, never the task), closes the spans and leaves the run summary on
the task (``task.etl_run_summary``) and in XCom (key ``etl_run_summary``) for the notifiers. Nothing here needs
the Airflow metadata database: connections come through the Task SDK, XCom through the execution API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from airflow_etl_provider.core.circuit_breaker import TransitionEvent
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.metrics import (
    MetricsRecorder,
    MetricsReporter,
    emit_all,
    record_load_result,
    record_quality_result,
    record_streaming_result,
)
from airflow_etl_provider.hooks import tracing
from airflow_etl_provider.hooks.metrics import DeferredReporter, configured_backends

log = logging.getLogger(__name__)
SUMMARY_XCOM_KEY = "etl_run_summary"
KINDS = ("load", "quality", "streaming")


def _conf_float(key: str, default: float) -> float:
    """``[etl_provider] <key>`` as seconds (> 0).

    :raises ConfigError: not a positive number.
    """
    from airflow.sdk.configuration import conf

    raw = conf.get("etl_provider", key, fallback=None)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 300:
        raise ConfigError(f"[etl_provider] {key}", "must be a number of seconds > 0 and <= 300", value=raw)
    return value


class TaskObservation:
    """Collects one task run's metrics, spans and summary.

    :param operator: the running operator (``dag_id``, ``task_id``; receives ``etl_run_summary``).
    :param context: the Airflow task context (``ti`` for the run's identity, XCom and the UI link).
    :param kind: ``load``, ``quality`` or ``streaming``.
    :param metrics: the operator's ``metrics`` argument (``None``: the deployment's configuration).
    :param reporters: explicit reporters (tests); default: built from ``metrics``.
    :param pipeline: the pipeline label (default: the dag_id).
    :param timeout_s: the most the metrics emission may take (default ``[etl_provider] metrics_timeout_s``, 5).
    """

    def __init__(
        self,
        operator: Any,
        context: Mapping[str, Any] | None,
        kind: str,
        metrics: Any = None,
        *,
        reporters: list[MetricsReporter] | None = None,
        pipeline: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.operator, self.kind = operator, kind
        self.context = context if isinstance(context, Mapping) else {}
        self.ti = self.context.get("ti")
        dag_id = getattr(self.ti, "dag_id", None) or getattr(operator, "dag_id", None)
        task_id = getattr(self.ti, "task_id", None) or getattr(operator, "task_id", None)
        self.recorder = MetricsRecorder(
            dag_id, task_id, pipeline or getattr(operator, "pipeline_id", None) or dag_id
        )
        self.reporters = (
            reporters
            if reporters is not None
            else [DeferredReporter(s) for s in configured_backends(metrics)]
        )
        self.timeout_s = timeout_s if timeout_s is not None else _conf_float("metrics_timeout_s", 5.0)
        self.result: Mapping[str, Any] | None = None
        self.partial: dict[str, Any] = {}
        self.breaker_name: str | None = None
        self.transitions: list[TransitionEvent] = []
        self._guard: Any = None
        self._spans: dict[str, Any] = {}
        self._started = time.monotonic()
        self.task_span: Any = None
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- during the run
    def watch_guard(self, guard: Any) -> None:
        """Count the guard's retries and its breaker's transitions (the breaker's ``on_transition``)."""
        self._guard = guard
        breaker = getattr(guard, "breaker", None)
        if breaker is None:
            return
        self.breaker_name = breaker.name
        previous = breaker.on_transition

        def on_transition(event: TransitionEvent) -> None:
            self.transitions.append(event)
            if previous is not None:
                previous(event)

        breaker.on_transition = on_transition

    def start_stage(self, stage: str) -> None:
        """Start timing ``stage`` and open its span (a child of the task span)."""
        self.recorder.start_stage(stage)
        self._spans[stage] = tracing.tracer().start_span(f"etl.{stage}")

    def end_stage(self, stage: str, outcome: str = "ok", **attributes: Any) -> None:
        """Stop timing ``stage``; its span gets ``etl.outcome`` and ``attributes`` (as ``etl.<name>``)."""
        elapsed = self.recorder.end_stage(stage, outcome)
        span = self._spans.pop(stage)
        span.set_attributes(
            tracing.safe_attributes(
                {
                    "etl.stage": stage,
                    "etl.outcome": outcome,
                    "etl.duration_s": round(elapsed, 6),
                    **{f"etl.{k}": v for k, v in attributes.items()},
                }
            )
        )
        span.end()

    def _child_spans(self, parent: str, spans: list[tuple[str, float, dict[str, Any]]]) -> None:
        """Spans laid end to end up to now, children of the open stage ``parent`` (else of the task span)."""
        from opentelemetry import trace

        parent_span = self._spans.get(parent)
        ctx = trace.set_span_in_context(parent_span) if parent_span is not None else None
        end = time.time_ns()
        for name, seconds, attributes in reversed(spans):
            start = end - int(float(seconds) * 1e9)
            span = tracing.tracer().start_span(name, context=ctx, start_time=start)
            span.set_attributes({**attributes, "etl.duration_s": float(seconds)})
            span.end(end_time=end)
            end = start

    def record_phases(self, timings: Mapping[str, float], parent: str = "load") -> None:
        """Record phases a hook timed itself (e.g. the PostgreSQL loader's ``plan``, ``stage``, ``merge``: the
        merge includes the commit, one transaction) as stage durations, and as spans under the stage ``parent``
        (call it before ending that stage).
        """
        for phase, seconds in timings.items():
            self.recorder.add("etl_stage_duration_seconds", float(seconds), stage=phase, outcome="ok")
        self._child_spans(
            parent,
            [
                (f"etl.{phase}", seconds, {"etl.stage": phase, "etl.outcome": "ok"})
                for phase, seconds in timings.items()
            ],
        )

    def record_batches(self, durations: Any, parent: str = "stream") -> None:
        """One span per streaming micro-batch (the ledger's durations) under the stage ``parent``; the
        ``etl_stream_batch_duration_seconds`` points come from the result at the end."""
        self._child_spans(
            parent,
            [
                ("etl.stream_batch", d, {"etl.batch_index": i, "etl.outcome": "ok"})
                for i, d in enumerate(durations)
            ],
        )

    def done(self, result: Mapping[str, Any]) -> Any:
        """Keep the task's result for the metrics and the summary; return it."""
        self.result = result
        return result

    # ----------------------------------------------------------------------------------- the end
    def finish(self, error: BaseException | None) -> dict[str, Any]:
        """Record the points, emit them (bounded), close the spans, publish the summary; return the summary."""
        finished_at = time.time()  # the task's work is over: what follows is the metrics' export
        outcome = (
            "success"
            if error is None
            else ("rescheduled" if type(error).__name__ == "AirflowRescheduleException" else "failed")
        )
        for stage in self.recorder.open_stages():
            self.end_stage(stage, outcome="failed")
        data: Mapping[str, Any] = self.result if self.result is not None else self.partial
        rec = self.recorder
        if data:
            if self.kind == "load":
                record_load_result(rec, data, breaker=self.breaker_name)
            elif self.kind == "quality":
                record_quality_result(rec, data)
            else:
                record_streaming_result(
                    rec, data, late_to_dlq=isinstance(getattr(self.operator, "late_data", None), Mapping)
                )
        if self._guard is not None:
            if not data:
                rec.add("etl_attempts", self._guard.stats.attempts)
            by_class: dict[str, int] = {}
            for event in self._guard.stats.retry_events:
                by_class[type(event.error).__name__] = by_class.get(type(event.error).__name__, 0) + 1
            for error_class, n in sorted(by_class.items()):
                rec.add("etl_retries", n, error_class=error_class)
        for event in self.transitions:
            rec.add(
                "etl_circuit_transitions",
                1,
                breaker=event.name,
                from_state=event.from_state.value,
                to_state=event.to_state.value,
            )
        rec.add("etl_task_duration_seconds", time.monotonic() - self._started, outcome=outcome)
        self.summary = self._summary(data, outcome, error, finished_at)
        if self.task_span is not None:
            self.task_span.set_attributes(
                tracing.safe_attributes(
                    {
                        "etl.kind": self.kind,
                        "etl.outcome": outcome,
                        "etl.rows_read": self.summary["rows_read"],
                        "etl.rows_loaded": self.summary["rows_loaded"],
                        "etl.rows_dead_lettered": self.summary["rows_dead_lettered"],
                        "etl.error_class": type(error).__name__ if error is not None else None,
                    }
                )
            )
        deliveries = emit_all(self.reporters, rec.points, timeout_s=self.timeout_s, warn=log.warning)
        self.summary["metrics"] = [
            {"backend": d.reporter, "ok": d.ok, "detail": d.detail} for d in deliveries
        ]
        if deliveries:
            log.info(
                "Metrics: %s",
                "; ".join(f"{d.reporter} -> {d.detail if d.ok else 'NOT delivered'}" for d in deliveries),
            )
        self._publish_summary()
        return self.summary

    def _summary(
        self, data: Mapping[str, Any], outcome: str, error: BaseException | None, finished_at: float
    ) -> dict[str, Any]:
        rec = self.recorder
        errors = data.get("errors") or {}
        top = sorted(
            (
                {"error_class": k, "count": int(v.get("count") or 0), "example": str(v.get("example") or "")}
                for k, v in errors.items()
            ),
            key=lambda e: -e["count"],
        )[:5]
        rules = (data.get("report") or {}).get("rules") or []
        failed_rules = {
            e["name"]: e.get("failing_rows") for e in rules if e.get("status") not in (None, "pass")
        }
        failed_rules.update((data.get("quality") or {}).get("failed_rules") or {})
        ti = self.ti
        return {
            "kind": self.kind,
            "outcome": outcome,
            **rec.base,
            "run_id": getattr(ti, "run_id", None),
            "try_number": getattr(ti, "try_number", None),
            "error": _describe_error(error),
            "rows_read": int(rec.value("etl_rows_read")),
            "rows_loaded": int(rec.value("etl_rows_loaded")),
            "rows_dead_lettered": int(rec.value("etl_rows_dead_lettered")),
            "rows_quarantined": int(rec.value("etl_rows_quarantined")),
            "late_rows": int(rec.value("etl_late_rows")),
            "watermark_lag_s": data.get("watermark_lag_s"),
            "failed_rules": failed_rules,
            "rule_results": [
                {
                    k: e.get(k)
                    for k in ("name", "type", "columns", "status", "severity", "failing_rows", "threshold")
                }
                for e in rules
            ],
            "top_errors": top,
            "dead_letter_location": data.get("dead_letter_location"),
            "report_path": data.get("report_path"),
            "target": data.get("target"),
            "circuit_breaker": self.breaker_name,
            "circuit_state": data.get("circuit_state"),
            "circuit_transitions": [
                {"from": e.from_state.value, "to": e.to_state.value, "reason": e.reason}
                for e in self.transitions
            ],
            "duration_s": round(time.monotonic() - self._started, 3),
            "finished_at": finished_at,
            "ti_url": _ti_url(ti),
        }

    def _publish_summary(self) -> None:
        try:
            self.operator.etl_run_summary = self.summary
        except AttributeError as err:  # a frozen/slotted task object: XCom still carries it
            log.warning("Could not keep the run summary on the task object: %s", err)
        push = getattr(self.ti, "xcom_push", None)
        if push is None:
            return
        try:
            push(SUMMARY_XCOM_KEY, self.summary)
        except Exception as err:  # the summary is a convenience: its loss must not change the task's outcome
            log.warning(
                "Could not push the run summary to XCom (key %s): %s: %s",
                SUMMARY_XCOM_KEY,
                type(err).__name__,
                err,
            )


def _describe_error(error: BaseException | None) -> str | None:
    """``Class: message``, with the cause's when there is one (a reschedule caused by ``CircuitOpenError``)."""
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__ or error.__context__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:1000]


def _ti_url(ti: Any) -> str | None:
    """The task instance's page in the Airflow UI (the Task SDK's ``log_url``, built from ``[api] base_url``)."""
    if ti is None:
        return None
    try:
        url = ti.log_url
    except (AttributeError, TypeError, ValueError) as err:  # a stub ti outside Airflow, or no logical date
        log.debug("No task instance URL: %s", err)
        return None
    return url if isinstance(url, str) else None


@contextmanager
def observe(
    operator: Any, context: Any, kind: str, metrics: Any = None, **kwargs: Any
) -> Iterator[TaskObservation]:
    """Observe one task run (see the module docstring): the task span around it, metrics and summary at its end.

    The task's own exception always propagates unchanged; observability failures are warnings.
    """
    try:
        tracing.ensure_tracer_provider()
    except Exception as err:  # tracing set-up must not cost the task: reported, spans stay no-ops
        log.warning(
            "OpenTelemetry: no exporter installed from the OTEL_* environment (%s: %s); spans are not "
            "exported",
            type(err).__name__,
            err,
        )
    obs = TaskObservation(operator, context, kind, metrics, **kwargs)
    with tracing.tracer().start_as_current_span(
        "etl.task", record_exception=True, set_status_on_exception=True
    ) as span:
        obs.task_span = span
        span.set_attributes(
            tracing.safe_attributes(
                {
                    "etl.kind": kind,
                    "etl.dag_id": obs.recorder.base["dag_id"],
                    "etl.task_id": obs.recorder.base["task_id"],
                    "etl.pipeline": obs.recorder.base["pipeline"],
                }
            )
        )
        error: BaseException | None = None
        try:
            yield obs
        except BaseException as err:
            error = err
            raise
        finally:
            try:
                obs.finish(error)
            except (
                Exception
            ):  # a bug in the metrics path: reported with its traceback, the task's outcome stands
                log.warning(
                    "Observability failed for this run; the task's outcome is unchanged", exc_info=True
                )
    tracing.flush(min(obs.timeout_s, 5.0))
