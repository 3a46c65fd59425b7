"""The metrics layer's pure part: catalogue, recorder, results -> points, backend config, bounded dispatch,
CloudWatch request shaping (checked with botocore's own serializers)."""

from __future__ import annotations

import threading

import pytest

from airflow_etl_provider.core.cloudwatch_batches import (
    MAX_DATA_PER_REQUEST,
    MAX_REQUEST_BYTES,
    MAX_VALUES_PER_DATUM,
    batches,
    metric_data,
)
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.metrics import (
    CATALOG,
    BackendSpec,
    InMemoryReporter,
    MetricPoint,
    MetricsRecorder,
    MetricsReporter,
    emit_all,
    parse_backends,
    record_load_result,
    record_quality_result,
    record_streaming_result,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recorder_tags_every_point_with_the_base_labels_and_refuses_unknown_names() -> None:
    rec = MetricsRecorder("dag", "task", "orders")
    rec.add("etl_rows_dead_lettered", 3, stage="load", error_class="NotNullViolation")
    (point,) = rec.points
    assert point.labels == {
        "dag_id": "dag",
        "task_id": "task",
        "pipeline": "orders",
        "stage": "load",
        "error_class": "NotNullViolation",
    }
    assert point.kind == "counter"
    with pytest.raises(KeyError):
        rec.add("etl_no_such_metric", 1)
    with pytest.raises(KeyError):
        rec.add("etl_rows_read", 1, stage="load")  # etl_rows_read declares no stage label


def test_stage_durations_come_from_the_clock() -> None:
    clock = FakeClock()
    rec = MetricsRecorder("d", "t", None, clock=clock)
    rec.start_stage("read")
    clock.now += 2.5
    assert rec.end_stage("read") == 2.5
    rec.start_stage("merge")
    assert rec.open_stages() == ["merge"]
    assert rec.value("etl_stage_duration_seconds", stage="read") == 2.5
    assert rec.points[0].labels["pipeline"] == "adhoc"


def test_load_result_points_add_up_to_the_result() -> None:
    result = {
        "records_read": 120,
        "records_loaded": 100,
        "records_dead_lettered": 20,
        "attempts": 3,
        "circuit_state": "closed",
        "errors": {
            "NotNullViolation": {"count": 12, "example": "x"},
            "CorruptRecord": {"count": 5, "example": "y"},
            "QualityRuleFailed": {"count": 3, "example": "z"},
        },
        "quality": {"failed_rules": {"not_null(email)": 3}},
    }
    rec = MetricsRecorder("d", "t", "p")
    record_load_result(rec, result, breaker="postgres_default")
    assert rec.value("etl_rows_read") == result["records_read"]
    assert rec.value("etl_rows_dead_lettered") == result["records_dead_lettered"]
    assert rec.value("etl_rows_dead_lettered", stage="parse") == result["errors"]["CorruptRecord"]["count"]
    assert (
        rec.value("etl_rows_dead_lettered", stage="quality") == result["errors"]["QualityRuleFailed"]["count"]
    )
    assert rec.value("etl_rows_quarantined") == result["errors"]["QualityRuleFailed"]["count"]
    assert rec.value("etl_circuit_state", breaker="postgres_default") == 0
    assert rec.value("etl_rule_failing_rows", rule="not_null(email)") == 3


def test_load_result_without_errors_still_has_a_dead_letter_series_at_zero() -> None:
    rec = MetricsRecorder("d", "t", "p")
    record_load_result(
        rec, {"records_read": 5, "records_loaded": 5, "records_dead_lettered": 0, "errors": {}}
    )
    (dead,) = [p for p in rec.points if p.name == "etl_rows_dead_lettered"]
    assert dead.value == 0 and dead.labels["error_class"] == "none"


def test_quality_and_streaming_results() -> None:
    rules = [
        {
            "name": "not_null(email)",
            "status": "fail",
            "failing_rows": 7,
            "action_taken": "quarantined 7 row(s)",
        },
        {"name": "range(amount)", "status": "warn", "failing_rows": 2},
        {"name": "unique(id)", "status": "pass", "failing_rows": 0},
    ]
    rec = MetricsRecorder("d", "t", "p")
    record_quality_result(rec, {"records_read": 50, "records_quarantined": 7, "report": {"rules": rules}})
    assert [rec.value("etl_rule_status", rule=r["name"]) for r in rules] == [2, 1, 0]
    assert rec.value("etl_rows_dead_lettered", stage="quality") == 7
    stream = MetricsRecorder("d", "t", "p")
    record_streaming_result(
        stream,
        {
            "input_rows": 10,
            "output_rows": 3,
            "batches": 2,
            "late_rows": 4,
            "batch_durations_s": [1.5, 0.5],
            "watermark_lag_s": 30.0,
        },
        late_to_dlq=True,
    )
    durations = [p.value for p in stream.points if p.name == "etl_stream_batch_duration_seconds"]
    assert durations == [1.5, 0.5]
    assert stream.value("etl_watermark_lag_seconds") == 30.0
    assert stream.value("etl_rows_dead_lettered", stage="late_data") == stream.value("etl_late_rows") == 4


def test_every_catalogue_metric_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in CATALOG if f"`{name}`" not in readme]
    assert not missing, missing


# ------------------------------------------------------------------------------------ configuration
def test_backend_config_forms() -> None:
    assert parse_backends(None) == ()
    assert parse_backends("") == ()
    assert parse_backends("none") == ()
    assert parse_backends("airflow_stats, pushgateway") == (
        BackendSpec("airflow_stats"),
        BackendSpec("pushgateway"),
    )
    assert parse_backends('[{"type": "cloudwatch", "namespace": "X"}]') == (
        BackendSpec("cloudwatch", {"namespace": "X"}),
    )
    assert parse_backends([{"type": "pushgateway", "url": "http://127.0.0.1:9091", "timeout_s": 2}])[
        0
    ].options == {"url": "http://127.0.0.1:9091", "timeout_s": 2}


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (["statsd"], "metrics[0]"),
        ([{"type": "pushgateway", "adress": "x"}], "metrics[0].adress"),
        ([{"type": "pushgateway", "url": "127.0.0.1:9091"}], "metrics[0].url"),
        ([{"type": "pushgateway", "timeout_s": 0}], "metrics[0].timeout_s"),
        ([{"type": "cloudwatch", "timeout_s": True}], "metrics[0].timeout_s"),
        ({"type": "pushgateway"}, "metrics"),
        ("[not json", "metrics"),
    ],
)
def test_bad_backend_config_names_the_field(value: object, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_backends(value)
    assert err.value.path == field


# ------------------------------------------------------------------------------------ bounded dispatch
class Failing(MetricsReporter):
    name = "failing"

    def emit(self, points):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("connection refused")


class Stuck(MetricsReporter):
    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()

    def emit(self, points):  # type: ignore[no-untyped-def]
        self.release.wait(60)
        return "late"


def test_a_failing_or_stuck_backend_costs_one_warning_and_the_others_still_get_the_points() -> None:
    rec = MetricsRecorder("d", "t", "p")
    rec.add("etl_rows_read", 10)
    memory, stuck, warnings = InMemoryReporter(), Stuck(), []
    deliveries = emit_all([Failing(), stuck, memory], rec.points, timeout_s=0.5, warn=warnings.append)
    stuck.release.set()
    assert [(d.reporter, d.ok) for d in deliveries] == [
        ("failing", False),
        ("stuck", False),
        ("memory", True),
    ]
    assert "ConnectionRefusedError" in deliveries[0].detail
    assert deliveries[1].detail == "timed out after 0.5 s"
    assert len(warnings) == 2
    assert memory.points == rec.points


# ------------------------------------------------------------------------------------ CloudWatch shaping
def _points(n_series: int, n_timings: int) -> list[MetricPoint]:
    rec = MetricsRecorder("dag", "task", "pipe")
    for i in range(n_series):
        rec.add("etl_rule_failing_rows", i, rule=f"rule_{i:05d}_" + "x" * 200, status="fail")
    for i in range(n_timings):
        rec.add("etl_stream_batch_duration_seconds", i / 10)
    return rec.points


def test_timings_are_split_into_values_lists_of_at_most_150() -> None:
    data = metric_data(_points(0, 400))
    assert [len(d["Values"]) for d in data] == [150, 150, 100]
    assert sum((d["Values"] for d in data), []) == [i / 10 for i in range(400)]
    assert data[0]["Unit"] == "Seconds"


def test_counters_sum_gauges_keep_the_last_value_and_empty_labels_are_no_dimension() -> None:
    rec = MetricsRecorder("d", "t", "p")
    rec.add("etl_rows_read", 2)
    rec.add("etl_rows_read", 3)
    rec.add("etl_watermark_lag_seconds", 9)
    rec.add("etl_watermark_lag_seconds", 4)
    rec.add("etl_rule_status", 1, rule="r")
    data = {d["MetricName"]: d for d in metric_data(rec.points)}
    assert data["etl_rows_read"]["Value"] == 5 and data["etl_rows_read"]["Unit"] == "Count"
    assert data["etl_watermark_lag_seconds"]["Value"] == 4
    assert {x["Name"] for x in data["etl_rows_read"]["Dimensions"]} == {"dag_id", "task_id", "pipeline"}


def test_more_than_30_dimensions_is_refused() -> None:
    point = MetricPoint("etl_rows_read", "counter", 1.0, {f"l{i}": "v" for i in range(31)})
    with pytest.raises(ValueError, match="30"):
        metric_data([point])


@pytest.mark.parametrize("protocol", ["smithy-rpc-v2-cbor", "json", "query"])
def test_batches_stay_within_1000_data_and_1_mb_in_every_protocol_botocore_speaks(protocol: str) -> None:
    import botocore.session
    from botocore.serialize import create_serializer

    data = metric_data(_points(4500, 1000))
    requests = batches(data)
    assert sum(len(r) for r in requests) == len(data)
    assert [d for r in requests for d in r] == data  # order kept, nothing lost
    assert all(len(r) <= MAX_DATA_PER_REQUEST for r in requests)
    assert all(len(d.get("Values", ())) <= MAX_VALUES_PER_DATUM for d in data)
    model = botocore.session.get_session().get_service_model("cloudwatch").operation_model("PutMetricData")
    serializer = create_serializer(protocol)
    sizes = [
        len(serializer.serialize_to_request({"Namespace": "AirflowETL", "MetricData": r}, model)["body"])
        for r in requests
    ]
    assert max(sizes) <= MAX_REQUEST_BYTES


def test_a_small_byte_budget_makes_more_requests() -> None:
    data = metric_data(_points(50, 0))
    small = batches(data, max_bytes=5_000)
    assert len(small) > 1 and sum(len(r) for r in small) == 50
    with pytest.raises(ValueError, match="bytes"):
        batches(data, max_bytes=100)
