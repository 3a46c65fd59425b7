"""Code that runs on the Spark executors never needs Airflow.

Under a real Airflow worker the Task SDK supervisor sets ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` to
``airflow-db-not-allowed:///`` for the task and everything it starts, so ``import airflow`` fails in Spark's
Python workers; on a real cluster the executors have no Airflow at all. These tests run the executor-side
modules, and the very functions the hooks ship to ``mapInArrow`` (pickled here, unpickled there), in a
fresh interpreter in which any import of ``airflow`` raises and names the import chain that led to it.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import airflow_etl_provider.executor as executor_pkg

PKG = Path(__file__).resolve().parents[2] / "airflow_etl_provider"
EXECUTOR_MODULES = sorted(f"airflow_etl_provider.executor.{m.name}" for m in pkgutil.iter_modules(executor_pkg.__path__))
#: third-party packages an executor may import (requirements-executor.txt installs them)
ALLOWED_THIRD_PARTY = {"pyspark", "pyarrow", "confluent_kafka", "boto3", "botocore", "psycopg", "tenacity",
                       "pydantic", "orjson"}

#: Prepended to every child interpreter: ``import airflow`` raises, with the stack of the import that tried.
BLOCK_AIRFLOW = textwrap.dedent('''
    import os, sys, traceback
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "airflow-db-not-allowed:///"

    class _NoAirflow:
        def find_spec(self, name, path=None, target=None):
            if name == "airflow" or name.startswith("airflow."):
                chain = [ln for ln in traceback.format_stack() if "importlib._bootstrap" not in ln]
                raise ImportError(f"executor-side code imported {name!r}; import chain:\\n" + "".join(chain[-12:]))
            return None

    sys.meta_path.insert(0, _NoAirflow())
''')


def _run_blocked(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_AIRFLOW + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120)


def test_there_are_executor_modules() -> None:
    assert {"airflow_etl_provider.executor.dead_letter", "airflow_etl_provider.executor.sinks",
            "airflow_etl_provider.executor.postgres_copy"} <= set(EXECUTOR_MODULES)


def test_the_blocker_catches_a_module_that_needs_airflow() -> None:
    """The control: the hook module (driver side) does import Airflow, and the blocked interpreter says so."""
    out = _run_blocked("import airflow_etl_provider.hooks.dead_letter\n")
    assert out.returncode != 0
    assert "executor-side code imported 'airflow'" in out.stderr
    assert "airflow_etl_provider/hooks/dead_letter.py" in out.stderr  # the chain names the importer


@pytest.mark.parametrize("module", EXECUTOR_MODULES)
def test_executor_module_imports_without_airflow(module: str) -> None:
    out = _run_blocked(f"""
        import importlib, sys
        importlib.import_module({module!r})
        loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'
                        or m.startswith(('airflow_etl_provider.hooks', 'airflow_etl_provider.operators')))
        print('LOADED', loaded)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout


def test_executor_modules_import_only_core_executor_stdlib_and_the_client_libraries() -> None:
    stdlib = set(sys.stdlib_module_names)
    offenders = []
    for path in sorted((PKG / "executor").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [])
            for name in names:
                root = name.split(".")[0]
                if root == "airflow_etl_provider":
                    if not name.startswith(("airflow_etl_provider.core", "airflow_etl_provider.executor")):
                        offenders.append(f"{path.name}:{node.lineno} imports {name}")
                elif root not in stdlib and root not in ALLOWED_THIRD_PARTY:
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offenders, "executor-side modules may import only core/, executor/, the standard library and " \
        f"{sorted(ALLOWED_THIRD_PARTY)}:\n" + "\n".join(offenders)


def test_requirements_executor_lists_every_allowed_package() -> None:
    listed = {ln.split("=")[0].split("[")[0].split("<")[0].split(">")[0].strip().lower()
              for ln in (PKG.parent / "requirements-executor.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")}
    import_to_dist = {"confluent_kafka": "confluent-kafka"}
    missing = {import_to_dist.get(m, m) for m in ALLOWED_THIRD_PARTY} - listed - {"botocore"}
    assert not missing, f"requirements-executor.txt lacks {sorted(missing)}"
    assert not any(name.startswith("apache-airflow") for name in listed)


def test_the_shipped_dlq_publisher_runs_without_airflow(tmp_path: Path) -> None:
    """The function DeadLetterHook.publish_dataframe hands to mapInArrow, pickled the way PySpark pickles it,
    unpickled and run on one Arrow batch where Airflow cannot be imported: it writes the envelopes."""
    import pyarrow as pa
    from pyspark import cloudpickle

    from airflow_etl_provider.core.envelope import RunContext
    from airflow_etl_provider.executor.dead_letter import partition_publisher
    from airflow_etl_provider.executor.sinks import FileSink

    fn = partition_publisher(
        FileSink(prefix=str(tmp_path / "dlq")), spool_dir=str(tmp_path / "spool"), batch_prefix="run-t1",
        pipeline_id="p", run_context=RunContext("dag", "task", "run", 1, "p"), stage="load", key_columns=["id"],
    )
    (tmp_path / "fn.pkl").write_bytes(cloudpickle.dumps(fn))
    batch = pa.RecordBatch.from_pylist([{"id": 1, "_etl_error": "bad id"}, {"id": 2, "_etl_error": None}])
    with pa.OSFile(str(tmp_path / "in.arrow"), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    out = _run_blocked("""
        import pickle, sys, pyarrow as pa
        fn = pickle.loads(open(sys.argv[1], 'rb').read())
        batches = pa.ipc.open_file(sys.argv[2])
        status = list(fn(iter([batches.get_batch(0)])))[0].to_pylist()[0]
        print('STATUS', status)
        assert not any(m.split('.')[0] == 'airflow' for m in sys.modules)
    """, str(tmp_path / "fn.pkl"), str(tmp_path / "in.arrow"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'delivered': 2" in out.stdout and "'spooled': 0" in out.stdout
    import gzip

    letters = [json.loads(line) for f in (tmp_path / "dlq").rglob("*.jsonl.gz")
               for line in gzip.decompress(f.read_bytes()).splitlines()]
    assert sorted((e["record"]["id"], e["error_message"]) for e in letters) == [(1, "bad id"), (2, "rejected")]


def test_the_shipped_copy_writer_and_object_reader_unpickle_without_airflow(tmp_path: Path) -> None:
    from pyspark import cloudpickle

    from airflow_etl_provider.executor.dead_letter import object_reader
    from airflow_etl_provider.executor.postgres_copy import copy_writer
    from airflow_etl_provider.executor.sinks import S3Sink

    (tmp_path / "copy.pkl").write_bytes(cloudpickle.dumps(copy_writer({"host": "127.0.0.1"}, "COPY x FROM STDIN",
                                                                      [], [])))
    (tmp_path / "read.pkl").write_bytes(cloudpickle.dumps(object_reader(S3Sink(prefix="p", bucket="b"))))
    out = _run_blocked("""
        import pickle, sys
        for path in sys.argv[1:]:
            assert callable(pickle.loads(open(path, 'rb').read()))
        print('OK', sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))
    """, str(tmp_path / "copy.pkl"), str(tmp_path / "read.pkl"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK []" in out.stdout


def test_a_spooled_publish_fails_naming_the_rows_the_spool_and_the_full_replay_command() -> None:
    from airflow_etl_provider.core.errors import DeadLetterUnavailableError
    from airflow_etl_provider.executor.dead_letter import PublishResult

    PublishResult(delivered=5).raise_if_spooled("kafka topic t")  # nothing spooled: nothing raised
    result = PublishResult(delivered=2, spooled=3, spool_paths=["/s/a.jsonl", "/s/b.jsonl"], errors=["broker down"])
    with pytest.raises(DeadLetterUnavailableError) as caught:
        result.raise_if_spooled("kafka topic t @ 127.0.0.1:1", "--to kafka --topic t")
    err = caught.value
    assert (err.rows, err.spool_path) == (3, "/s/a.jsonl, /s/b.jsonl")
    assert err.replay_command == "airflow-etl dlq replay-spool /s/a.jsonl /s/b.jsonl --to kafka --topic t"
    assert "kafka topic t @ 127.0.0.1:1: broker down" in str(err)


def test_executor_modules_import_in_the_executors_own_virtualenv() -> None:
    """What the executors really have (requirements-executor.txt + this package, no Airflow, no yaml): every
    executor module, and what it pulls in from core, imports there (a core import of yaml broke Spark Connect)."""
    python = Path(__file__).resolve().parents[2] / ".local" / "executor-venv" / "bin" / "python"
    assert python.exists(), f"{python} is missing: `make executor-venv` builds it (`make test` does)"
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in EXECUTOR_MODULES)
    code += "import sys; print('AIRFLOW' if any(m.split('.')[0] == 'airflow' for m in sys.modules) else 'CLEAN')"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("CLEAN")
