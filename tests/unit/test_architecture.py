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


def _package_imports(path: Path, root: Path = PKG.parent) -> list[tuple[int, str]]:
    """Every import of ``path`` (top level and inside functions) as module names, relative ones resolved;
    ``from package import name`` counts as importing ``package`` and ``package.name``."""
    parts = path.relative_to(root).with_suffix("").parts
    package = list(parts[:-1])  # the package a relative import starts from (also for __init__.py)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


#: Imports of one operators/ module by another that the test still tolerates, with the reason. Every entry
#: must still exist (the test fails once it is gone, so the list only shrinks). None left.
KNOWN_OPERATOR_IMPORTS: set[tuple[str, str]] = set()


def _operator_imports(root: Path) -> set[tuple[str, str]]:
    found = set()
    for path in sorted((root / "airflow_etl_provider" / "operators").rglob("*.py")):
        own = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for _, name in _package_imports(path, root):
            module = ".".join(name.split(".")[:3])  # airflow_etl_provider.operators.<module>
            if module.startswith("airflow_etl_provider.operators.") and module != own:
                found.add((str(path.relative_to(root / "airflow_etl_provider")), module))
    return found


def test_no_operators_module_imports_another_operators_module() -> None:
    """An operator never imports another operator: what two share lives below them (hooks or core)."""
    found = _operator_imports(PKG.parent)
    offenders = sorted(f"{p} imports {m}" for p, m in found - KNOWN_OPERATOR_IMPORTS)
    assert not offenders, "move what operators share into hooks/ or core/:\n" + "\n".join(offenders)
    stale = KNOWN_OPERATOR_IMPORTS - found
    assert not stale, f"no longer imported: remove from KNOWN_OPERATOR_IMPORTS: {sorted(stale)}"


def test_the_operator_import_check_sees_every_import_form(tmp_path: Path) -> None:
    """The check resolves absolute, relative and ``from package import module`` imports, in functions too."""
    ops = tmp_path / "airflow_etl_provider" / "operators"
    ops.mkdir(parents=True)
    (ops / "__init__.py").write_text("")
    (ops / "x.py").write_text(
        "import airflow_etl_provider.operators.a\n"
        "def f():\n"
        "    from . import b\n"
        "    from .c import Op\n"
        "    from airflow_etl_provider.operators import d\n"
        "    from airflow_etl_provider.hooks import e\n"
    )
    modules = {m for _, m in _operator_imports(tmp_path)}
    assert modules == {f"airflow_etl_provider.operators.{n}" for n in "abcd"}
