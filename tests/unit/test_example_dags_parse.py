"""Every DAG file in dags/ imports with no errors and no I/O at parse time, and says what it is."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Parse dags/ in a fresh interpreter in a network namespace of its own (``unshare --net``: not even loopback is
#: up), where Python's sockets also raise with a clear message: parse-time I/O (a database query, a Kafka or S3
#: client, through Python or through a C library such as libpq) fails the DAG file's import.
PARSE = textwrap.dedent('''
    import json, socket, sys

    def _no_network(self, address, *args):
        raise OSError(f"DAG parsing opened a network connection to {address!r}")

    socket.socket.connect = _no_network
    socket.socket.connect_ex = _no_network
    socket.create_connection = lambda address, *a, **k: _no_network(None, address)

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[1])
    print("RESULT " + json.dumps({
        "errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
        "dags": {d.dag_id: {"doc_md": bool((d.doc_md or "").strip()), "tags": sorted(d.tags),
                            "owners": sorted({t.owner for t in d.tasks}), "params": sorted(d.params.keys()),
                            "file": d.fileloc}
                 for d in bag.dags.values()},
    }))
''')


@functools.cache
def _parse(folder: str = str(ROOT / "dags")) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["AIRFLOW__CORE__DAGS_FOLDER"] = folder
    env.setdefault("AIRFLOW_HOME", str(ROOT / ".local" / "airflow-parse-test"))
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", PARSE, folder], capture_output=True, text=True,
                         env=env, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])


def test_every_dag_file_imports_without_errors_or_io_and_has_doc_tags_and_owner() -> None:
    parsed = _parse()
    assert parsed["errors"] == {}
    files = {Path(p).name for p in (ROOT / "dags").glob("*.py")}
    assert {Path(d["file"]).name for d in parsed["dags"].values()} == files  # every file holds a DAG
    assert {"example_etl_pipeline", "example_data_quality", "example_resilient_load", "example_etl_resilience",
            "example_etl_hello", "example_maintenance"} <= set(parsed["dags"])
    for dag_id, dag in parsed["dags"].items():
        assert dag["doc_md"], dag_id
        assert "airflow-etl-provider" in dag["tags"], dag_id
        assert dag["owners"] == ["data-platform"], dag_id


def test_the_pipeline_offers_its_params_in_the_trigger_form() -> None:
    assert _parse()["dags"]["example_etl_pipeline"]["params"] == ["bad_share", "inject_outage", "rows"]


def test_the_parse_check_catches_a_dag_file_that_connects_at_parse_time(tmp_path: Path) -> None:
    """The control: a DAG file that opens a PostgreSQL connection (through libpq, not Python's sockets) at
    parse time is reported as an import error."""
    (tmp_path / "connects.py").write_text(textwrap.dedent('''
        import psycopg
        from airflow.sdk import dag

        psycopg.connect(host="127.0.0.1", port=5432, user="x", password="x", dbname="x", connect_timeout=3)

        @dag(dag_id="connects_at_parse_time")
        def connects():
            pass

        connects()
    '''))
    errors = _parse(str(tmp_path))["errors"]
    assert list(errors) == [str(tmp_path / "connects.py")]
    assert "Network is unreachable" in next(iter(errors.values()))
