"""The package's layering rules, checked on the source: a pure core, heavy imports inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "airflow_etl_provider"
FORBIDDEN_IN_CORE = ("airflow", "pyspark", "confluent_kafka", "boto3", "botocore", "psycopg", "psycopg2")
HEAVY = ("pyspark", "confluent_kafka", "boto3", "botocore", "pandas", "pyarrow")


def _imports(tree: ast.AST, top_level_only: bool) -> list[tuple[int, str]]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))  # type: ignore[attr-defined]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _root(module: str) -> str:
    return module.split(".")[0]


def test_core_imports_neither_airflow_nor_pyspark() -> None:
    offenders = []
    for path in sorted((PKG / "core").rglob("*.py")):
        for lineno, module in _imports(ast.parse(path.read_text()), top_level_only=False):
            if _root(module) in FORBIDDEN_IN_CORE:
                offenders.append(f"{path.relative_to(PKG)}:{lineno} imports {module}")
    assert not offenders, "core/ must stay pure:\n" + "\n".join(offenders)


def test_heavy_optional_imports_stay_inside_functions() -> None:
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for lineno, module in _imports(ast.parse(path.read_text()), top_level_only=True):
            if _root(module) in HEAVY:
                offenders.append(f"{path.relative_to(PKG)}:{lineno} imports {module} at module level")
    assert not offenders, "\n".join(offenders)


def test_every_module_uses_postponed_annotations() -> None:
    missing = [
        str(p.relative_to(PKG))
        for p in sorted(PKG.rglob("*.py"))
        if p.read_text().strip() and "from __future__ import annotations" not in p.read_text()
    ]
    assert not missing, missing


def test_importing_core_loads_no_airflow_or_spark() -> None:
    code = (
        "import sys, importlib, pkgutil, airflow_etl_provider.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('airflow_etl_provider.core.' + m.name)\n"
        "bad = sorted({k.split('.')[0] for k in sys.modules} & {'airflow', 'pyspark', 'confluent_kafka', 'boto3'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
