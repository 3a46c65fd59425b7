"""The load operator's quality_rules gate failing: the run summary names the failed rule, so a quality_failed
notifier fires, and the task still fails with Airflow's AirflowFailException."""

from __future__ import annotations

import pytest

from airflow_etl_provider.core.run_summary import alert_reason

pytestmark = pytest.mark.spark


def test_a_failed_gate_is_in_the_summary(spark, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

    path = tmp_path / "src"
    spark.createDataFrame([(1, "a"), (2, "b")], "id INT, name STRING").write.parquet(str(path))
    op = ResilientSparkLoadOperator(
        task_id="gated",
        source={"format": "parquet", "path": str(path)},
        target={"type": "parquet", "path": str(tmp_path / "out")},
        circuit_breaker=None,
        quality_rules=[{"type": "row_count", "min": 1000}],
        dead_letter={"type": "file", "path": str(tmp_path / "d")},
        metrics=[],
    )
    with pytest.raises(AirflowFailException, match="nothing was loaded"):
        op.execute(context={})
    summary = op.etl_run_summary
    assert summary["outcome"] == "failed" and summary["rows_read"] == 2 and summary["rows_loaded"] == 0
    (rule,) = summary["failed_rules"]
    assert rule.startswith("row_count")
    assert alert_reason(summary, "quality_failed") == "data quality: 1 rule(s) failed"
    assert not (tmp_path / "out").exists()
