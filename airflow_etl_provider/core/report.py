"""A self-contained HTML page for a data-quality report (pure: no Airflow, no Spark).

The page needs nothing but itself: inline CSS, an inline SVG chart of failing rows per rule, no scripts,
no fonts or images to fetch, so it opens the same from a local disk, an S3 bucket or an e-mail
attachment. Every value from the data is HTML-escaped (a failing row may hold ``<script>``).

Input is the JSON-able report the :class:`~airflow_etl_provider.operators.quality.DataQualityOperator`
pushes to XCom (:meth:`QualityReport.to_dict` plus ``accounting``, ``profile`` and ``run`` keys), so a
report can also be re-rendered later from XCom alone.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["failure_table", "render_html"]

_COLORS = {"pass": "#2e7d32", "warn": "#ed8c00", "fail": "#c62828"}
_CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8}
h3{font-size:14px;margin:16px 0 6px}.meta{color:#5b6475;margin-bottom:14px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-weight:600;font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #dde1e8;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:20px}code{background:#f3f5f9;padding:0 3px;border-radius:3px}
"""


def _e(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    if isinstance(value, Mapping | list | tuple):
        import json

        return html.escape(json.dumps(value, default=str, ensure_ascii=False))
    return html.escape(str(value))


def _badge(status: str) -> str:
    color = _COLORS.get(status, "#5b6475")
    return f'<span class="badge" style="background:{color}">{_e(status.upper())}</span>'


def _ratio(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) and math.isfinite(value) else ""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            raw = isinstance(cell, _Raw)
            text = cell.html if raw else _e(cell)
            cells.append(f'<td class="n">{text}</td>' if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw:
    """Already-safe HTML for a table cell."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def _chart(rules: Sequence[Mapping[str, Any]]) -> str:
    """Horizontal bars: failing rows per counted rule (dataset rules show their status as a dot)."""
    if not rules:
        return "<p>No rules.</p>"
    width, label_w, bar_w, row_h = 760, 260, 400, 22
    height = row_h * len(rules) + 10
    most = max((r.get("failing_rows") or 0 for r in rules), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Failing rows per rule" '
             f'width="{width}" height="{height}" font-size="12" font-family="sans-serif">']
    for i, rule in enumerate(rules):
        y = 5 + i * row_h
        color = _COLORS.get(str(rule.get("status")), "#5b6475")
        name = str(rule.get("name"))
        label = name if len(name) <= 38 else name[:37] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(label)}</text>')
        failing = rule.get("failing_rows")
        if failing is None:
            parts.append(f'<circle cx="{label_w + 8}" cy="{y + 11}" r="6" fill="{color}"/>')
            parts.append(f'<text x="{label_w + 20}" y="{y + 15}">{_e(rule.get("status"))} (dataset rule)</text>')
            continue
        length = 0 if not failing else max(2.0, bar_w * failing / most)
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" fill="{color}"/>')
        ratio = _ratio(rule.get("failure_ratio"))
        parts.append(f'<text x="{label_w + length + 6:.1f}" y="{y + 15}">{failing:,} ({ratio})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _samples(report: Mapping[str, Any]) -> str:
    blocks = []
    for rule in report.get("rules", []):
        rows = rule.get("samples") or []
        if not rows:
            continue
        columns = list(dict.fromkeys(k for row in rows for k in row))
        blocks.append(f"<h3>{_e(rule['name'])} <small>({len(rows)} shown of {rule.get('failing_rows') or 0:,} "
                      f"failing)</small></h3>")
        blocks.append(_table(columns, [[row.get(c) for c in columns] for row in rows]))
    return "".join(blocks) or "<p>No failing rows.</p>"


def _profile(profile: Mapping[str, Any]) -> str:
    columns = profile.get("columns") or {}
    if not columns:
        return ""
    headers = ["column", "type", "null ratio", "≈ distinct", "min", "max", "mean", "stddev", "min len", "max len",
               "top values"]
    rows = []
    for name, p in columns.items():
        top = ", ".join(f"{v['value']!s} ({v['count']:,})" for v in p.get("top_values") or [])
        rows.append([name, p.get("type"), _ratio(p.get("null_ratio")), p.get("approx_distinct"), p.get("min"),
                     p.get("max"), p.get("mean"), p.get("stddev"), p.get("min_length"), p.get("max_length"), top])
    return "<h2>Column profiles</h2>" + _table(headers, rows, numeric=(2, 3, 6, 7, 8, 9))


def render_html(report: Mapping[str, Any], title: str | None = None) -> str:
    """The report as one self-contained HTML page.

    :param report: the operator's JSON report: ``status``, ``row_count``, ``summary``, ``rules`` (each
        with ``samples``), optionally ``accounting``, ``profile``, ``run`` and ``generated_at``.
    :param title: the page title (default: ``Data quality: <dag>.<task>``).
    """
    run = report.get("run") or {}
    where = ".".join(str(run[k]) for k in ("dag_id", "task_id") if run.get(k)) or "ad hoc check"
    page_title = title or f"Data quality: {where}"
    status = str(report.get("status", "pass"))
    summary = report.get("summary") or {}
    accounting = report.get("accounting") or {}
    rules = report.get("rules") or []

    cards = [("status", _badge(status)), ("rows checked", f"{report.get('row_count') or 0:,}")]
    cards += [(s, f"{summary.get(s, 0)}") for s in ("pass", "warn", "fail")]
    for key in ("records_read", "records_passed", "records_quarantined"):
        if key in accounting:
            cards.append((key.replace("records_", "rows "), f"{accounting[key]:,}"))
    card_html = "".join(f'<div class="card">{_e(k)}<b>{v}</b></div>' for k, v in cards)

    table_rows = [
        [r.get("name"), r.get("type"), ", ".join(r.get("columns") or []), _Raw(_badge(str(r.get("status")))),
         f"{r['failing_rows']:,}" if r.get("failing_rows") is not None else "", _ratio(r.get("failure_ratio")),
         r.get("threshold"), r.get("action"), r.get("action_taken") or "", r.get("message")]
        for r in rules
    ]
    summary_table = _table(["rule", "type", "columns", "status", "failing rows", "failure ratio", "threshold",
                            "action", "taken", "message"], table_rows, numeric=(4, 5))
    meta = " · ".join(_e(f"{k}: {run[k]}") for k in ("dag_id", "task_id", "run_id", "try_number") if run.get(k))
    extra = []
    if report.get("source"):
        extra.append(f"source: <code>{_e(report['source'])}</code>")
    if report.get("generated_at"):
        extra.append(f"generated {_e(report['generated_at'])}")
    if report.get("spark_queries") is not None:
        extra.append(f"{_e(report['spark_queries'])} Spark queries")
    if accounting.get("dead_letter_location"):
        extra.append(f"quarantined rows: <code>{_e(accounting['dead_letter_location'])}</code>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(page_title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{_e(page_title)} {_badge(status)}</h1>"
        f"<div class=\"meta\">{meta}<br>{' · '.join(extra)}</div>"
        f"<h2 id=\"summary\">Summary</h2><div class=\"cards\">{card_html}</div>"
        f"{summary_table}"
        f"<h2>Failing rows per rule</h2>{_chart(rules)}"
        f"<h2>Samples of failing rows</h2>{_samples(report)}"
        f"{_profile(report.get('profile') or {})}"
        "</body></html>\n"
    )


def failure_table(rules: Sequence[Mapping[str, Any]], width: int = 60) -> str:
    """A plain-text table of rules (for a task log or an exception message).

    :param rules: rule entries of the JSON report.
    :param width: the message column is cut to this many characters.
    """
    headers = ("rule", "type", "status", "failing", "ratio", "threshold", "taken", "message")
    rows = [
        (str(r.get("name")), str(r.get("type")), str(r.get("status")),
         "" if r.get("failing_rows") is None else f"{r['failing_rows']:,}", _ratio(r.get("failure_ratio")),
         str(r.get("threshold") or ""), str(r.get("action_taken") or ""), str(r.get("message") or "")[:width])
        for r in rules
    ]
    sizes = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(sizes[i]) for i, h in enumerate(headers))
    out = [line, "  ".join("-" * n for n in sizes)]
    out += ["  ".join(cell.ljust(sizes[i]) for i, cell in enumerate(row)) for row in rows]
    return "\n".join(x.rstrip() for x in out)
