"""StreamingWatermarkOperator: orders from Kafka, 5-minute windows per customer into PostgreSQL, late rows to a DLQ.

``produce_orders`` sends ``events`` order events to the Kafka topic ``example.orders.events``, event times
spread over the last 5 minutes and out of order (within the 10-minute lateness); ``late_share`` of them are two
hours old. ``orders_per_5min``
then processes everything that arrived since its last run (``trigger="available_now"``) and stops:

* each (order, 5-minute window) is judged with the watermark recorded after the previous micro-batch (the
  newest event time seen minus the 10-minute lateness): a window that ended at or before it is **late**, and
  the order goes to the Kafka topic ``example.orders.late`` with its event time, the watermark and how late it
  was; every other order is aggregated (sum, avg, min, max, count, approximate distinct orders);
* a window is written to ``public.orders_5min`` once, when the watermark passes its end (``append``);
* each micro-batch, its window state and its ledger row commit in one PostgreSQL transaction: a re-run or a
  replayed batch never counts an order twice.

The first run has no watermark yet (nothing is late); from the second run on, the two-hour-old orders are late.
The XCom result says how many orders came in, were aggregated, were late, and which windows were written.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import Param, dag, task

from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

DATA_DIR = os.environ.get("AIRFLOW_ETL_DEMO_DATA", os.path.join(os.getcwd(), ".local", "demo"))
TOPIC = "example.orders.events"


@dag(
    dag_id="example_streaming",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["airflow-etl-provider", "example", "streaming"],
    default_args={"owner": "data-platform"},
    doc_md=__doc__,
    params={
        "events": Param(5000, type="integer", minimum=1, maximum=1_000_000, title="Events to produce"),
        "late_share": Param(0.01, type="number", minimum=0, maximum=1, title="Share of two-hour-old events"),
    },
)
def example_streaming() -> None:
    @task
    def produce_orders(params: dict | None = None) -> dict:
        import json
        import random
        from datetime import UTC, timedelta

        from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook
        from confluent_kafka import Producer

        params = params or {}
        n, late_share = int(params.get("events", 5000)), float(params.get("late_share", 0.01))
        config = KafkaBaseHook(kafka_config_id="kafka_default")._build_config()
        producer = Producer({k: v for k, v in config.items() if k not in ("group.id", "auto.offset.reset")})
        now, rng = datetime.now(UTC), random.Random()
        late = 0
        for i in range(n):
            old = rng.random() < late_share
            late += old
            at = now - (timedelta(hours=2) if old else timedelta(seconds=rng.uniform(0, 300)))
            event = {"order_id": f"{now:%H%M%S}-{i}", "customer": f"c{rng.randrange(20)}",
                     "amount": f"{rng.uniform(1, 500):.2f}", "event_time": at.strftime("%Y-%m-%dT%H:%M:%S.%f")}
            producer.produce(TOPIC, value=json.dumps(event).encode())
            if i % 1000 == 999:
                producer.poll(0)
        if producer.flush(60) != 0:
            raise RuntimeError("Kafka did not confirm every event within 60 s")
        return {"produced": n, "two_hours_old": late}

    stream = StreamingWatermarkOperator(
        task_id="orders_per_5min",
        source={"type": "kafka", "conn_id": "kafka_default", "topic": TOPIC, "starting_offsets": "earliest",
                "format": "json", "schema": "order_id STRING, customer STRING, amount DECIMAL(12,2), event_time TIMESTAMP"},
        event_time_column="event_time",
        watermark="10 minutes",
        window={"type": "tumbling", "duration": "5 minutes"},
        group_by=["customer"],
        aggregations={"amount": ["sum", "avg", "min", "max"], "*": ["count"], "order_id": ["approx_count_distinct"]},
        sink={"type": "postgres", "conn_id": "postgres_default", "table": "public.orders_5min"},
        output_mode="append",
        checkpoint_location=os.path.join(DATA_DIR, "checkpoints", "orders_per_5min"),
        trigger="available_now",
        late_data={"dead_letter": {"type": "kafka", "conn_id": "kafka_default", "topic": "example.orders.late"}},
    )

    produce_orders() >> stream


example_streaming()
