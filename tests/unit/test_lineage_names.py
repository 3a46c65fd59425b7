"""OpenLineage dataset names (pure)."""

from __future__ import annotations

import os

from airflow_etl_provider.core.lineage import kafka_dataset, path_dataset, postgres_dataset


def test_names_follow_the_openlineage_naming_spec() -> None:
    assert postgres_dataset("db:5432", "etl", "public.orders") == ("postgres://db:5432", "etl.public.orders")
    assert postgres_dataset("db:5432", "etl", '"Orders"') == ("postgres://db:5432", "etl.public.Orders")
    assert kafka_dataset("b1:9092,b2:9092", "orders.dlq") == ("kafka://b1:9092", "orders.dlq")
    assert kafka_dataset("PLAINTEXT://b1:9092", "t") == ("kafka://b1:9092", "t")
    assert path_dataset("s3a://bucket/data/orders/") == ("s3://bucket", "data/orders/")
    assert path_dataset("/data/x") == ("file", "/data/x")
    assert path_dataset("file:///data/x") == ("file", "/data/x")
    assert path_dataset("rel/dir") == ("file", os.path.abspath("rel/dir"))
    assert path_dataset("hdfs://nn:8020/a/b") == ("hdfs://nn:8020", "/a/b")
