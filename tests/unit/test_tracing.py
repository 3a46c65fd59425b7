"""Spans of a task run (in-memory exporter): nesting under the current (Airflow's) task span, attributes,
no credentials; and the export through the standard OTEL_* variables to a real OTLP/HTTP receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_etl_provider.hooks.observability import observe
from airflow_etl_provider.hooks.tracing import safe_attributes


@pytest.fixture(scope="module")
def exporter() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider = trace.get_tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(memory))  # type: ignore[attr-defined]
    return memory


class Task:
    dag_id, task_id, pipeline_id = "orders_dag", "load_orders", "orders"


def _by_name(spans: Any) -> dict[str, Any]:
    return {s.name: s for s in spans}


def test_stage_spans_nest_under_the_task_span_under_airflows_span(exporter) -> None:
    from opentelemetry import trace

    exporter.clear()
    task = Task()
    with trace.get_tracer("airflow").start_as_current_span("worker.load_orders") as airflow_span:
        with observe(task, {}, "load", reporters=[]) as obs:
            obs.start_stage("read")
            obs.end_stage("read", corrupt_rows=1)
            obs.start_stage("load")
            obs.record_phases({"plan": 0.01, "stage": 0.5, "merge": 0.25})
            obs.end_stage("load", rows_read=10, rows_loaded=9, rows_rejected=1)
            obs.done({"records_read": 10, "records_loaded": 9, "records_dead_lettered": 1, "errors": {}})
    spans = _by_name(exporter.get_finished_spans())
    task_span = spans["etl.task"]
    assert task_span.parent.span_id == airflow_span.get_span_context().span_id
    assert spans["etl.read"].parent.span_id == task_span.context.span_id
    assert spans["etl.load"].parent.span_id == task_span.context.span_id
    for phase in ("plan", "stage", "merge"):
        assert spans[f"etl.{phase}"].parent.span_id == spans["etl.load"].context.span_id
    assert spans["etl.merge"].end_time - spans["etl.merge"].start_time == int(0.25 * 1e9)
    assert spans["etl.stage"].end_time == spans["etl.merge"].start_time  # laid end to end
    assert dict(spans["etl.load"].attributes) | {"etl.duration_s": 0} == {
        "etl.stage": "load",
        "etl.outcome": "ok",
        "etl.duration_s": 0,
        "etl.rows_read": 10,
        "etl.rows_loaded": 9,
        "etl.rows_rejected": 1,
    }
    assert task_span.attributes["etl.outcome"] == "success"
    assert task_span.attributes["etl.rows_read"] == 10
    assert task_span.attributes["etl.rows_dead_lettered"] == 1
    assert task.etl_run_summary["rows_loaded"] == 9  # type: ignore[attr-defined]


def test_a_failed_stage_and_task_carry_the_outcome_and_the_exception(exporter) -> None:
    exporter.clear()
    with pytest.raises(RuntimeError, match="database went away"):
        with observe(Task(), {}, "load", reporters=[]) as obs:
            obs.start_stage("merge")
            raise RuntimeError("database went away")
    spans = _by_name(exporter.get_finished_spans())
    assert spans["etl.merge"].attributes["etl.outcome"] == "failed"
    task_span = spans["etl.task"]
    assert task_span.attributes["etl.outcome"] == "failed"
    assert task_span.attributes["etl.error_class"] == "RuntimeError"
    assert task_span.status.status_code.name == "ERROR"
    assert [e.name for e in task_span.events] == ["exception"]


def test_streaming_batches_are_spans_under_the_stream_stage(exporter) -> None:
    exporter.clear()
    with observe(Task(), {}, "streaming", reporters=[]) as obs:
        obs.start_stage("stream")
        obs.record_batches([0.2, 0.3, 0.1])
        obs.end_stage("stream", batches=3)
        obs.done({"input_rows": 5, "batches": 3, "batch_durations_s": [0.2, 0.3, 0.1], "late_rows": 0})
    spans = exporter.get_finished_spans()
    stream = next(s for s in spans if s.name == "etl.stream")
    batches = sorted(
        (s for s in spans if s.name == "etl.stream_batch"), key=lambda s: s.attributes["etl.batch_index"]
    )
    assert [s.attributes["etl.duration_s"] for s in batches] == [0.2, 0.3, 0.1]
    assert all(s.parent.span_id == stream.context.span_id for s in batches)


def test_no_span_attribute_carries_a_credential() -> None:
    attrs = safe_attributes(
        {
            "etl.target": "postgres://etl:hunter2@db:5432/x",
            "etl.password": "hunter2",
            "etl.api_token": "abc",
            "etl.rows": 3,
            "etl.error": "password authentication failed",
            "etl.table": "public.orders",
            "etl.none": None,
        }
    )
    assert attrs == {"etl.rows": 3, "etl.table": "public.orders"}


class Receiver:
    """A real OTLP/HTTP receiver: keeps the protobuf bodies POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_spans_are_exported_by_the_standard_otel_variables(receiver) -> None:
    """A fresh process with only OTEL_* set (Airflow's tracing off): the spans reach the OTLP endpoint."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    code = textwrap.dedent("""
        from airflow_etl_provider.hooks.observability import observe

        class Task:
            dag_id, task_id, pipeline_id = "d", "t", "p"

        with observe(Task(), {}, "quality", reporters=[]) as obs:
            obs.start_stage("validate")
            obs.end_stage("validate", rows=3)
            obs.done({"records_read": 3, "records_quarantined": 0, "report": {"rules": []}})
    """)
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server.server_address[1]}",
        "OTEL_SERVICE_NAME": "etl-test",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    env.pop("OTEL_TRACES_EXPORTER", None)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    names, services = [], set()
    for body in receiver.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            services |= {
                a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
            }
            for scope in resource_spans.scope_spans:
                names += [s.name for s in scope.spans]
    assert sorted(names) == ["etl.task", "etl.validate"]
    assert services == {"etl-test"}
