"""Measure the shared circuit breaker under concurrency: N processes against a dead PostgreSQL.

The "dead PostgreSQL" is a TCP listener on 127.0.0.1 that accepts every connection and closes it at
once, counting each one, so we count the connection attempts that really *reach* the server (a
client-side counter would miss none and prove nothing). Each worker process plays a task instance of a
load: it loops ``retry(breaker.call(connect))`` with the real ``AirflowVariableBreakerStore`` (one JSON
Variable in the real Airflow metadata DB, last-writer-wins, no compare-and-set); when the breaker refuses
(``CircuitOpenError``) it sleeps until ``retry_at``, as a rescheduled task would.

Reported: attempts before the breaker first opened (ideal: ``failure_threshold``), attempts after it
(ideal: ``half_open_max_attempts`` per half-open cycle), and the excess over the ideal: the race
allowance. Run::

    set -a; . .local/airflow.env; set +a
    .venv/bin/python benchmarks/breaker_race.py --workers 8 --seconds 20 --reset-timeout 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import threading
import time
import uuid
from typing import Any


class DeadPostgres:
    """Accepts and immediately closes TCP connections, recording when each arrived."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.arrivals.append(time.time())
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def _worker(idx: int, name: str, port: int, policy: dict[str, Any], seconds: float, barrier: Any,
            results: Any) -> None:
    import logging

    import psycopg2

    logging.getLogger("airflow_etl_provider").setLevel(logging.ERROR)  # the report, not 1000 retry lines

    from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy, SharedCircuitBreaker
    from airflow_etl_provider.core.errors import CircuitOpenError
    from airflow_etl_provider.core.retry import Retrier, RetryPolicy
    from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore

    transitions: list[tuple[float, str, str]] = []
    breaker = SharedCircuitBreaker(
        name, CircuitBreakerPolicy(**policy), AirflowVariableBreakerStore(), who=f"worker-{idx}",
        on_transition=lambda e: transitions.append((e.at, e.from_state.value, e.to_state.value)),
    )
    retrier = Retrier(RetryPolicy(max_attempts=3, initial_delay_s=0.05, max_delay_s=0.2), op=f"worker-{idx}")

    def connect() -> None:
        psycopg2.connect(host="127.0.0.1", port=port, user="x", password="x", dbname="x", connect_timeout=2)

    calls = refused = 0
    refusals: list[tuple[float, float]] = []
    breaker.state()  # import Airflow and open the DB connection before the clock starts
    barrier.wait()
    end = time.time() + seconds
    while time.time() < end:
        try:
            calls += 1
            retrier.call(breaker.call, connect)
        except CircuitOpenError as err:
            refused += 1
            refusals.append((round(time.time(), 2), round(err.retry_at.timestamp(), 2)))
            time.sleep(max(0.0, min(err.retry_at.timestamp(), end) - time.time()) + 0.01)
        except Exception:  # the task failed; Airflow would retry it: loop again
            time.sleep(0.05)
    results.put({"worker": idx, "calls": calls, "refused": refused, "transitions": transitions,
                 "refusals": refusals})


def run(workers: int = 8, seconds: float = 20.0, failure_threshold: int = 5, reset_timeout: float = 3.0,
        half_open_max_attempts: int = 1) -> dict[str, Any]:
    from airflow_etl_provider.hooks.circuit_breaker import AirflowVariableBreakerStore

    name = f"race_{uuid.uuid4().hex[:8]}"
    policy = {"failure_threshold": failure_threshold, "reset_timeout_s": reset_timeout,
              "half_open_max_attempts": half_open_max_attempts}
    server = DeadPostgres()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, name, server.port, policy, seconds, barrier, results))
             for i in range(workers)]
    for p in procs:
        p.start()
    outs = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    server.close()
    AirflowVariableBreakerStore().delete(name)

    all_transitions = sorted(t for o in outs for t in o["transitions"])
    opens = [t for t, a, b in all_transitions if a == "closed" and b == "open"]
    first_open = opens[0] if opens else float("inf")
    arrivals = sorted(server.arrivals)
    before = sum(1 for a in arrivals if a <= first_open)
    after = len(arrivals) - before
    open_window = max(0.0, (arrivals[-1] if arrivals else first_open) - first_open)
    # Half-open cycles the run allowed: one per reset_timeout after the first open (lower bound).
    trials_started = sum(1 for _, a, b in all_transitions if a == "open" and b == "half_open")
    cycles = max(1, int(open_window // reset_timeout) + 1) if opens else 0
    ideal_after = cycles * half_open_max_attempts
    return {
        "workers": workers, "seconds": seconds, "policy": policy,
        "attempts_total": len(arrivals),
        "attempts_before_first_open": before,
        "attempts_after_first_open": after,
        "half_open_cycles": cycles,
        "half_open_transitions_written": trials_started,
        "ideal_before_open": failure_threshold,
        "ideal_after_open": ideal_after,
        "race_allowance_before_open": before - failure_threshold,
        "race_allowance_after_open": after - ideal_after,
        "calls": sum(o["calls"] for o in outs),
        "refused": sum(o["refused"] for o in outs),
        "state_changes": len(all_transitions),
        "timeline": [[round(t - first_open, 2), a, b] for t, a, b in all_transitions],
        "arrivals_after_open_s": [round(a - first_open, 2) for a in arrivals if a > first_open],
        "refusals": {o["worker"]: [(round(t - first_open, 2), round(r - first_open, 2)) for t, r in o["refusals"]]
                     for o in outs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--failure-threshold", type=int, default=5)
    parser.add_argument("--reset-timeout", type=float, default=3.0)
    parser.add_argument("--half-open-max-attempts", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    a = parser.parse_args()
    report = run(a.workers, a.seconds, a.failure_threshold, a.reset_timeout, a.half_open_max_attempts)
    if a.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=2))
    print(f"breaker race: {report['workers']} workers, {report['attempts_total']} attempts reached the dead server; "
          f"{report['attempts_before_first_open']} before the first open (ideal {report['ideal_before_open']}), "
          f"{report['attempts_after_first_open']} after it over {report['half_open_cycles']} half-open cycles "
          f"(ideal {report['ideal_after_open']}); race allowance +{report['race_allowance_before_open']} / "
          f"+{report['race_allowance_after_open']}")


if __name__ == "__main__":
    main()
