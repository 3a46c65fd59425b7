from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema

from airflow_etl_provider import __version__
from airflow_etl_provider.get_provider_info import get_provider_info


def test_entry_point_is_registered() -> None:
    eps = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_etl_provider")]
    assert len(eps) == 1
    assert eps[0].load()() == get_provider_info()


def test_provider_info_matches_airflow_schema() -> None:
    import airflow

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    info = get_provider_info()
    jsonschema.validate(info, json.loads(schema_path.read_text()))
    assert info["package-name"] == "airflow-etl-provider"
    assert info["versions"] == [__version__]
    for key in ("name", "description", "connection-types", "notifications"):
        assert key in info


def test_every_registered_notifier_and_hook_module_imports() -> None:
    import importlib

    from airflow.sdk.bases.notifier import BaseNotifier

    info = get_provider_info()
    assert info["notifications"]
    for path in info["notifications"]:
        module, _, name = path.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), name), BaseNotifier), path
    for group in info["hooks"]:
        for module in group["python-modules"]:
            importlib.import_module(module)
