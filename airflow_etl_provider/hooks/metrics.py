"""Metrics backends: Airflow's own Stats, the Prometheus Pushgateway and CloudWatch, and how a task finds its
backends (operator argument, else Airflow config ``[etl_provider] metrics_backends``).

Each backend implements :class:`~airflow_etl_provider.core.metrics.MetricsReporter`; the task hands its points
to all of them through :func:`~airflow_etl_provider.core.metrics.emit_all`, which bounds the time and turns a
backend's failure into one warning.

**Pushgateway stale-group policy.** The Pushgateway never forgets a series by itself. Every task run pushes
with ``PUT`` to the group ``job=<job>, dag_id=<dag>, task_id=<task>``: the push *replaces* the group, so a group
always holds exactly the last run of that task (and ``push_time_seconds``, set by the Pushgateway, says when),
never a mix of runs, and series that a run no longer produces (a rule removed, an error class gone) disappear
with the next run. Groups of tasks that no longer run stay until deleted:
:func:`delete_stale_groups` (or ``airflow-etl metrics delete-stale --older-than 7d``) deletes every group of
the job whose last push is older than a given age.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.request import urlopen

from airflow_etl_provider.core.cloudwatch_batches import batches, metric_data
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.metrics import (
    COUNTER,
    GAUGE,
    BackendSpec,
    MetricPoint,
    MetricsReporter,
    parse_backends,
)

DEFAULT_JOB = "airflow_etl"
GROUPING_LABELS = ("dag_id", "task_id")
CONFIG_SECTION = "etl_provider"


class AirflowStatsReporter(MetricsReporter):
    """Airflow's own Stats (``airflow.sdk.observability.stats``): whatever the deployment configured in
    ``[metrics]`` (StatsD, Datadog, OpenTelemetry metrics; nothing when none is on).

    Names: ``<prefix>.<metric without 'etl_'>`` (e.g. ``etl.rows_read``) with the labels as tags; counters are
    ``incr`` by the run's amount, gauges ``gauge``, timings ``timing``.

    :param prefix: the first part of every name.
    """

    name = "airflow_stats"

    def __init__(self, prefix: str = "etl") -> None:
        self.prefix = prefix

    def emit(self, points: Sequence[MetricPoint]) -> str:
        from airflow.sdk.observability import stats

        for point in points:
            stat = f"{self.prefix}.{point.name.removeprefix('etl_')}"
            tags = {k: v for k, v in point.labels.items() if v != ""}
            if point.kind == COUNTER:
                stats.incr(stat, count=int(point.value), tags=tags)
            elif point.kind == GAUGE:
                stats.gauge(stat, point.value, tags=tags)
            else:
                stats.timing(stat, timedelta(seconds=point.value), tags=tags)
        from airflow.sdk.configuration import conf

        on = [
            k
            for k in ("statsd_on", "statsd_datadog_enabled", "otel_on")
            if conf.getboolean("metrics", k, fallback=False)
        ]
        configured = ", ".join(f"[metrics] {k}" for k in on) or "no [metrics] backend on: Stats is a no-op"
        return f"airflow Stats ({configured}; {len(points)} point(s))"


class PushgatewayReporter(MetricsReporter):
    """Push a task run's metrics to a Prometheus Pushgateway (``prometheus-client``), replacing its group.

    Counters and gauges become gauges holding the run's value (the Pushgateway keeps the last push, the
    batch-job pattern); timings become summaries (``_sum``, ``_count``). ``dag_id`` and ``task_id`` are the
    grouping key (the Pushgateway adds them to every series), ``pipeline`` and the other labels stay labels.

    :param url: the Pushgateway, e.g. ``http://127.0.0.1:9091``.
    :param job: the ``job`` label.
    :param timeout_s: socket timeout of the push (connect and each read).
    """

    name = "pushgateway"

    def __init__(self, url: str, job: str = DEFAULT_JOB, timeout_s: float = 3.0) -> None:
        self.url, self.job, self.timeout_s = url.rstrip("/"), job, timeout_s

    def registry(self, points: Sequence[MetricPoint]) -> tuple[Any, dict[str, str]]:
        """The ``CollectorRegistry`` to push and the grouping key."""
        from prometheus_client import CollectorRegistry, Gauge, Summary

        from airflow_etl_provider.core.metrics import CATALOG

        registry = CollectorRegistry()
        grouping = {k: points[0].labels[k] for k in GROUPING_LABELS} if points else {}
        metrics: dict[str, Any] = {}
        for point in points:
            labels = {k: v for k, v in point.label_items if k not in GROUPING_LABELS}
            if point.name not in metrics:
                cls = Summary if point.kind not in (COUNTER, GAUGE) else Gauge
                metrics[point.name] = cls(
                    point.name, CATALOG[point.name].description, sorted(labels), registry=registry
                )
            metric = metrics[point.name].labels(**labels)
            if point.kind == COUNTER:
                metric.inc(point.value)
            elif point.kind == GAUGE:
                metric.set(point.value)
            else:
                metric.observe(point.value)
        return registry, grouping

    def emit(self, points: Sequence[MetricPoint]) -> str:
        from prometheus_client import push_to_gateway

        registry, grouping = self.registry(points)
        push_to_gateway(
            self.url, job=self.job, registry=registry, grouping_key=grouping, timeout=self.timeout_s
        )
        key = "/".join(f"{k}/{v}" for k, v in grouping.items())
        return f"{self.url}/metrics/job/{self.job}/{key}"


def pushgateway_groups(url: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The Pushgateway's groups (``GET /api/v1/metrics``): each with its ``labels`` and ``push_time_seconds``."""
    with urlopen(f"{url.rstrip('/')}/api/v1/metrics", timeout=timeout_s) as resp:  # noqa: S310 (http(s) URL)
        body = json.load(resp)
    groups = []
    for group in body.get("data") or ():
        pushed = group.get("push_time_seconds", {}).get("metrics") or [{}]
        groups.append(
            {"labels": group.get("labels") or {}, "push_time_seconds": float(pushed[0].get("value") or 0)}
        )
    return groups


def delete_stale_groups(
    url: str,
    older_than_s: float,
    job: str = DEFAULT_JOB,
    now: float | None = None,
    timeout_s: float = 5.0,
    dry_run: bool = False,
) -> list[dict[str, str]]:
    """Delete the groups of ``job`` whose last push is older than ``older_than_s``; return their labels
    (``dry_run``: only return them)."""
    from prometheus_client import delete_from_gateway

    now = time.time() if now is None else now
    deleted = []
    for group in pushgateway_groups(url, timeout_s):
        labels = dict(group["labels"])
        if labels.get("job") != job or now - group["push_time_seconds"] <= older_than_s:
            continue
        labels.pop("job")
        if not dry_run:
            delete_from_gateway(url, job=job, grouping_key=labels, timeout=timeout_s)
        deleted.append(labels)
    return deleted


class CloudWatchReporter(MetricsReporter):
    """``PutMetricData`` through the amazon provider's ``aws`` connection, batched within the API's limits
    (:mod:`airflow_etl_provider.core.cloudwatch_batches`).

    :param conn_id: the ``aws`` connection (credentials, region, ``endpoint_url``).
    :param namespace: the CloudWatch namespace.
    :param region_name: overrides the connection's region.
    :param timeout_s: botocore connect and read timeouts; botocore's own retries are off (one attempt).
    """

    name = "cloudwatch"

    def __init__(
        self,
        conn_id: str = "aws_default",
        namespace: str = "AirflowETL",
        region_name: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.conn_id, self.namespace, self.region_name, self.timeout_s = (
            conn_id,
            namespace,
            region_name,
            timeout_s,
        )

    def client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from botocore.config import Config

        config = Config(
            connect_timeout=self.timeout_s, read_timeout=self.timeout_s, retries={"total_max_attempts": 1}
        )
        return AwsBaseHook(
            aws_conn_id=self.conn_id, client_type="cloudwatch", region_name=self.region_name, config=config
        ).get_conn()

    def emit(self, points: Sequence[MetricPoint]) -> str:
        client = self.client()
        requests = batches(metric_data(points))
        for data in requests:
            client.put_metric_data(Namespace=self.namespace, MetricData=data)
        return (
            f"cloudwatch namespace {self.namespace} ({len(requests)} request(s), connection {self.conn_id})"
        )


# --------------------------------------------------------------------------- configuration
def _airflow_conf(key: str) -> str | None:
    from airflow.sdk.configuration import conf

    value = conf.get(CONFIG_SECTION, key, fallback=None)
    return value if value not in (None, "") else None


def configured_backends(metrics: Any = None) -> tuple[BackendSpec, ...]:
    """The operator's ``metrics`` when given, else ``[etl_provider] metrics_backends`` (environment
    ``AIRFLOW__ETL_PROVIDER__METRICS_BACKENDS``: a comma-separated list or a JSON list), else Airflow Stats only.
    """
    if metrics is not None:
        return parse_backends(metrics)
    value = _airflow_conf("metrics_backends")
    if value is None:
        return parse_backends(["airflow_stats"])
    return parse_backends(value, field_name=f"[{CONFIG_SECTION}] metrics_backends")


def build_reporter(spec: BackendSpec) -> MetricsReporter:
    """A reporter for ``spec``; the Pushgateway URL defaults to ``[etl_provider] pushgateway_url``, then
    ``$AIRFLOW_ETL_PUSHGATEWAY_URL``.

    :raises ConfigError: a Pushgateway with no URL anywhere.
    """
    opts: Mapping[str, Any] = spec.options
    if spec.type == "airflow_stats":
        return AirflowStatsReporter(**opts)
    if spec.type == "pushgateway":
        url = opts.get("url") or configured_pushgateway_url()
        if not url:
            raise ConfigError(
                "metrics.pushgateway.url",
                "is not set: give {'type': 'pushgateway', 'url': ...}, "
                "[etl_provider] pushgateway_url or $AIRFLOW_ETL_PUSHGATEWAY_URL",
            )
        return PushgatewayReporter(
            url, job=opts.get("job", DEFAULT_JOB), timeout_s=float(opts.get("timeout_s", 3.0))
        )
    return CloudWatchReporter(**opts)


class DeferredReporter(MetricsReporter):
    """Builds its backend (:func:`build_reporter`: connection look-ups included) inside :meth:`emit`, so that a
    misconfigured or unreachable backend costs the bounded, warned emission and nothing else.

    :param spec: the backend.
    """

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.name = spec.type

    def emit(self, points: Sequence[MetricPoint]) -> str:
        return build_reporter(self.spec).emit(points)


def configured_pushgateway_url() -> str | None:
    """The deployment's Pushgateway: ``[etl_provider] pushgateway_url`` or ``$AIRFLOW_ETL_PUSHGATEWAY_URL``."""
    return _airflow_conf("pushgateway_url") or os.environ.get("AIRFLOW_ETL_PUSHGATEWAY_URL") or None


def prune_pushgateway_groups(policy: Any, now: Any, dry_run: bool) -> int:
    """``airflow-etl maintenance prune``'s pruner for the Pushgateway (it never forgets a group): delete this
    package's groups not pushed for ``policy.metrics_group_days``. No Pushgateway configured: nothing to do.

    :param policy: the :class:`~airflow_etl_provider.core.retention.RetentionPolicy`.
    :param now: the current time (an aware ``datetime``).
    :param dry_run: count, delete nothing.
    """
    url = configured_pushgateway_url()
    if not url:
        return 0
    stale = delete_stale_groups(url, policy.metrics_group_days * 86400.0, now=now.timestamp(), dry_run=dry_run)
    return len(stale)
