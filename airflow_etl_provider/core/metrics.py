"""The metrics layer's pure part: the stable metric catalogue, the reporter interface, a per-task recorder,
the translation of the operators' results into points, the backend configuration and a bounded dispatcher.

Nothing here does I/O or imports Airflow: the backends (Airflow's Stats, the Prometheus Pushgateway,
CloudWatch) live in :mod:`airflow_etl_provider.hooks.metrics` and implement :class:`MetricsReporter`.

A task records :class:`MetricPoint` s while it runs (:class:`MetricsRecorder`) and hands them to every
configured reporter once, at its end (:func:`emit_all`): each reporter runs in its own daemon thread and the
whole emission is bounded by ``timeout_s``; a reporter that fails or does not answer in time costs one warning,
never the task.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_etl_provider.core.errors import ConfigError

COUNTER, GAUGE, TIMING = "counter", "gauge", "timing"
BASE_LABELS = ("dag_id", "task_id", "pipeline")


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the stable catalogue.

    :param name: the metric's name (Prometheus style; Airflow Stats and CloudWatch use it as is).
    :param kind: ``counter`` (an amount this run added), ``gauge`` (a level) or ``timing`` (observations in
        seconds).
    :param labels: the labels beyond ``dag_id``, ``task_id``, ``pipeline`` (always present).
    :param description: what it counts.
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    description: str


CATALOG: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("etl_rows_read", COUNTER, (), "rows the task read from its source (stream: input rows)"),
        MetricSpec(
            "etl_rows_loaded", COUNTER, (), "rows written to the target (stream: window rows written)"
        ),
        MetricSpec(
            "etl_rows_dead_lettered",
            COUNTER,
            ("stage", "error_class"),
            "rows sent to the dead-letter queue, by stage (parse, load, quality, late_data) and error class",
        ),
        MetricSpec("etl_rows_quarantined", COUNTER, (), "rows a quality check sent to the dead-letter queue"),
        MetricSpec("etl_rule_failing_rows", GAUGE, ("rule", "status"), "failing rows of one quality rule"),
        MetricSpec("etl_rule_status", GAUGE, ("rule",), "one quality rule's status: 0 pass, 1 warn, 2 fail"),
        MetricSpec(
            "etl_attempts", COUNTER, (), "attempts that reached the protected system (retry + breaker)"
        ),
        MetricSpec(
            "etl_retries", COUNTER, ("error_class",), "retried attempts, by the error that caused them"
        ),
        MetricSpec(
            "etl_circuit_state",
            GAUGE,
            ("breaker",),
            "the circuit breaker's state at the task's end: 0 closed, 1 half-open, 2 open",
        ),
        MetricSpec(
            "etl_circuit_transitions",
            COUNTER,
            ("breaker", "from_state", "to_state"),
            "circuit breaker state changes this task caused",
        ),
        MetricSpec(
            "etl_stage_duration_seconds",
            TIMING,
            ("stage", "outcome"),
            "duration of a stage: read, validate, load (phases plan, stage, merge incl. commit, rejected, "
            "cleanup), dead_letter, stream",
        ),
        MetricSpec("etl_task_duration_seconds", TIMING, ("outcome",), "the task's execute(), by outcome"),
        MetricSpec("etl_stream_batches", COUNTER, (), "streaming micro-batches processed"),
        MetricSpec("etl_stream_batch_duration_seconds", TIMING, (), "duration of each streaming micro-batch"),
        MetricSpec(
            "etl_watermark_lag_seconds", GAUGE, (), "newest event time minus the watermark after the run"
        ),
        MetricSpec("etl_late_rows", COUNTER, (), "rows behind the watermark (dead-lettered or dropped)"),
    )
}

CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
RULE_STATUS_VALUES = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class MetricPoint:
    """One value of one metric with its labels (the base labels included).

    :param name: a :data:`CATALOG` name.
    :param kind: its kind (from the catalogue).
    :param value: the value (seconds for a timing).
    :param labels: label name -> value.
    """

    name: str
    kind: str
    value: float
    labels: Mapping[str, str]

    @property
    def label_items(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))


class MetricsReporter(ABC):
    """A metrics backend. :meth:`emit` receives all the points of one task run at once.

    Implementations may raise or block: :func:`emit_all` bounds them and turns failures into one warning.
    """

    name: str = "reporter"

    @abstractmethod
    def emit(self, points: Sequence[MetricPoint]) -> str:
        """Send ``points``; return where they went (for the run summary and logs), e.g. a URL."""


class InMemoryReporter(MetricsReporter):
    """Keeps what it receives (tests, and a place to read the last run's points)."""

    name = "memory"

    def __init__(self) -> None:
        self.points: list[MetricPoint] = []

    def emit(self, points: Sequence[MetricPoint]) -> str:
        self.points.extend(points)
        return f"memory ({len(points)} point(s))"


class MetricsRecorder:
    """Collects a task run's points, each tagged with the base labels.

    :param dag_id: base label.
    :param task_id: base label.
    :param pipeline: base label.
    :param clock: a monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        dag_id: str | None,
        task_id: str | None,
        pipeline: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = {
            "dag_id": dag_id or "adhoc",
            "task_id": task_id or "adhoc",
            "pipeline": pipeline or "adhoc",
        }
        self.points: list[MetricPoint] = []
        self._clock = clock
        self._started: dict[str, float] = {}

    def add(self, name: str, value: float, **labels: Any) -> None:
        """Record ``value`` for the catalogue metric ``name``.

        :raises KeyError: for a name outside the catalogue or a label it does not declare (a programming error).
        """
        spec = CATALOG[name]
        unknown = set(labels) - set(spec.labels)
        if unknown:
            raise KeyError(f"metric {name} has no label(s) {sorted(unknown)}; declared: {spec.labels}")
        full = {**self.base, **{k: "" if v is None else str(v) for k, v in labels.items()}}
        for label in spec.labels:
            full.setdefault(label, "")
        self.points.append(MetricPoint(name, spec.kind, float(value), full))

    def start_stage(self, stage: str) -> None:
        """Start timing ``stage`` (read, validate, stage, merge, dead_letter, commit)."""
        self._started[stage] = self._clock()

    def end_stage(self, stage: str, outcome: str = "ok") -> float:
        """Stop timing ``stage``, record its duration and return it (seconds)."""
        began = self._started.pop(stage)
        elapsed = max(0.0, self._clock() - began)
        self.add("etl_stage_duration_seconds", elapsed, stage=stage, outcome=outcome)
        return elapsed

    def open_stages(self) -> list[str]:
        """Stages started and not ended (a failure interrupted them)."""
        return list(self._started)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the recorded values of ``name`` whose labels include ``labels`` (summaries, tests)."""
        return sum(
            p.value
            for p in self.points
            if p.name == name and all(p.labels.get(k) == v for k, v in labels.items())
        )


# --------------------------------------------------------------------------- results -> points
def stage_of_error_class(error_class: str) -> str:
    """The dead-letter stage of an error class in the load operator's ``errors`` (parse, quality or load)."""
    return {"CorruptRecord": "parse", "QualityRuleFailed": "quality"}.get(error_class, "load")


def record_load_result(rec: MetricsRecorder, result: Mapping[str, Any], breaker: str | None = None) -> None:
    """Points from the load operator's result (XCom) dict."""
    rec.add("etl_rows_read", result.get("records_read") or 0)
    rec.add("etl_rows_loaded", result.get("records_loaded") or 0)
    errors = result.get("errors") or {}
    for error_class, info in sorted(errors.items()):
        rec.add(
            "etl_rows_dead_lettered",
            int(info.get("count") or 0),
            stage=stage_of_error_class(error_class),
            error_class=error_class,
        )
    listed = sum(int(i.get("count") or 0) for i in errors.values())
    rest = int(result.get("records_dead_lettered") or 0) - listed
    if not errors:  # the series exists on every run, at 0
        rec.add("etl_rows_dead_lettered", max(rest, 0), stage="load", error_class="none")
    elif rest > 0:  # rows an earlier try dead-lettered (recorded in the load log)
        rec.add("etl_rows_dead_lettered", rest, stage="load", error_class="recorded")
    quality = result.get("quality") or {}
    if quality:
        rec.add("etl_rows_quarantined", int((errors.get("QualityRuleFailed") or {}).get("count") or 0))
        for rule, failing in sorted((quality.get("failed_rules") or {}).items()):
            rec.add("etl_rule_failing_rows", failing or 0, rule=rule, status="fail")
    rec.add("etl_attempts", result.get("attempts") or 0)
    state = result.get("circuit_state")
    if breaker and state in CIRCUIT_STATE_VALUES:
        rec.add("etl_circuit_state", CIRCUIT_STATE_VALUES[state], breaker=breaker)


def record_quality_result(rec: MetricsRecorder, result: Mapping[str, Any]) -> None:
    """Points from the quality operator's result dict (or its report document when the check failed)."""
    rec.add("etl_rows_read", result.get("records_read") or 0)
    rec.add("etl_rows_quarantined", result.get("records_quarantined") or 0)
    report = result.get("report") or result
    for entry in report.get("rules") or ():
        status = str(entry.get("status") or "pass")
        rec.add("etl_rule_status", RULE_STATUS_VALUES.get(status, 2), rule=entry.get("name"))
        rec.add(
            "etl_rule_failing_rows", entry.get("failing_rows") or 0, rule=entry.get("name"), status=status
        )
        if status != "pass" and str(entry.get("action_taken") or "").startswith("quarantined"):
            rec.add(
                "etl_rows_dead_lettered",
                entry.get("failing_rows") or 0,
                stage="parse" if entry.get("type") == "parse" else "quality",
                error_class="CorruptRecord" if entry.get("type") == "parse" else "QualityRuleFailed",
            )


def record_streaming_result(rec: MetricsRecorder, result: Mapping[str, Any], late_to_dlq: bool) -> None:
    """Points from the dict :class:`~airflow_etl_provider.hooks.streaming.StreamRunner` returns."""
    rec.add("etl_rows_read", result.get("input_rows") or 0)
    rec.add("etl_rows_loaded", result.get("output_rows") or 0)
    rec.add("etl_stream_batches", result.get("batches") or 0)
    rec.add("etl_late_rows", result.get("late_rows") or 0)
    if late_to_dlq:
        rec.add(
            "etl_rows_dead_lettered", result.get("late_rows") or 0, stage="late_data", error_class="LateRow"
        )
    for duration in result.get("batch_durations_s") or ():
        rec.add("etl_stream_batch_duration_seconds", duration)
    lag = result.get("watermark_lag_s")
    if lag is not None:
        rec.add("etl_watermark_lag_seconds", lag)


# --------------------------------------------------------------------------- configuration
BACKEND_TYPES = ("airflow_stats", "pushgateway", "cloudwatch")
_BACKEND_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "airflow_stats": {"prefix": str},
    "pushgateway": {"url": str, "job": str, "timeout_s": (int, float)},
    "cloudwatch": {"conn_id": str, "namespace": str, "region_name": str, "timeout_s": (int, float)},
}


@dataclass(frozen=True)
class BackendSpec:
    """A configured metrics backend: its type and options (validated, not yet connected).

    :param type: one of :data:`BACKEND_TYPES`.
    :param options: the type's options (``url``, ``job``, ``timeout_s`` for ``pushgateway``; ``conn_id``,
        ``namespace``, ``region_name``, ``timeout_s`` for ``cloudwatch``; ``prefix`` for ``airflow_stats``).
    """

    type: str
    options: Mapping[str, Any] = field(default_factory=dict)


def parse_backends(value: Any, field_name: str = "metrics") -> tuple[BackendSpec, ...]:
    """Validate a backend list: ``None``/``""``/``"none"``/``[]`` (none), a comma-separated string or a JSON
    list (Airflow config form), or a list of type names and ``{"type": ..., <options>}`` mappings.

    :raises ConfigError: naming the field, the bad value and the allowed types or options.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(field_name, f"is not a valid JSON list ({err.msg})", value=text) from err
        else:
            value = [p.strip() for p in text.split(",") if p.strip() and p.strip().lower() != "none"]
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(
            field_name,
            "must be a list of backends such as ['airflow_stats', {'type': 'pushgateway', "
            "'url': 'http://127.0.0.1:9091'}]",
            value=value,
        )
    specs: list[BackendSpec] = []
    for i, item in enumerate(value):
        path = f"{field_name}[{i}]"
        options: dict[str, Any] = {}
        if isinstance(item, str):
            kind = item.strip()
        elif isinstance(item, Mapping):
            options = {k: v for k, v in item.items() if k != "type"}
            kind = item.get("type")  # type: ignore[assignment]
        else:
            raise ConfigError(path, "must be a backend name or a mapping with 'type'", value=item)
        if kind not in BACKEND_TYPES:
            raise ConfigError(
                f"{path}.type" if isinstance(item, Mapping) else path,
                "is not a known metrics backend",
                value=kind,
                allowed=BACKEND_TYPES,
            )
        allowed = _BACKEND_OPTIONS[kind]
        for key, val in options.items():
            if key not in allowed:
                raise ConfigError(
                    f"{path}.{key}", f"is not an option of the {kind} backend", allowed=sorted(allowed)
                )
            if isinstance(val, bool) or not isinstance(val, allowed[key]):
                raise ConfigError(f"{path}.{key}", "has the wrong type", value=val)
            if key == "timeout_s" and not 0 < float(val) <= 60:  # type: ignore[arg-type]
                raise ConfigError(f"{path}.timeout_s", "must be > 0 and <= 60 seconds", value=val)
        if (
            kind == "pushgateway"
            and "url" in options
            and not str(options["url"]).startswith(("http://", "https://"))
        ):
            raise ConfigError(
                f"{path}.url", "must be an http(s) URL such as http://127.0.0.1:9091", value=options["url"]
            )
        specs.append(BackendSpec(kind, options))
    return tuple(specs)


# --------------------------------------------------------------------------- bounded dispatch
@dataclass(frozen=True)
class Delivery:
    """What one reporter did with a task's points.

    :param reporter: the reporter's name.
    :param ok: whether it confirmed them in time.
    :param detail: where they went (``ok``), or the error / ``timed out after ...``.
    """

    reporter: str
    ok: bool
    detail: str


def emit_all(
    reporters: Sequence[MetricsReporter],
    points: Sequence[MetricPoint],
    *,
    timeout_s: float = 5.0,
    warn: Callable[[str], None] | None = None,
) -> list[Delivery]:
    """Hand ``points`` to every reporter in parallel daemon threads; wait at most ``timeout_s`` in total.

    A reporter that raises or is still running at the deadline is reported by one ``warn`` call each (its
    thread is left to finish or die with the process: it is a daemon) and marked not ok. Never raises for a
    reporter's failure.
    """
    results: dict[int, Delivery] = {}
    threads: list[threading.Thread] = []

    def run(i: int, reporter: MetricsReporter) -> None:
        try:
            results[i] = Delivery(reporter.name, True, reporter.emit(points))
        except Exception as err:  # reported to the caller through the Delivery and one warning below
            results[i] = Delivery(reporter.name, False, f"{type(err).__name__}: {err}"[:500])

    for i, reporter in enumerate(reporters):
        thread = threading.Thread(
            target=run, args=(i, reporter), name=f"etl-metrics-{reporter.name}", daemon=True
        )
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    out: list[Delivery] = []
    for i, reporter in enumerate(reporters):
        delivery = results.get(i) or Delivery(reporter.name, False, f"timed out after {timeout_s:g} s")
        if not delivery.ok and warn is not None:
            warn(
                f"metrics backend {reporter.name} did not take this run's {len(points)} metric point(s): "
                f"{delivery.detail}; the task carries on"
            )
        out.append(delivery)
    return out
