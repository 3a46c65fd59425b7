"""OpenTelemetry tracing for the operators: a span per task and per stage, exported the standard way.

Inside an Airflow task the Task SDK opens its own task span (``worker.<task_id>``) when ``[traces] otel_on`` is
set and makes it current: our spans become its children through the current context, and Airflow's tracer
provider exports them. When Airflow's tracing is off but the standard ``OTEL_*`` environment asks for an
exporter (``OTEL_TRACES_EXPORTER=otlp`` or an ``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``),
:func:`ensure_tracer_provider` installs an SDK provider with the OTLP exporter (``http/protobuf`` unless
``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL=grpc``), which reads the rest of ``OTEL_*`` itself (endpoint, headers,
service name, resource attributes). Otherwise the API's no-op tracer makes spans free.

Spans carry names, row counts and outcomes only (:func:`safe_attributes`): never a connection, URI or secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

TRACER_NAME = "airflow_etl_provider"
_SECRETISH = re.compile(r"pass(word)?|secret|token|credential|auth|api[_-]?key|://[^/\s]*@", re.IGNORECASE)


def tracer() -> Any:
    """The provider's tracer (from the global tracer provider)."""
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)


def ensure_tracer_provider() -> bool:
    """Install an OTLP-exporting SDK tracer provider from the ``OTEL_*`` environment when none is installed
    yet and the environment asks for one; return whether one was installed by this call."""
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False  # Airflow (or the user) configured tracing: use theirs
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter == "none" or (not exporter and not endpoint):
        return False
    if exporter not in ("", "otlp"):
        from airflow_etl_provider.core.errors import ConfigError

        raise ConfigError(
            "OTEL_TRACES_EXPORTER",
            "only 'otlp' (or 'none') is supported by airflow-etl-provider",
            value=exporter,
            allowed=("otlp", "none"),
        )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def flush(timeout_s: float) -> None:
    """Flush the installed SDK provider's spans, waiting at most ``timeout_s``."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush(timeout_millis=int(timeout_s * 1000))


def safe_attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes from ``values``: ``None`` dropped, numbers and booleans kept, strings kept unless the key
    or the value looks like a credential (password, secret, token, a URI with user info)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or _SECRETISH.search(key):
            continue
        if isinstance(value, bool | int | float):
            out[key] = value
        elif isinstance(value, str) and not _SECRETISH.search(value):
            out[key] = value[:500]
    return out
