"""Sessions built by SparkSessionHook carry the package's jars (the JVM COPY writer) on ``spark.jars``, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_etl_provider.hooks import spark as spark_hook
from airflow_etl_provider.hooks.spark import SPARK_JARS_ENV, SparkSessionHook


@pytest.fixture
def jars_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jars"
    folder.mkdir()
    (folder / "airflow-etl-jvm.jar").write_bytes(b"PK")
    monkeypatch.setattr(spark_hook, "PACKAGED_JARS_DIR", folder)
    monkeypatch.delenv(SPARK_JARS_ENV, raising=False)
    return folder


def test_classic_sessions_get_the_packaged_jars(jars_dir: Path) -> None:
    conf = SparkSessionHook(spark_conn_id=None).resolve_conf()
    assert conf["spark.jars"] == str(jars_dir / "airflow-etl-jvm.jar")
    conf = SparkSessionHook(spark_conn_id=None, spark_conf={"spark.jars": "/opt/x.jar"}).resolve_conf()
    assert conf["spark.jars"] == f"/opt/x.jar,{jars_dir / 'airflow-etl-jvm.jar'}"


def test_a_jar_of_the_same_name_already_listed_is_not_added_twice(jars_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv(SPARK_JARS_ENV, "/elsewhere/airflow-etl-jvm.jar,/opt/pg.jar")
    conf = SparkSessionHook(spark_conn_id=None).resolve_conf()
    assert conf["spark.jars"] == "/elsewhere/airflow-etl-jvm.jar,/opt/pg.jar"


def test_spark_connect_sessions_get_no_jars(jars_dir: Path) -> None:
    conf = SparkSessionHook(spark_conn_id=None, spark_conf={"spark.remote": "sc://h:15002"}).resolve_conf()
    assert "spark.jars" not in conf and conf["spark.remote"] == "sc://h:15002"


def test_without_built_jars_nothing_is_added(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spark_hook, "PACKAGED_JARS_DIR", tmp_path / "absent")
    monkeypatch.delenv(SPARK_JARS_ENV, raising=False)
    assert "spark.jars" not in SparkSessionHook(spark_conn_id=None).resolve_conf()
