"""The seed config's dead-letter shape (settings nested under ``config``) for S3 and files, end to end: a load
whose rows PostgreSQL refuses writes its dead letters where the nested config says (issue 14)."""

from __future__ import annotations

import gzip
import json

import pytest

from airflow_etl_provider.operators.load import ResilientSparkLoadOperator

pytestmark = pytest.mark.spark


def _pg():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id="postgres_default")


def _load_with_refused_rows(tmp_path, unique: str, name: str, dead_letter: dict) -> dict:
    """Six rows into a table whose CHECK refuses qty < 0 (ids 2 and 5): two dead letters."""
    table = f"public.seed_{name}_{unique}"
    _pg().run(f"create table {table} (id int primary key, qty int check (qty >= 0))")
    src = tmp_path / f"{name}.csv"
    src.write_text("id,qty\n1,1\n2,-2\n3,3\n4,4\n5,-5\n6,6\n")
    try:
        return ResilientSparkLoadOperator(
            task_id=f"load_{name}",
            source={
                "format": "csv",
                "path": str(src),
                "options": {"header": "true"},
                "schema": "id INT, qty INT",
            },
            target={"type": "postgres", "table": table, "mode": "append", "load_id": f"seed-{name}-{unique}"},
            dead_letter=dead_letter,
            circuit_breaker=None,
        ).execute(context={})
    finally:
        _pg().run(f"drop table {table}")


def _refused_ids(letters: list[dict]) -> list[int]:
    return sorted(e["record"]["id"] for e in letters)


def test_file_dlq_nested_under_config_receives_the_dead_letters(spark, tmp_path, unique) -> None:
    where = tmp_path / "nested-dlq"
    result = _load_with_refused_rows(
        tmp_path, unique, "file", {"type": "file", "config": {"path": str(where)}}
    )
    assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (6, 4, 2)
    letters = [
        json.loads(line)
        for f in where.rglob("*.jsonl.gz")
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    assert _refused_ids(letters) == [2, 5]
    assert {e["error_class"] for e in letters} == {"psycopg.errors.CheckViolation"}
    assert str(where) in result["dead_letter_location"]


def test_s3_dlq_nested_under_config_receives_the_dead_letters(spark, tmp_path, unique) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    bucket = f"seed-dlq-{unique}"
    s3.create_bucket(bucket_name=bucket)
    dead_letter = {"type": "s3", "config": {"bucket": bucket, "prefix": "nested/prefix"}}
    result = _load_with_refused_rows(tmp_path, unique, "s3", dead_letter)
    assert (result["records_read"], result["records_loaded"], result["records_dead_lettered"]) == (6, 4, 2)
    keys = s3.list_keys(bucket_name=bucket)
    assert keys and all(k.startswith("nested/prefix/") for k in keys), keys
    letters = [
        json.loads(line)
        for key in keys
        for line in gzip.decompress(s3.get_key(key, bucket_name=bucket).get()["Body"].read()).splitlines()
    ]
    assert _refused_ids(letters) == [2, 5]
    assert bucket in result["dead_letter_location"]
