"""Notifiers that send a task run's summary: a generic JSON webhook, and any of Airflow's own notifiers (Slack,
SMTP ...) fed with the rendered summary.

Use them as ``on_failure_callback`` / ``on_success_callback`` / ``on_retry_callback`` of an operator, or as a
DAG-level callback with ``task_ids``::

    from airflow_etl_provider.notifications.etl import SummaryNotifier, WebhookNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    ResilientSparkLoadOperator(
        ...,
        on_failure_callback=[WebhookNotifier(conn_id="etl_alerts", when="circuit_opened")],
        on_success_callback=[WebhookNotifier(conn_id="etl_alerts", when="dead_letters_above", threshold=100),
                             SummaryNotifier(SmtpNotifier, fields={"subject": "subject", "html_content": "html"},
                                             when="dead_letters_above", threshold=100, to="data-team@example.com")],
    )

The summary comes from the task object (``task.etl_run_summary``, set in the same process at the end of the
run) or else from XCom (key ``etl_run_summary``, through the Task SDK): no metadata-database access. A
notifier whose condition does not hold sends nothing. Airflow runs task callbacks after the task's state is
decided and logs a callback's exception without changing that state; a notifier that cannot deliver raises
after its retries (so the failure is in the task log), and never changes the task's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from airflow_etl_provider.core.errors import ConfigError, ErrorKind
from airflow_etl_provider.core.retry import Retrier, RetryPolicy
from airflow_etl_provider.core.run_summary import (
    alert_reason,
    payload,
    render_html,
    render_markdown,
    render_text,
    subject,
    validate_condition,
)

SUMMARY_XCOM_KEY = "etl_run_summary"  # same as hooks.observability.SUMMARY_XCOM_KEY (no hook import at parse)
RENDERINGS = {"text": render_text, "markdown": render_markdown, "html": render_html, "subject": subject}


class EtlNotifier(BaseNotifier):
    """Base: find the run summary (or summaries), check the condition, :meth:`send` what qualifies.

    :param when: ``always``, ``circuit_opened``, ``quality_failed``, ``dead_letters_above``, ``late_rows_above``.
    :param threshold: for the ``*_above`` conditions: alert when the count is strictly above it.
    :param task_ids: the tasks whose summaries to read from XCom (DAG-level callbacks); default: the task that
        ran the callback.
    """

    def __init__(
        self,
        *,
        when: str = "always",
        threshold: int | None = None,
        task_ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        validate_condition(when, threshold)
        self.when, self.threshold = when, threshold
        self.task_ids = list(task_ids) if task_ids is not None else None
        self.sent: list[dict[str, Any]] = []

    def summaries(self, context: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The run summaries this callback is about."""
        task = context.get("task")
        own = getattr(task, "etl_run_summary", None)
        if self.task_ids is None and isinstance(own, Mapping):
            return [own]
        ti = context.get("ti")
        if ti is None:
            self.log.warning("No task instance in the callback's context: no run summary to send")
            return []
        ids = self.task_ids if self.task_ids is not None else [ti.task_id]
        found = []
        for task_id in ids:
            value = ti.xcom_pull(task_ids=task_id, key=SUMMARY_XCOM_KEY)
            if isinstance(value, Mapping):
                found.append(value)
            else:
                self.log.warning("No run summary in XCom for task %s (key %s)", task_id, SUMMARY_XCOM_KEY)
        return found

    def notify(self, context: Any) -> None:
        self.callback_context = context
        for summary in self.summaries(context):
            reason = alert_reason(summary, self.when, self.threshold)
            if reason is None:
                self.log.info(
                    "%s: condition %s does not hold for %s.%s; nothing sent",
                    type(self).__name__,
                    self.when,
                    summary.get("dag_id"),
                    summary.get("task_id"),
                )
                continue
            self.send(summary, reason)
            self.sent.append({"reason": reason, "task_id": summary.get("task_id")})

    def send(self, summary: Mapping[str, Any], reason: str) -> None:  # pragma: no cover - abstract
        """Deliver one summary."""
        raise NotImplementedError


def _classify_http(exc: BaseException) -> ErrorKind:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        return ErrorKind.TRANSIENT if status >= 500 or status in (408, 429) else ErrorKind.SYSTEM
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return ErrorKind.TRANSIENT
    return ErrorKind.SYSTEM


class WebhookNotifier(EtlNotifier):
    """POST the summary as JSON (``{"title", "reason", "text", "summary"}``) to a webhook.

    The address and secrets come from an Airflow connection (type ``http``): ``host`` (a full URL, or a host
    with ``schema`` https/http and ``port``), ``password`` sent as ``Authorization: Bearer <password>``, extra
    ``{"headers": {...}, "endpoint": "/path"}``. Connection errors, timeouts, HTTP 408/429/5xx are retried with
    the project's retry policy (:class:`~airflow_etl_provider.core.retry.RetryPolicy`); other 4xx are not.

    :param conn_id: the connection.
    :param endpoint: a path appended to the connection's URL (overrides the extra's ``endpoint``).
    :param retry: a retry policy or its config (default: 3 attempts, 0.5 s .. 5 s, full jitter).
    :param timeout_s: connect and read timeout of each attempt.
    """

    template_fields = ("endpoint",)

    def __init__(
        self,
        *,
        conn_id: str,
        endpoint: str | None = None,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not conn_id:
            raise ConfigError(
                "conn_id", "is required: an http connection holding the webhook's URL and secret"
            )
        self.conn_id, self.endpoint, self.timeout_s = conn_id, endpoint, timeout_s
        self.retry_policy = RetryPolicy.from_config(
            retry if retry is not None else {"max_attempts": 3, "initial_delay_s": 0.5, "max_delay_s": 5}
        )

    def _target(self) -> tuple[str, dict[str, str]]:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.conn_id)
        extra = conn.extra_dejson
        host = conn.host or ""
        if host.startswith(("http://", "https://")):
            base = host.rstrip("/")
        else:
            base = f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
        endpoint = self.endpoint or extra.get("endpoint") or ""
        url = base + ("/" + endpoint.lstrip("/") if endpoint else "")
        headers = {
            "Content-Type": "application/json",
            **{str(k): str(v) for k, v in (extra.get("headers") or {}).items()},
        }
        if conn.password:
            headers["Authorization"] = f"Bearer {conn.password}"
        return url, headers

    def send(self, summary: Mapping[str, Any], reason: str) -> None:
        import requests

        url, headers = self._target()
        body = json.dumps(payload(summary, reason), default=str)

        def post() -> None:
            response = requests.post(url, data=body, headers=headers, timeout=self.timeout_s)
            response.raise_for_status()

        Retrier(self.retry_policy, classifier=_classify_http, op=f"webhook {self.conn_id}").call(post)
        self.log.info("Webhook %s: sent %s", self.conn_id, subject(summary, reason))


class SummaryNotifier(EtlNotifier):
    """Send the rendered summary through one of Airflow's own notifiers (Slack, SMTP, ...): no re-implementation.

    :param notifier: the notifier class, e.g. ``SmtpNotifier`` (apache-airflow-providers-smtp) or
        ``SlackNotifier`` (apache-airflow-providers-slack).
    :param fields: which of its arguments receive the summary, and rendered how: ``text``, ``markdown``
        (Slack), ``html`` (e-mail) or ``subject``; e.g. ``{"subject": "subject", "html_content": "html"}`` for
        ``SmtpNotifier``, ``{"text": "markdown"}`` for ``SlackNotifier``.
    :param notifier_kwargs: its other arguments (``to``, ``smtp_conn_id``, ``channel``, ...), given as keywords.
    """

    def __init__(
        self,
        notifier: type[BaseNotifier],
        *,
        fields: Mapping[str, str],
        when: str = "always",
        threshold: int | None = None,
        task_ids: Sequence[str] | None = None,
        **notifier_kwargs: Any,
    ) -> None:
        super().__init__(when=when, threshold=threshold, task_ids=task_ids)
        if not (isinstance(notifier, type) and issubclass(notifier, BaseNotifier)):
            raise ConfigError(
                "notifier", "must be an Airflow notifier class (a BaseNotifier subclass)", value=notifier
            )
        for arg, rendering in fields.items():
            if rendering not in RENDERINGS:
                raise ConfigError(
                    f"fields.{arg}", "is not a known rendering", value=rendering, allowed=sorted(RENDERINGS)
                )
        if not fields:
            raise ConfigError(
                "fields", "must name at least one argument of the notifier to receive the summary"
            )
        self.notifier, self.fields, self.notifier_kwargs = notifier, dict(fields), notifier_kwargs

    def send(self, summary: Mapping[str, Any], reason: str) -> None:
        rendered = {arg: RENDERINGS[kind](summary, reason) for arg, kind in self.fields.items()}
        delegate = self.notifier(**self.notifier_kwargs, **rendered)
        delegate.notify(getattr(self, "callback_context", None) or self.context)
        self.log.info("%s: sent %s", self.notifier.__name__, subject(summary, reason))
