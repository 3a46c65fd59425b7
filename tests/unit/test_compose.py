"""docker-compose.yaml stays valid and in step with the services the Makefile starts natively."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def _native_services() -> list[str]:
    out = subprocess.run([str(ROOT / "scripts/stack.sh"), "services"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_every_native_service_has_a_compose_counterpart() -> None:
    labelled = {
        (svc.get("labels") or {}).get("etl.native-service")
        for svc in _compose()["services"].values()
    }
    native = _native_services()
    assert {"postgres", "kafka", "s3", "pushgateway", "spark-connect", "spark-standalone"} <= set(native)
    assert set(native) <= labelled, f"no compose counterpart for {set(native) - labelled}"


def test_compose_has_the_airflow_3_services_and_connections() -> None:
    services = _compose()["services"]
    for name in ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "prometheus"):
        assert name in services, name
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for conn in ("POSTGRES_DEFAULT", "POSTGRES_OUTAGE", "KAFKA_DEFAULT", "AWS_DEFAULT", "SPARK_DEFAULT"):
        assert f"AIRFLOW_CONN_{conn}" in env


def test_compose_airflow_settings_match_the_native_deployment() -> None:
    """The settings scripts/stack.sh gives the native Airflow (auth, shared JWT secret, unpaused DAGs) are the
    compose ones too."""
    env = _compose()["services"]["airflow-apiserver"]["environment"]
    native = (ROOT / "scripts/stack.sh").read_text()
    for key in ("AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
                "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "AIRFLOW_ETL_DEMO_DATA", "AIRFLOW_ETL_REPORT_DIR"):
        assert key in env, key
        assert f"export {key}=" in native, key
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"


def test_compose_uses_images_that_can_still_be_pulled() -> None:
    images = [svc.get("image", "") for svc in _compose()["services"].values()]
    assert not [i for i in images if i.startswith(("bitnami/", "minio/minio"))]
    assert any(i.startswith("apache/kafka:4.") for i in images)
    for ref in ("docker/Dockerfile", "docker/spark-connect.Dockerfile", "docker/prometheus.yml"):
        assert (ROOT / ref).is_file(), ref
