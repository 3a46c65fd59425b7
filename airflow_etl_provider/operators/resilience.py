"""The resilience glue under its historical import path (DAGs import ``guard_for`` from here).

It lives in :mod:`airflow_etl_provider.hooks.resilience` (below the operators, which share it); this
module only re-exports it.
"""

from __future__ import annotations

from airflow_etl_provider.hooks.resilience import guard_for, raise_for_open_circuit, run_context

__all__ = ["guard_for", "raise_for_open_circuit", "run_context"]
