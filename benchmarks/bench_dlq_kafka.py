"""Dead letters to Kafka: our batched publisher vs the one-synchronous-send-per-record design.

What is compared
    *Ours*: :meth:`DeadLetterHook.publish` with a Kafka dead-letter config (the real API). It drives
    ``deliver_or_spool(KafkaSink, batch, ...)`` over batches of ``--batch-size`` (default: the hook's, 1,000)
    envelopes; ``KafkaSink.write`` produces a whole batch asynchronously (idempotent producer,
    ``acks=all``, ``linger.ms=5``, lz4) and returns only when every delivery report of the batch is in.
    One batch latency = from the batch's first ``produce()`` to its last delivery report
    (``PublishResult.batch_latencies_s``): produce + every ``acks=all`` confirmation. Two batches are in
    flight at a time (batch k is confirmed while batch k+1 is produced).

    *Peer* (the seed design a user would otherwise write): a ``confluent_kafka.Producer`` with the same
    reliability settings (``enable.idempotence=true``, ``acks=all``) that, for each record, calls
    ``produce()`` then ``flush()`` -- waits for that one delivery before sending the next. Same key
    (``kafka_key``), value (``env.to_json()``) and headers (``kafka_headers``). Its latency is per record.
    It runs on ``--peer-rows`` (default 10,000) rows; its rows/s is extrapolated to ``--rows``
    (``seconds = rows / peer_rows_per_s``), and the output says so.

    Why: a DLQ publisher must keep up with the failures of a big load (100k rejected rows must not
    take minutes) while still confirming every envelope (``acks=all``) before the task succeeds. The
    per-record synchronous send is the obvious "safe" design; batching with one confirmation wait per
    batch should be >= 20x faster, with a batch confirmed in < 100 ms (p99).

    Both sides publish the same prepared envelopes (100k realistic failed-order rows, ~10 columns, a
    psycopg not-null violation, a RunContext, ``key_columns=["order_id"]``); building them is not
    timed. Each run uses fresh topics (3 partitions, like the stack's default), deleted at the end
    unless ``--keep-topics``. Afterwards an independent consumer (fresh group, earliest) reads our
    topic back: count, keys (no loss, no duplicates) and a sample of values/headers must match, or
    the script exits 1. No timing is asserted: the goal check prints "goal met" / "goal NOT met".

Reading the numbers
    The broker is on 127.0.0.1, so the peer's per-record round trip is ~0.2-0.4 ms: the most
    favourable case for it (over a real network with replicated ``acks=all`` it is several times
    slower, ours barely changes). Ours is CPU-bound in Python: the output shows how much of a batch is
    envelope serialisation alone. The first batch of each side includes the idempotent producer's
    start (usually ~0.5 s in librdkafka); the goal's p99 counts it, and the "warm" p99 does not.

How to run (the local stack must be up: ``make services-up``)::

    set -a; . .local/airflow.env; set +a
    .venv/bin/python benchmarks/bench_dlq_kafka.py [--rows 100000] [--peer-rows 10000]

Investigation knobs: ``--batch-size N`` (the hook's ``batch_size``) and ``--producer-setting
linger.ms=5`` (repeatable; passed through the dead-letter config to ``KafkaSink``, overriding its
defaults); ``--skip-peer`` for quick sweeps of our side only (then no ``bench`` line is printed).

The last line is ``bench dlq_kafka_vs_sync_send: ours=<s> peer=<s> ratio=<ours/peer>`` for ``--rows`` rows.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from _common import delete_topics, kafka_bootstrap, peak_rss_mb, percentile, result_line, topic_message_count

from airflow_etl_provider.hooks.dead_letter import DEFAULT_BATCH_SIZE

BENCH_ID = "dlq_kafka_vs_sync_send"
PARTITIONS = 3
GOAL_SPEEDUP = 20.0
GOAL_P99_S = 0.100

# ------------------------------------------------------------------------------------------ envelopes
def _not_null_error(row: dict[str, Any]) -> BaseException:
    """The error PostgreSQL/psycopg raises for a row whose customer_id is NULL, raised and caught like
    a row-by-row load fallback does, so the envelope carries a (short) stack trace too."""
    failing = ", ".join("null" if v is None else str(v) for v in row.values())
    message = (
        'null value in column "customer_id" of relation "orders" violates not-null constraint\n'
        f"DETAIL:  Failing row contains ({failing})."
    )
    error_class: type[Exception] = RuntimeError  # psycopg is a dependency; its class is only decoration here
    try:
        from psycopg.errors import NotNullViolation

        error_class = NotNullViolation
    except ImportError:
        pass
    try:
        raise error_class(message)
    except Exception as err:
        return err


def make_run_context() -> Any:
    """The task that publishes: one scheduled try of the daily orders load."""
    from airflow_etl_provider.core.envelope import RunContext

    return RunContext(
        dag_id="orders_daily_load",
        task_id="load_orders",
        run_id="scheduled__2025-06-01T02:00:00+00:00",
        try_number=1,
        pipeline_id="orders_daily",
    )


def build_envelopes(rows: int) -> list[Any]:
    """``rows`` failed-order envelopes, as a load task would build them (deterministic content)."""
    from airflow_etl_provider.core.envelope import build_envelope

    rng = random.Random(42)
    run_context = make_run_context()
    base = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)
    now = datetime.now(UTC)
    statuses = ("pending", "paid", "shipped", "cancelled")
    countries = ("DE", "FR", "NL", "US", "GB", "ES", "IT", "PL")
    currencies = ("EUR", "EUR", "EUR", "USD", "GBP")
    envelopes = []
    for i in range(rows):
        record: dict[str, Any] = {
            "order_id": 10_000_000 + i,
            "customer_id": None if i % 3 == 0 else f"C{rng.randrange(10**8):08d}",
            "email": f"customer.{rng.randrange(10**6)}@example.com",
            "amount": Decimal(rng.randrange(100, 500_000)) / 100,
            "currency": rng.choice(currencies),
            "status": rng.choice(statuses),
            "created_at": base + timedelta(seconds=rng.randrange(86_400)),
            "country": rng.choice(countries),
            "sku": f"SKU-{rng.randrange(10**5):05d}-{rng.choice('ABCDEFG')}",
            "quantity": rng.randrange(1, 20),
        }
        envelopes.append(build_envelope(
            record, _not_null_error(record), stage="load", pipeline_id="orders_daily", run_context=run_context,
            key_columns=["order_id"], source="s3://raw/orders/2025-06-01/", target="etl.orders", now=now,
        ))
    return envelopes


# ------------------------------------------------------------------------------------------ kafka admin
def _admin_config(bootstrap: str) -> dict[str, Any]:
    # log_level 4: no "Purging unserved events from background queue" info line when the client goes
    return {"bootstrap.servers": bootstrap, "log_level": 4}


def create_topics(bootstrap: str, topics: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_admin_config(bootstrap))
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30  # wait until every partition has a leader in the metadata
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10).topics
        if all(t in meta and len(meta[t].partitions) == PARTITIONS
               and all(p.leader >= 0 for p in meta[t].partitions.values()) for t in topics):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {list(topics)} not ready within 30 s")


# ------------------------------------------------------------------------------------------ ours
def run_ours(envelopes: list[Any], bootstrap: str, topic: str, batch_size: int,
             producer_settings: dict[str, Any]) -> tuple[float, list[float]]:
    """Publish with ``DeadLetterHook.publish``; return (total seconds, per-batch latencies)."""
    from airflow_etl_provider.hooks import dead_letter as dl

    spool_dir = tempfile.mkdtemp(prefix="bench-dlq-spool-")
    hook = dl.DeadLetterHook(
        {"type": "kafka", "topic": topic, "config": {"bootstrap.servers": bootstrap, **producer_settings}},
        pipeline_id="orders_daily",
        run_context=make_run_context(),
        spool_dir=spool_dir,
    )
    try:
        start = time.perf_counter()
        result = hook.publish(envelopes, batch_size=batch_size)
        total = time.perf_counter() - start
    except Exception as err:
        print(f"FAIL: ours: publish raised {type(err).__name__}: {err}")
        sys.exit(1)
    latencies = result.batch_latencies_s  # per batch: first produce() to its last delivery report
    if result.delivered != len(envelopes) or result.spooled:
        print(f"FAIL: ours: delivered={result.delivered} spooled={result.spooled} of {len(envelopes)} "
              f"(spool: {result.spool_paths}, errors: {result.errors[:3]})")
        sys.exit(1)
    shutil.rmtree(spool_dir, ignore_errors=True)
    return total, latencies


def serialisation_cost(envelopes: Sequence[Any]) -> float:
    """Seconds of pure CPU to turn ``envelopes`` into (key, value, headers), the part of a batch that
    no producer setting can hide."""
    from airflow_etl_provider.core.envelope import kafka_headers, kafka_key

    start = time.perf_counter()
    for env in envelopes:
        env.to_json().encode()
        kafka_key(env)
        kafka_headers(env)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ verification
def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _norm_headers(headers: Any) -> list[tuple[str, bytes | None]]:
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return [(k, _as_bytes(v)) for k, v in items]


def verify_ours(envelopes: list[Any], bootstrap: str, topic: str, sample_size: int = 200) -> list[str]:
    """Read ``topic`` back with an independent consumer; return the problems found (empty = correct)."""
    from confluent_kafka import Consumer

    from airflow_etl_provider.core.envelope import kafka_headers, kafka_key

    problems: list[str] = []
    expected = {_as_bytes(kafka_key(env)): env for env in envelopes}
    if len(expected) != len(envelopes):
        problems.append(f"kafka_key is not unique: {len(expected)} keys for {len(envelopes)} envelopes")
    in_topic = topic_message_count(bootstrap, topic)
    if in_topic != len(envelopes):
        problems.append(f"topic holds {in_topic} messages (watermarks), expected {len(envelopes)}")

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-verify-{uuid.uuid4().hex[:10]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen: dict[bytes | None, Any] = {}
    duplicates = received = 0
    deadline = time.monotonic() + 120
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            if not msgs:
                if received >= max(in_topic, len(envelopes)) or time.monotonic() - idle_since > 15:
                    break
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                if msg.error():
                    problems.append(f"consumer error: {msg.error()}")
                    continue
                received += 1
                key = msg.key()
                if key in seen:
                    duplicates += 1
                seen[key] = (msg.value(), msg.headers())
    finally:
        consumer.close()

    if received != len(envelopes):
        problems.append(f"consumed {received} messages, expected {len(envelopes)}")
    if duplicates:
        problems.append(f"{duplicates} duplicate keys consumed")
    missing = [k for k in expected if k not in seen]
    if missing:
        problems.append(f"{len(missing)} envelopes missing from the topic (e.g. key {missing[0]!r})")
    unexpected = [k for k in seen if k not in expected]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the topic (e.g. {unexpected[0]!r})")

    rng = random.Random(7)
    present = sorted(k for k in expected if k is not None and k in seen)
    for key in rng.sample(present, min(sample_size, len(present))):
        env = expected[key]
        value, headers = seen[key]
        if value != env.to_json().encode():
            problems.append(f"value of key {key!r} differs from env.to_json()")
            break
        if _norm_headers(headers) != _norm_headers(kafka_headers(env)):
            problems.append(f"headers of key {key!r} differ: {headers!r} != {kafka_headers(env)!r}")
            break
    return problems


# ------------------------------------------------------------------------------------------ peer
def run_peer(envelopes: Sequence[Any], bootstrap: str, topic: str) -> tuple[float, list[float]]:
    """One synchronous send-and-wait per record; return (total seconds, per-record latencies)."""
    from confluent_kafka import Producer

    from airflow_etl_provider.core.envelope import kafka_headers, kafka_key

    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    latencies: list[float] = []
    start = time.perf_counter()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for env in envelopes:
        t0 = time.perf_counter()
        producer.produce(topic, key=kafka_key(env), value=env.to_json().encode(),
                         headers=kafka_headers(env), on_delivery=on_delivery)
        remaining = producer.flush(30)
        latencies.append(time.perf_counter() - t0)
        if remaining or failures:
            print(f"FAIL: peer: delivery failed ({remaining} unconfirmed, errors: {failures[:1]})")
            sys.exit(1)
    total = time.perf_counter() - start
    return total, latencies


# ------------------------------------------------------------------------------------------ main
def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            pass
    return key, value


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="envelopes ours publishes (default 100000)")
    parser.add_argument("--peer-rows", type=int, default=10_000,
                        help="envelopes the synchronous peer publishes; extrapolated to --rows (default 10000)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="DeadLetterHook.publish batch_size (default: the hook's default)")
    parser.add_argument("--producer-setting", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="librdkafka setting for our sink, overriding KafkaSink's defaults (repeatable)")
    parser.add_argument("--skip-peer", action="store_true", help="measure ours only (no bench line)")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the benchmark topics")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    bootstrap = kafka_bootstrap()
    producer_settings = dict(args.producer_setting)
    peer_rows = min(args.peer_rows, args.rows)
    run = uuid.uuid4().hex[:10]
    ours_topic, peer_topic = f"bench-dlq-ours-{run}", f"bench-dlq-peer-{run}"

    print(f"building {args.rows:,} failed-order envelopes (not timed) ...")
    t0 = time.perf_counter()
    envelopes = build_envelopes(args.rows)
    avg_bytes = sum(len(env.to_json().encode()) for env in envelopes[:1000]) / min(1000, len(envelopes))
    print(f"  built in {time.perf_counter() - t0:.1f} s; ~{avg_bytes:.0f} bytes of JSON per envelope; "
          f"peak RSS so far {peak_rss_mb():.0f} MiB")
    import airflow_etl_provider.hooks.dead_letter  # noqa: F401 - import Airflow now: its ~100 MiB is not publishing

    rss_before = peak_rss_mb()

    topics = [ours_topic] if args.skip_peer else [ours_topic, peer_topic]
    create_topics(bootstrap, topics)
    print(f"broker {bootstrap}; fresh topics {', '.join(topics)} ({PARTITIONS} partitions)")
    try:
        line = compare(args, envelopes, bootstrap, ours_topic, peer_topic, producer_settings, peer_rows, rss_before)
    finally:
        if not args.keep_topics:
            delete_topics(bootstrap, topics)
    if line is None:  # --skip-peer
        return 0
    print(line)  # the last line of the output
    return 0


def compare(args: argparse.Namespace, envelopes: list[Any], bootstrap: str, ours_topic: str, peer_topic: str,
            producer_settings: dict[str, Any], peer_rows: int, rss_before: float) -> str | None:
    """Run ours (and verify it), then the peer; print the report; return the ``bench`` line (None with
    ``--skip-peer``). Exits 1 when a side lost or failed to deliver envelopes."""
    # ---- ours
    settings_note = f", producer overrides {producer_settings}" if producer_settings else ""
    print(f"\nours: DeadLetterHook.publish -> KafkaSink, batch_size={args.batch_size:,}{settings_note}")
    ours_s, batch_lat = run_ours(envelopes, bootstrap, ours_topic, args.batch_size, producer_settings)
    rss_after = peak_rss_mb()
    ours_rps = args.rows / ours_s
    p50, p99 = percentile(batch_lat, 50), percentile(batch_lat, 99)
    print(f"  {args.rows:,} rows in {ours_s:.3f} s = {ours_rps:,.0f} rows/s ({len(batch_lat)} batches)")
    print(f"  batch latency (first produce to last ack): p50 {_ms(p50)}  p99 {_ms(p99)}  "
          f"max {_ms(max(batch_lat))}  first (includes producer connect) {_ms(batch_lat[0])}")
    if len(batch_lat) > 1:
        print(f"  warm batches only (without the first): p50 {_ms(percentile(batch_lat[1:], 50))}  "
              f"p99 {_ms(percentile(batch_lat[1:], 99))}")
    if len(batch_lat) <= 20:
        print("  batches: " + " ".join(f"{lat * 1000:.0f}" for lat in batch_lat) + " ms")
    ser = serialisation_cost(envelopes[: args.batch_size])
    print(f"  of which pure CPU to serialise one batch (to_json + kafka_key + kafka_headers): {_ms(ser)} "
          f"({ser / min(args.batch_size, args.rows) * 1e6:.1f} us/row)")
    print(f"  peak RSS: {rss_after:.0f} MiB (after building envelopes "
          f"and importing Airflow + the hook: {rss_before:.0f} MiB; publish added {rss_after - rss_before:.0f} MiB)")

    print("  verifying with an independent consumer (fresh group, earliest; not timed) ...")
    problems = verify_ours(envelopes, bootstrap, ours_topic)
    if problems:
        for problem in problems:
            print(f"FAIL: ours: {problem}")
        sys.exit(1)  # main's finally still deletes the topics
    print(f"  verified: {args.rows:,} messages, keys unique and complete, sampled values/headers match")

    if args.skip_peer:
        print("\n--skip-peer: no comparison line")
        return None

    # ---- peer
    print(f"\npeer: Producer(enable.idempotence=true, acks=all), produce()+flush() per record, "
          f"measured on {peer_rows:,} rows")
    peer_measured_s, rec_lat = run_peer(envelopes[:peer_rows], bootstrap, peer_topic)
    peer_rps = peer_rows / peer_measured_s
    peer_s = args.rows / peer_rps
    delivered = topic_message_count(bootstrap, peer_topic)
    if delivered != peer_rows:
        print(f"FAIL: peer: topic holds {delivered} messages, expected {peer_rows}")
        sys.exit(1)
    print(f"  {peer_rows:,} rows in {peer_measured_s:.3f} s = {peer_rps:,.0f} rows/s "
          f"(measured on {peer_rows:,} rows)")
    print(f"  per-record latency (produce + flush): p50 {_ms(percentile(rec_lat, 50))}  "
          f"p99 {_ms(percentile(rec_lat, 99))}  max {_ms(max(rec_lat))}")
    print(f"  peer seconds for {args.rows:,} rows extrapolated: {args.rows:,} / {peer_rps:,.0f} rows/s "
          f"= {peer_s:.1f} s")
    if peer_rows < args.rows and peer_rows > 1:
        # the first record carries the producer's one-time start; rows/s spreads it over every row
        steady = (peer_measured_s - rec_lat[0]) / (peer_rows - 1)
        alt_s = rec_lat[0] + steady * (args.rows - 1)
        print(f"  (for reference: one-time start {_ms(rec_lat[0])} + {args.rows - 1:,} x {steady * 1e3:.3f} ms "
              f"steady = {alt_s:.1f} s, ratio {ours_s / alt_s:.4f}; the bench line uses rows / rows-per-s)")

    # ---- comparison
    speedup = peer_s / ours_s
    print(f"\nours {ours_rps:,.0f} rows/s vs peer {peer_rps:,.0f} rows/s: ours is {speedup:.1f}x faster "
          f"(ratio ours/peer = {ours_s / peer_s:.4f})")
    speed_ok, p99_ok = speedup >= GOAL_SPEEDUP, p99 < GOAL_P99_S
    print(f"goal: >= {GOAL_SPEEDUP:.0f}x faster [{'ok' if speed_ok else 'MISSED'}: {speedup:.1f}x], "
          f"p99 batch latency < {_ms(GOAL_P99_S)} [{'ok' if p99_ok else 'MISSED'}: {_ms(p99)}] -> "
          f"{'goal met' if speed_ok and p99_ok else 'goal NOT met'}")
    return result_line(BENCH_ID, ours_s, peer_s)

if __name__ == "__main__":
    sys.exit(main())
