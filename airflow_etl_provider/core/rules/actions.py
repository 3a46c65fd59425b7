"""What a failing rule does in a task: its action, the quarantine checks, the verdict of a run.

Shared by the ``DataQualityOperator`` and the load operator's quality gate (pure: no Airflow, no I/O
beyond reading a rules file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.rules.models import Rule
from airflow_etl_provider.core.rules.parsing import parse_rules
from airflow_etl_provider.core.rules.results import RuleResult


def resolve_action(rule: Rule, default: str) -> str:
    """The action taken when ``rule`` fails: its own ``action``, else ``warn`` for severity ``warn``, else
    ``default``; ``quarantine`` on a dataset rule (no rows to set aside) becomes ``fail``."""
    action = rule.action or ("warn" if rule.severity == "warn" else default)
    if action == "quarantine" and not rule.counted:
        return "fail"
    return action


def _explicit_threshold(rule: Rule) -> bool:
    return getattr(rule, "mostly", None) is not None or getattr(rule, "max_failures", None) is not None


def check_quarantine_config(rules: Sequence[Rule], on_failure: str, dead_letter: Any) -> None:
    """Quarantine needs a dead-letter queue; a dataset rule cannot quarantine (explicit action)."""
    for rule in rules:
        if rule.action == "quarantine" and not rule.counted:
            raise ConfigError(
                f"rules[{rule.rule_name}].action",
                f"a {rule.type!r} rule checks the whole dataset: there are no rows to quarantine; "
                "use action 'fail' or 'warn'",
            )
    quarantining = [r.rule_name for r in rules if resolve_action(r, on_failure) == "quarantine"]
    if quarantining and dead_letter is None:
        raise ConfigError(
            "dead_letter",
            f"is required to quarantine rows (rules {quarantining}): give "
            "{'type': 'kafka'|'s3'|'file', ...}",
        )


def resolve_rules(rules: Any, context: Mapping[str, Any] | None) -> list[Rule]:
    """Parse ``rules``; a relative rules-file path is relative to the folder of the running DAG's file."""
    if isinstance(rules, str | os.PathLike) and not os.path.isabs(rules):
        fileloc = getattr((context or {}).get("dag"), "fileloc", None)
        if fileloc:
            rules = os.path.join(os.path.dirname(fileloc), rules)
    return parse_rules(rules)


def decide(
    rules: Sequence[Rule], results: Sequence[RuleResult], entries: list[dict[str, Any]], on_failure: str
) -> tuple[list[dict[str, Any]], list[Rule]]:
    """Apply the actions: set ``action`` (and ``action_taken`` for warn/fail) on each report entry.

    :param rules: the parsed rules.
    :param results: their results.
    :param entries: the report's rule entries (``QualityReport.to_dict()["rules"]``), updated in place.
    :param on_failure: the default action.
    :return: the entries whose failure fails the task, and the rules whose failing rows are quarantined.
    """
    by_name = {r.rule_name: r for r in rules}
    by_result = {r.name: r for r in results}
    failed: list[dict[str, Any]] = []
    for entry in entries:
        rule, result = by_name.get(entry["name"]), by_result.get(entry["name"])
        if rule is None or result is None:
            continue
        action = entry["action"] = resolve_action(rule, on_failure)
        if result.status == "pass":
            continue
        if result.status == "fail" and (
            action == "fail" or (action == "quarantine" and _explicit_threshold(rule))
        ):
            entry["action_taken"] = "failed the task"
            failed.append(entry)
        elif action != "quarantine":
            entry["action_taken"] = "warned"
    quarantine = [
        r
        for r in rules
        if resolve_action(r, on_failure) == "quarantine" and (by_result[r.rule_name].failing_rows or 0) > 0
    ]
    return failed, quarantine
