"""The run summary the notifiers send (pure): when to alert, and the summary rendered as text, Markdown (Slack),
HTML (e-mail) and a JSON payload (webhooks).

The summary itself is built at the end of each task run by
:class:`~airflow_etl_provider.hooks.observability.TaskObservation`: ``kind``, ``outcome``, ``dag_id``,
``task_id``, ``run_id``, ``try_number``, ``error``, ``rows_read``, ``rows_loaded``, ``rows_dead_lettered``,
``rows_quarantined``, ``late_rows``, ``watermark_lag_s``, ``failed_rules`` (name -> failing rows),
``top_errors`` (class, count, example), ``dead_letter_location``, ``report_path``, ``target``,
``circuit_breaker``, ``circuit_state``, ``circuit_transitions``, ``duration_s``, ``ti_url``, ``metrics``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from airflow_etl_provider.core.errors import ConfigError

CONDITIONS = ("always", "circuit_opened", "quality_failed", "dead_letters_above", "late_rows_above")


def validate_condition(when: str, threshold: int | None) -> None:
    """Check a notifier's condition at DAG parse time.

    :raises ConfigError: unknown condition, or a threshold missing / not an integer >= 0 where one is needed.
    """
    if when not in CONDITIONS:
        raise ConfigError("when", "is not a known alert condition", value=when, allowed=CONDITIONS)
    if when.endswith("_above"):
        if (
            threshold is None
            or isinstance(threshold, bool)
            or not isinstance(threshold, int)
            or threshold < 0
        ):
            raise ConfigError("threshold", f"must be an integer >= 0 for when={when!r}", value=threshold)


def alert_reason(summary: Mapping[str, Any], when: str, threshold: int | None = None) -> str | None:
    """Why ``summary`` deserves an alert under condition ``when`` (``None``: it does not)."""
    if when == "always":
        return f"task {summary.get('outcome')}"
    if when == "circuit_opened":
        opened = [t for t in summary.get("circuit_transitions") or () if t.get("to") == "open"]
        if opened:
            return f"circuit breaker {summary.get('circuit_breaker')} opened: {opened[-1].get('reason')}"
        if summary.get("circuit_state") == "open" or "CircuitOpenError" in str(summary.get("error") or ""):
            return f"circuit breaker {summary.get('circuit_breaker') or ''} is open".replace("  ", " ")
        return None
    if when == "quality_failed":
        failed = summary.get("failed_rules") or {}
        if failed or (summary.get("kind") == "quality" and summary.get("outcome") == "failed"):
            return f"data quality: {len(failed)} rule(s) failed"
        return None
    limit = threshold or 0
    if when == "dead_letters_above":
        n = int(summary.get("rows_dead_lettered") or 0)
        return f"{n} row(s) dead-lettered (threshold {limit})" if n > limit else None
    n = int(summary.get("late_rows") or 0)
    return f"{n} late row(s) (threshold {limit})" if n > limit else None


def _lines(summary: Mapping[str, Any], reason: str) -> list[tuple[str, str]]:
    rows = [
        ("alert", reason),
        (
            "task",
            f"{summary.get('dag_id')}.{summary.get('task_id')} run {summary.get('run_id')} "
            f"try {summary.get('try_number')}: {summary.get('outcome')}",
        ),
        (
            "rows",
            f"read={summary.get('rows_read', 0)} loaded={summary.get('rows_loaded', 0)} "
            f"dead-lettered={summary.get('rows_dead_lettered', 0)} quarantined={summary.get('rows_quarantined', 0)}"
            + (f" late={summary.get('late_rows')}" if summary.get("kind") == "streaming" else ""),
        ),
    ]
    if summary.get("error"):
        rows.append(("error", str(summary["error"])[:500]))
    for name, count in (summary.get("failed_rules") or {}).items():
        rows.append(("failed rule", f"{name}: {count} failing row(s)"))
    for err in summary.get("top_errors") or ():
        rows.append(
            ("top error", f"{err.get('error_class')} x{err.get('count')}: {str(err.get('example'))[:200]}")
        )
    if summary.get("circuit_breaker"):
        rows.append(
            ("circuit breaker", f"{summary['circuit_breaker']}: {summary.get('circuit_state') or 'unknown'}")
        )
    for key, label in (
        ("dead_letter_location", "dead letters"),
        ("report_path", "report"),
        ("target", "target"),
        ("ti_url", "task instance"),
    ):
        if summary.get(key):
            rows.append((label, str(summary[key])))
    return rows


def subject(summary: Mapping[str, Any], reason: str) -> str:
    """A one-line title: ``[airflow-etl] <dag>.<task> <outcome>: <reason>``."""
    return (
        f"[airflow-etl] {summary.get('dag_id')}.{summary.get('task_id')} {summary.get('outcome')}: {reason}"
    )


def render_text(summary: Mapping[str, Any], reason: str) -> str:
    """Plain text, one ``label: value`` line each."""
    return "\n".join([subject(summary, reason)] + [f"{k}: {v}" for k, v in _lines(summary, reason)[1:]])


def render_markdown(summary: Mapping[str, Any], reason: str) -> str:
    """Slack-flavoured Markdown (``*bold*``, ``<url|text>`` links)."""
    out = [f"*{subject(summary, reason)}*"]
    for key, value in _lines(summary, reason)[1:]:
        if key == "task instance":
            value = f"<{value}|open in Airflow>"
        out.append(f"*{key}*: {value}")
    return "\n".join(out)


def render_html(summary: Mapping[str, Any], reason: str) -> str:
    """A small HTML table (e-mail)."""
    cells = []
    for key, value in _lines(summary, reason):
        shown = html.escape(value)
        if key == "task instance":
            shown = f'<a href="{html.escape(value, quote=True)}">{shown}</a>'
        cells.append(f"<tr><th align='left'>{html.escape(key)}</th><td>{shown}</td></tr>")
    return f"<h3>{html.escape(subject(summary, reason))}</h3><table>{''.join(cells)}</table>"


def payload(summary: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The webhook's JSON body: ``{"title", "reason", "text", "summary"}``."""
    return {
        "title": subject(summary, reason),
        "reason": reason,
        "text": render_text(summary, reason),
        "summary": dict(summary),
    }
