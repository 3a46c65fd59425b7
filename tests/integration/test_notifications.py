"""Notifiers against real servers on 127.0.0.1: a webhook (http.server) and an SMTP server (aiosmtpd); a failing
notifier run through Airflow's own task-callback runner leaves the task's outcome alone.

The run summaries are made by the real :class:`TaskObservation` from a load / quality / streaming result."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.hooks.observability import TaskObservation
from airflow_etl_provider.notifications.etl import SummaryNotifier, WebhookNotifier

LOAD_RESULT = {
    "records_read": 1000,
    "records_loaded": 990,
    "records_dead_lettered": 10,
    "attempts": 1,
    "circuit_state": "closed",
    "target": "postgres:postgres_default:public.orders",
    "dead_letter_location": "kafka topic orders.dlq @ 127.0.0.1:9092",
    "errors": {
        "NotNullViolation": {"count": 7, "example": 'null value in column "email"'},
        "CheckViolation": {"count": 3, "example": 'violates check constraint "amount_positive"'},
    },
}


class Task:
    """The operator attributes the observation reads (dag_id, task_id) and writes (etl_run_summary)."""

    dag_id, task_id, pipeline_id = "orders_dag", "load_orders", None


def _summary(result: dict[str, Any], kind: str = "load") -> tuple[Task, dict[str, Any]]:
    task = Task()
    obs = TaskObservation(task, {}, kind, reporters=[])
    obs.done(result)
    return task, obs.finish(None)


class Hook:
    """A real HTTP server that records each request and answers with the next status of ``statuses``."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.requests = list(statuses), []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")  # what Slack's incoming webhooks answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook(monkeypatch) -> Iterator[Hook]:
    hook = Hook([503, 503])  # two transient failures, then 200
    monkeypatch.setenv(
        "AIRFLOW_CONN_ETL_ALERTS",
        json.dumps(
            {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{hook.port}",
                "password": "hook-s3cret",
                "extra": {"endpoint": "/alerts", "headers": {"X-Team": "data"}},
            }
        ),
    )
    yield hook
    hook.server.shutdown()


FAST = {"max_attempts": 3, "initial_delay_s": 0.01, "max_delay_s": 0.05}


def test_webhook_posts_the_summary_as_json_with_retries_and_the_connection_secret(webhook) -> None:
    task, summary = _summary(LOAD_RESULT)
    notifier = WebhookNotifier(conn_id="etl_alerts", when="dead_letters_above", threshold=5, retry=FAST)
    notifier({"task": task, "ti": None})
    assert len(webhook.requests) == 3  # 503, 503, then delivered
    last = webhook.requests[-1]
    assert last["path"] == "/alerts"
    assert last["headers"]["Authorization"] == "Bearer hook-s3cret"
    assert last["headers"]["X-Team"] == "data"
    body = last["body"]
    assert body["summary"]["rows_read"] == summary["rows_read"] == LOAD_RESULT["records_read"]
    assert body["summary"]["rows_dead_lettered"] == LOAD_RESULT["records_dead_lettered"]
    assert [e["error_class"] for e in body["summary"]["top_errors"]] == ["NotNullViolation", "CheckViolation"]
    assert body["reason"] == f"{LOAD_RESULT['records_dead_lettered']} row(s) dead-lettered (threshold 5)"
    assert "kafka topic orders.dlq" in body["text"] and "hook-s3cret" not in json.dumps(body)


def test_no_alert_when_the_condition_does_not_hold(webhook) -> None:
    task, _ = _summary(LOAD_RESULT)
    WebhookNotifier(conn_id="etl_alerts", when="dead_letters_above", threshold=10, retry=FAST)({"task": task})
    WebhookNotifier(conn_id="etl_alerts", when="quality_failed", retry=FAST)({"task": task})
    assert webhook.requests == []


def test_quality_and_late_rows_conditions(webhook) -> None:
    webhook.statuses.clear()
    rules = [
        {"name": "not_null(email)", "status": "fail", "failing_rows": 4},
        {"name": "range(amount)", "status": "pass", "failing_rows": 0},
    ]
    task, _ = _summary({"records_read": 50, "records_quarantined": 0, "report": {"rules": rules}}, "quality")
    WebhookNotifier(conn_id="etl_alerts", when="quality_failed", retry=FAST)({"task": task})
    stream_task, _ = _summary(
        {
            "input_rows": 100,
            "late_rows": 12,
            "batches": 2,
            "batch_durations_s": [1.0, 2.0],
            "watermark_lag_s": 4.0,
        },
        "streaming",
    )
    WebhookNotifier(conn_id="etl_alerts", when="late_rows_above", threshold=10, retry=FAST)(
        {"task": stream_task}
    )
    assert [r["body"]["reason"] for r in webhook.requests] == [
        "data quality: 1 rule(s) failed",
        "12 late row(s) (threshold 10)",
    ]
    assert webhook.requests[0]["body"]["summary"]["failed_rules"] == {"not_null(email)": 4}


def test_summary_from_xcom_for_a_dag_level_callback(webhook) -> None:
    webhook.statuses.clear()
    _, summary = _summary(LOAD_RESULT)

    class TI:
        task_id = "cleanup"

        def xcom_pull(self, task_ids: str, key: str) -> Any:
            return summary if (task_ids, key) == ("load_orders", "etl_run_summary") else None

    WebhookNotifier(conn_id="etl_alerts", task_ids=["load_orders"], retry=FAST)({"ti": TI()})
    assert webhook.requests[0]["body"]["summary"]["task_id"] == "load_orders"


def test_bad_notifier_config_fails_at_parse_time() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        WebhookNotifier(conn_id="x", when="dead_letters_above")
    with pytest.raises(ConfigError, match="when"):
        WebhookNotifier(conn_id="x", when="sometimes")


def test_a_failing_webhook_never_changes_the_task_outcome(monkeypatch, caplog) -> None:
    """Airflow's own task-callback runner (the Task SDK's) runs the notifier; its failure is logged only."""
    import structlog
    from airflow.sdk.execution_time.task_runner import _run_task_state_change_callbacks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_ETL_DOWN", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{closed}"})
    )
    task, _ = _summary(LOAD_RESULT)
    notifier = WebhookNotifier(conn_id="etl_down", retry=FAST)
    task.on_failure_callback = [notifier]  # type: ignore[attr-defined]
    _run_task_state_change_callbacks(task, "on_failure_callback", {"task": task}, structlog.get_logger())  # type: ignore[arg-type]
    assert notifier.sent == []  # it tried (3 attempts, connection refused) and Airflow carried on


@pytest.fixture
def smtp_server(monkeypatch) -> Iterator[list[Any]]:
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
            received.append(envelope)
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_TEST",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": port,
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": "airflow@example.com",
                    "timeout": 10,
                    "retry_limit": 1,
                },
            }
        ),
    )
    yield received
    controller.stop()


def test_the_summary_through_airflows_own_smtp_notifier(smtp_server, caplog) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    task, summary = _summary(LOAD_RESULT)
    notifier = SummaryNotifier(
        SmtpNotifier,
        fields={"subject": "subject", "html_content": "html"},
        when="dead_letters_above",
        threshold=0,
        to="data-team@example.com",
        smtp_conn_id="smtp_test",
    )
    with caplog.at_level(logging.INFO):
        notifier({"task": task})
    (envelope,) = smtp_server
    assert envelope.rcpt_tos == ["data-team@example.com"]
    message = message_from_bytes(envelope.content)
    assert message["Subject"].startswith(f"[airflow-etl] {summary['dag_id']}.{summary['task_id']} success")
    html = (
        next(p for p in message.walk() if p.get_content_type() == "text/html")
        .get_payload(decode=True)
        .decode()
    )
    assert f"read={LOAD_RESULT['records_read']} loaded={LOAD_RESULT['records_loaded']}" in html
    assert "NotNullViolation x7" in html and "kafka topic orders.dlq" in html


def test_summary_notifier_refuses_what_is_not_a_notifier() -> None:
    with pytest.raises(ConfigError, match="notifier"):
        SummaryNotifier(dict, fields={"text": "text"})  # type: ignore[arg-type]
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    with pytest.raises(ConfigError, match="fields.subject"):
        SummaryNotifier(SmtpNotifier, fields={"subject": "pdf"}, to="x@example.com")


def test_the_summary_through_airflows_own_slack_webhook_notifier(monkeypatch) -> None:
    """Slack's notifier (apache-airflow-providers-slack) against a real HTTP server standing in for Slack."""
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    hook = Hook([])
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_TEST",
        json.dumps(
            {
                "conn_type": "slackwebhook",
                "host": f"http://127.0.0.1:{hook.port}",
                "password": "T000/B000/XXXX",
            }
        ),
    )
    try:
        task, summary = _summary(LOAD_RESULT)
        SummaryNotifier(
            SlackWebhookNotifier,
            fields={"text": "markdown"},
            when="dead_letters_above",
            threshold=0,
            slack_webhook_conn_id="slack_test",
        )({"task": task})
    finally:
        hook.server.shutdown()
    (request,) = hook.requests
    assert request["path"] == "/T000/B000/XXXX"
    text = request["body"]["text"]
    assert text.startswith(f"*[airflow-etl] {summary['dag_id']}.{summary['task_id']} success")
    assert f"read={LOAD_RESULT['records_read']} loaded={LOAD_RESULT['records_loaded']}" in text
