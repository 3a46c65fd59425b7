"""End to end: the pipeline DAG ``example_etl_pipeline`` on the REAL running Airflow, driven through the
public REST API (official client ``apache-airflow-client``), its dead letters read back from the real Kafka
and its rows from a real PostgreSQL.

1. A green run: every row is accounted for (read = passed + quarantined; read = loaded + dead-lettered),
   the counts match the problems ``prepare`` planted, and the dead letters of THIS run really are in the
   two Kafka DLQ topics.
2. An outage: the load targets ``postgres_outage`` where nothing listens; the shared circuit breaker opens,
   the task goes ``up_for_reschedule`` (no Airflow retry spent) until the breaker's half-open moment;
   a PostgreSQL started on that port lets the same try finish green.

Run (with the stack's env loaded, ``set -a; . .local/airflow.env; set +a``)::

    .venv/bin/python -m pytest tests/e2e/test_pipeline_rest.py -q -p no:cacheprovider -s
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import AirflowRestApi, wait_for
from tests.integration.conftest import DisposablePostgres

pytestmark = [pytest.mark.e2e]

DAG_ID = "example_etl_pipeline"
TASKS = ("prepare", "check_orders", "load_orders")
QUALITY_DLQ = "example.pipeline.quality.dlq"
LOAD_DLQ = "example.pipeline.load.dlq"
BREAKER_VARIABLE = "etl_circuit_breaker__postgres_outage"
BREAKER_RESET_S = 30.0  # the DAG's circuit_breaker resetTimeoutSeconds
#: How long a triggered run may wait behind other runs (the DAG has max_active_runs=1 and other people use
#: the same Airflow), then how long one run may take once it started (1-3 minutes here).
QUEUED_TIMEOUT_S = 600
RUN_TIMEOUT_S = 600
TERMINAL = ("success", "failed")


def _load_dag_module() -> Any:
    """The DAG file itself (for PROBLEMS and TABLE_DDL), imported from its path: ``dags/`` is no package."""
    path = Path(__file__).resolve().parents[2] / "dags" / "example_etl_pipeline.py"
    spec = importlib.util.spec_from_file_location("_e2e_example_etl_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PIPELINE = _load_dag_module()
#: The quality rule that catches each of the first three planted problems (the fourth passes the rules).
RULE_OF_PROBLEM = {
    PIPELINE.PROBLEMS[0]: "not_null(order_id,email,amount,ordered_at)",
    PIPELINE.PROBLEMS[1]: "range(amount)",
    PIPELINE.PROBLEMS[2]: "allowed_values(status)",
}


# ----------------------------------------------------------------------------------------- helpers
def _run_report(api: AirflowRestApi, run_id: str) -> str:
    """The run's state, its task states and the log tail of every task that did not succeed."""
    states = api.task_states(DAG_ID, run_id)
    lines = [f"run {run_id}: {api.run_state(DAG_ID, run_id)}; tasks (state, try): {states}"]
    for task_id, (state, try_number) in states.items():
        if state not in ("success", None) and try_number >= 1:
            lines.append(f"--- log of {task_id} try {try_number} ({state}) ---")
            lines.append(api.log_tail(DAG_ID, run_id, task_id, try_number))
    return "\n".join(lines)


def _wait_for_run_end(api: AirflowRestApi, run_id: str) -> str:
    """Wait until the run leaves ``queued`` (other runs may be ahead of it), then until it is terminal."""
    wait_for(lambda: api.run_state(DAG_ID, run_id) != "queued", timeout=QUEUED_TIMEOUT_S, interval=3,
             what=f"run {run_id} to start (max_active_runs=1: another run of {DAG_ID} is ahead of it)",
             last=lambda: api.run_state(DAG_ID, run_id))
    return wait_for(lambda: (s if (s := api.run_state(DAG_ID, run_id)) in TERMINAL else None),
                    timeout=RUN_TIMEOUT_S, interval=3, what=f"run {run_id} to finish",
                    last=lambda: _run_report(api, run_id))


def _dead_letters_of_run(bootstrap: str, topic: str, run_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every envelope of ``topic`` (all partitions, from the beginning up to the current end) whose
    ``run_id`` is ``run_id``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-dlq-reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        assert topic in meta.topics and meta.topics[topic].error is None, f"no Kafka topic {topic}: {meta.topics}"
        ends: dict[int, int] = {}
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        pending = dict(ends)
        while pending:
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout} s: {pending} left"
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error():
                    raise KafkaException(msg.error())
                envelope = json.loads(msg.value())
                if envelope.get("run_id") == run_id:
                    found.append(envelope)
            # by position, not by the last offset seen: a transaction marker may hold the last offset
            for tp in consumer.position([TopicPartition(topic, p) for p in list(pending)]):
                if tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]
        return found
    finally:
        consumer.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def e2e_pipeline_runs(airflow_api: AirflowRestApi) -> Iterator[list[str]]:
    """Run ids this test triggered; any still unfinished at teardown is marked failed, so a failed test
    never leaves a run holding the DAG's only active-run slot (e.g. up_for_reschedule forever)."""
    runs: list[str] = []
    yield runs
    for run_id in runs:
        airflow_api.fail_run_if_unfinished(DAG_ID, run_id)


@pytest.fixture
def outage_postgres(airflow_api: AirflowRestApi) -> Iterator[DisposablePostgres]:
    """A PostgreSQL cluster initialised for the port of the connection ``postgres_outage``, NOT started (the
    test starts it when it wants the target back); stopped and removed at teardown, with the breaker
    Variable deleted."""
    port = int(os.environ["ETL_STACK_PG_OUTAGE_PORT"])
    root = tempfile.mkdtemp(prefix="etl-e2e-outage-pg-")  # not under pytest's 0700 tmp: postgres reads it
    os.chmod(root, 0o755)
    pg = DisposablePostgres(root, port)
    pg.init()  # initdb only: nothing listens yet
    yield pg
    pg.stop("fast")
    shutil.rmtree(root, ignore_errors=True)
    airflow_api.delete_variable_if_present(BREAKER_VARIABLE)


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.timeout(QUEUED_TIMEOUT_S + RUN_TIMEOUT_S + 300)
def test_pipeline_runs_green_through_the_rest_api(
    airflow_api: AirflowRestApi, dlq_kafka_bootstrap: str, e2e_pipeline_runs: list[str]
) -> None:
    rows, bad_share = 4000, 0.05
    airflow_api.ensure_unpaused(DAG_ID)
    run_id = airflow_api.trigger(DAG_ID, {"rows": rows, "bad_share": bad_share})
    e2e_pipeline_runs.append(run_id)
    started = time.monotonic()

    state = _wait_for_run_end(airflow_api, run_id)
    print(f"\n[e2e] run {run_id} ended {state} after {time.monotonic() - started:.0f} s")
    assert state == "success", _run_report(airflow_api, run_id)
    assert airflow_api.task_states(DAG_ID, run_id) == {t: ("success", 1) for t in TASKS}

    prepared = airflow_api.xcom(DAG_ID, run_id, "prepare")
    planted: dict[str, int] = prepared["planted"]
    assert prepared["rows"] == rows
    assert set(planted) == set(PIPELINE.PROBLEMS)
    assert sum(planted.values()) == round(rows * bad_share) == 200
    expected_quarantined = sum(planted[p] for p in PIPELINE.PROBLEMS[:3])
    expected_refused = planted[PIPELINE.PROBLEMS[3]]

    check = airflow_api.xcom(DAG_ID, run_id, "check_orders")
    assert check["records_read"] == rows == check["records_passed"] + check["records_quarantined"]
    assert check["records_quarantined"] == expected_quarantined
    assert check["records_failed"] == 0

    load = airflow_api.xcom(DAG_ID, run_id, "load_orders")
    assert load["records_read"] == load["records_loaded"] + load["records_dead_lettered"]
    assert load["records_read"] == check["records_passed"]
    assert load["records_dead_lettered"] == expected_refused
    assert load["records_loaded"] == rows - sum(planted.values())
    assert load["records_failed"] == 0

    quarantined = _dead_letters_of_run(dlq_kafka_bootstrap, QUALITY_DLQ, run_id)
    assert len(quarantined) == check["records_quarantined"]
    assert len({e["envelope_id"] for e in quarantined}) == len(quarantined)  # no duplicate in a first try
    assert {(e["stage"], e["dag_id"], e["task_id"], e["try_number"]) for e in quarantined} == \
        {("quality", DAG_ID, "check_orders", 1)}
    assert Counter(rule for e in quarantined for rule in e["failed_rules"]) == \
        {RULE_OF_PROBLEM[p]: planted[p] for p in PIPELINE.PROBLEMS[:3]}

    refused = _dead_letters_of_run(dlq_kafka_bootstrap, LOAD_DLQ, run_id)
    assert len(refused) == load["records_dead_lettered"]
    assert len({e["envelope_id"] for e in refused}) == len(refused)
    assert {(e["stage"], e["task_id"], e["try_number"], e["error_class"]) for e in refused} == \
        {("load", "load_orders", 1, "psycopg.errors.CheckViolation")}
    assert {e["record"]["amount"] for e in refused} == {"12345.00"}  # the planted over-the-limit amount


@pytest.mark.timeout(QUEUED_TIMEOUT_S + RUN_TIMEOUT_S + 600)
def test_open_breaker_reschedules_the_load_until_the_target_is_back(
    airflow_api: AirflowRestApi, outage_postgres: DisposablePostgres, e2e_pipeline_runs: list[str]
) -> None:
    port, rows = outage_postgres.port, 500
    assert not _listening(port), (
        f"something already listens on 127.0.0.1:{port} (ETL_STACK_PG_OUTAGE_PORT, the connection "
        "postgres_outage): the outage cannot be injected; find it with `ss -ltnp`")
    airflow_api.delete_variable_if_present(BREAKER_VARIABLE)
    assert airflow_api.variable_json(BREAKER_VARIABLE) is None
    airflow_api.ensure_unpaused(DAG_ID)
    run_id = airflow_api.trigger(DAG_ID, {"rows": rows, "bad_share": 0, "inject_outage": True})
    e2e_pipeline_runs.append(run_id)
    started = time.monotonic()

    def load_state() -> tuple[Any, str | None]:
        ti = airflow_api.task_instance(DAG_ID, run_id, "load_orders")
        return ti, (ti.state.value if ti.state is not None else None)

    def rescheduled() -> Any:
        ti, state = load_state()
        if state in ("failed", "upstream_failed", "up_for_retry", "success", "skipped"):
            pytest.fail(f"load_orders went {state} instead of up_for_reschedule:\n{_run_report(airflow_api, run_id)}",
                        pytrace=False)
        return ti if state == "up_for_reschedule" else None

    ti = wait_for(rescheduled, timeout=QUEUED_TIMEOUT_S + RUN_TIMEOUT_S, interval=1,
                  what="load_orders to go up_for_reschedule", last=lambda: _run_report(airflow_api, run_id))
    print(f"\n[e2e] load_orders up_for_reschedule {time.monotonic() - started:.0f} s after the trigger")
    assert ti.try_number == 1  # no Airflow retry spent
    assert airflow_api.run_state(DAG_ID, run_id) == "running"
    assert {t: s for t, s in airflow_api.task_states(DAG_ID, run_id).items() if t != "load_orders"} == \
        {"prepare": ("success", 1), "check_orders": ("success", 1)}

    breaker = airflow_api.variable_json(BREAKER_VARIABLE)
    assert breaker is not None, f"no Variable {BREAKER_VARIABLE} although load_orders was rescheduled"
    assert breaker["state"] == "open", breaker
    assert breaker["consecutive_failures"] >= 3, breaker  # failureThreshold 3
    assert "load_orders" in breaker["updated_by"] and run_id in breaker["updated_by"], breaker
    assert f"port {port} failed" in breaker["last_error"], breaker
    half_open_at = breaker["opened_at"] + BREAKER_RESET_S
    # The try that asked for the reschedule ended after the breaker opened, well before the half-open moment
    # (it released its worker slot instead of waiting).
    assert breaker["opened_at"] <= ti.end_date.timestamp() < half_open_at, (breaker, ti.end_date)
    assert time.time() < half_open_at, "the test saw the reschedule too late to start the target before half-open"

    # The target comes back: PostgreSQL on exactly that port, with the table the DAG loads into.
    import psycopg

    outage_postgres.start()
    with psycopg.connect(outage_postgres.uri, autocommit=True) as conn:
        conn.execute(PIPELINE.TABLE_DDL)

    # The REST API does not expose the reschedule date (TaskReschedule rows); the scheduler sets
    # ``scheduled_when`` when it finds the date passed and schedules the same try again.
    def resumed() -> Any:
        ti, state = load_state()
        return ti if state != "up_for_reschedule" else None

    ti = wait_for(resumed, timeout=BREAKER_RESET_S + 120, interval=0.5,
                  what="load_orders to leave up_for_reschedule", last=lambda: _run_report(airflow_api, run_id))
    scheduled_at = ti.scheduled_when.timestamp()
    print(f"[e2e] load_orders scheduled again {scheduled_at - half_open_at:+.1f} s from the half-open moment "
          f"(breaker opened_at + {BREAKER_RESET_S:.0f} s)")
    assert half_open_at - 1.0 <= scheduled_at <= half_open_at + 30.0, (scheduled_at, half_open_at)
    assert ti.try_number == 1

    state = wait_for(lambda: (s if (s := airflow_api.run_state(DAG_ID, run_id)) in TERMINAL else None),
                     timeout=RUN_TIMEOUT_S, interval=3, what=f"run {run_id} to finish",
                     last=lambda: _run_report(airflow_api, run_id))
    print(f"[e2e] run {run_id} ended {state} {time.monotonic() - started:.0f} s after the trigger")
    assert state == "success", _run_report(airflow_api, run_id)
    assert airflow_api.task_states(DAG_ID, run_id) == {t: ("success", 1) for t in TASKS}

    load = airflow_api.xcom(DAG_ID, run_id, "load_orders")
    assert load["records_read"] == load["records_loaded"] == rows, load
    assert load["records_dead_lettered"] == 0, load
    assert load["target"] == "postgres:postgres_outage:public.pipeline_orders", load
    assert airflow_api.variable_json(BREAKER_VARIABLE)["state"] == "closed"  # the half-open trial closed it

    with psycopg.connect(outage_postgres.uri) as conn:
        count, low, high = conn.execute("select count(*), min(order_id), max(order_id) from "
                                        f"{PIPELINE.TABLE}").fetchone()
    assert (count, low, high) == (rows, 1, rows)
