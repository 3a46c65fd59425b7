"""Read an operator's ``source`` into a Spark DataFrame, splitting out rows that cannot be parsed.

Source forms (the same for every operator):

* ``{"format": "parquet" | "orc", "path": ...}``
* ``{"format": "csv" | "json", "path": ..., "options": {...}, "schema": "<DDL>"}``: with a schema, rows that
  do not parse are not dropped: Spark's PERMISSIVE mode keeps their raw text in ``_corrupt_record`` and
  they come back as ``corrupt`` (for the dead-letter queue, stage ``parse``)
* ``{"format": "jdbc", "conn_id": "postgres_default", "table": "public.orders"}`` or ``"query": "select ..."``
* ``{"format": "table", "table": "db.orders"}`` (a table of the Spark catalog)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.core.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CORRUPT_COLUMN = "_corrupt_record"
FILE_FORMATS = ("parquet", "orc", "csv", "json")
FORMATS = (*FILE_FORMATS, "jdbc", "table")


@dataclass
class SourceFrames:
    """The rows read: ``data`` (parsed) and ``corrupt`` (a ``_corrupt_record`` raw-text column, or None)."""

    data: DataFrame
    corrupt: DataFrame | None
    description: str


SOURCE_KEYS = ("format", "path", "options", "schema", "conn_id", "table", "query")


def validate_source(source: Mapping[str, Any], field: str = "source") -> None:
    """Check a source's shape without I/O (parse time): raise :class:`ConfigError` naming the field.

    Unknown keys are refused first (a misspelt ``pth`` is named, not reported as a missing ``path``).
    """
    if not isinstance(source, Mapping):
        raise ConfigError(field, "must be a mapping such as {'format': 'parquet', 'path': ...}", value=source)
    unknown = sorted(str(k) for k in source if k not in SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", "unknown key", allowed=SOURCE_KEYS)
    fmt = source.get("format")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ConfigError(f"{field}.format", "is not a supported source format", value=fmt, allowed=FORMATS)
    for key in ("path", "conn_id", "table", "query", "schema"):
        value = source.get(key)
        if value is not None and key != "schema" and not isinstance(value, str):
            raise ConfigError(f"{field}.{key}", "must be a string", value=value)
    schema = source.get("schema")
    if schema is not None and not isinstance(schema, str) and type(schema).__name__ != "StructType":
        raise ConfigError(f"{field}.schema", "must be a DDL string such as 'id INT, name STRING'", value=schema)
    options = source.get("options")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"{field}.options", "must be a mapping of reader options", value=options)
    if fmt in FILE_FORMATS and not source.get("path"):
        raise ConfigError(f"{field}.path", f"is required for format {fmt!r}")
    if fmt == "jdbc" and not (source.get("table") or source.get("query")):
        raise ConfigError(f"{field}.table", "a jdbc source needs 'table' or 'query'")
    if fmt == "table" and not source.get("table"):
        raise ConfigError(f"{field}.table", "is required for format 'table'")


def read_source(spark: SparkSession, source: Mapping[str, Any], schema: Any = None) -> SourceFrames:
    """Read ``source``; rows that cannot be parsed (CSV/JSON with a schema) come back in ``corrupt``.

    :param spark: the session.
    :param source: the source config (see the module docstring).
    :param schema: an expected schema (DDL string or StructType) used when the source has none.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    validate_source(source)
    fmt = source["format"]
    options = {str(k): str(v) for k, v in (source.get("options") or {}).items()}
    if fmt == "jdbc":
        from airflow_etl_provider.hooks.postgres import SparkPostgresHook

        pg = SparkPostgresHook(postgres_conn_id=source.get("conn_id") or "postgres_default")
        key = "dbtable" if source.get("table") else "query"
        df = spark.read.format("jdbc").options(**pg.jdbc_options(**{key: source.get("table") or source["query"]},
                                                                 **options)).load()
        return SourceFrames(df, None, f"jdbc:{source.get('conn_id') or 'postgres_default'}:"
                                      f"{source.get('table') or 'query'}")
    if fmt == "table":
        return SourceFrames(spark.table(source["table"]), None, f"table:{source['table']}")

    reader = spark.read.format(fmt).options(**options)
    declared = source.get("schema") or schema
    corrupt = None
    if fmt in ("csv", "json") and declared is not None:
        struct = declared if isinstance(declared, StructType) else StructType.fromDDL(declared)
        if CORRUPT_COLUMN not in struct.fieldNames():
            struct = StructType([*struct.fields, StructField(CORRUPT_COLUMN, StringType(), True)])
        raw = (reader.schema(struct).option("mode", "PERMISSIVE")
               .option("columnNameOfCorruptRecord", CORRUPT_COLUMN).load(source["path"]))
        raw = raw.cache()  # Spark refuses queries on only the corrupt column of an uncached raw file
        data = raw.where(F.col(CORRUPT_COLUMN).isNull()).drop(CORRUPT_COLUMN)
        corrupt = raw.where(F.col(CORRUPT_COLUMN).isNotNull()).select(CORRUPT_COLUMN)
    else:
        if declared is not None:
            reader = reader.schema(declared)
        data = reader.load(source["path"])
    return SourceFrames(data, corrupt, f"{fmt}:{source['path']}")
