"""Hooks of airflow-etl-provider."""

from __future__ import annotations
