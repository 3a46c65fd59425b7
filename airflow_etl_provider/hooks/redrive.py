"""Redrive: read dead letters back into a DataFrame with the original columns restored.

Sources: a Kafka topic range (Spark's Kafka source, read on the executors), or the objects of an S3
or file DLQ (listed on the driver, read on the executors). The result has the original record's
columns, typed by ``schema`` (a DDL string or StructType, for example the target table's), followed
by ``_dlq_*`` columns describing each dead letter, so fixed rows can be filtered, repaired and reloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.executor.dead_letter import (
    OBJECT_READER_SCHEMA,
    KafkaSink,
    _BlobSink,
    object_reader,
)
from airflow_etl_provider.hooks.dead_letter import DeadLetterHook

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

#: The envelope fields a redriven DataFrame carries, as ``_dlq_<field>`` columns.
DLQ_COLUMNS: tuple[str, ...] = (
    "envelope_id", "timestamp", "pipeline_id", "stage", "error_class", "error_message", "failed_rules",
    "attempt", "dag_id", "task_id", "run_id", "try_number", "source", "target", "record_key",
)

_ENVELOPE_DDL = (
    "envelope_id STRING, timestamp STRING, pipeline_id STRING, stage STRING, error_class STRING, "
    "error_message STRING, failed_rules ARRAY<STRING>, attempt INT, dag_id STRING, task_id STRING, "
    "run_id STRING, try_number INT, source STRING, target STRING, record_key STRING"
)

# librdkafka settings that Spark's (Java) Kafka source understands under the same name.
_JAVA_KAFKA_KEYS = ("bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.jaas.config",
                    "ssl.truststore.location", "ssl.truststore.password", "client.dns.lookup")


def envelope_json_frame(
    spark: SparkSession,
    hook: DeadLetterHook,
    *,
    starting_offsets: str = "earliest",
    ending_offsets: str = "latest",
    prefix: str | None = None,
) -> DataFrame:
    """A one-column DataFrame (``value``: envelope JSON, ``_dlq_location``: where it was read).

    :param spark: the session.
    :param hook: the DLQ to read.
    :param starting_offsets: Kafka: ``earliest`` or Spark's per-partition JSON, e.g. ``{"t":{"0":5}}``.
    :param ending_offsets: Kafka: ``latest`` or per-partition JSON (exclusive).
    :param prefix: S3/file: read only below this key prefix / directory (default: the DLQ's prefix).
    """
    from pyspark.sql import functions as F

    sink = hook.sink
    if isinstance(sink, KafkaSink):
        reader = spark.read.format("kafka")
        for key in _JAVA_KAFKA_KEYS:
            if key in sink.producer_config:
                reader = reader.option(f"kafka.{key}", str(sink.producer_config[key]))
        raw = (reader.option("subscribe", sink.topic).option("startingOffsets", starting_offsets)
               .option("endingOffsets", ending_offsets).load())
        return raw.select(
            F.col("value").cast("string").alias("value"),
            F.concat_ws(":", F.col("topic"), F.col("partition").cast("string"),
                        F.col("offset").cast("string")).alias("_dlq_location"),
        )
    assert isinstance(sink, _BlobSink)
    keys = sink.list_keys(prefix)
    if not keys:
        return spark.createDataFrame([], "value STRING, _dlq_location STRING")
    keys_df = spark.createDataFrame([(k,) for k in keys], "key STRING").repartition(min(len(keys), 64))

    return keys_df.mapInArrow(object_reader(sink), OBJECT_READER_SCHEMA)


def read_dead_letters(
    spark: SparkSession,
    dead_letter: DeadLetterHook | Mapping[str, Any],
    *,
    schema: str | StructType | None = None,
    starting_offsets: str = "earliest",
    ending_offsets: str = "latest",
    prefix: str | None = None,
    pipeline_id: str = "redrive",
) -> DataFrame:
    """Read dead letters into a DataFrame: the original columns, then ``_dlq_*`` columns.

    :param spark: the session.
    :param dead_letter: a :class:`DeadLetterHook` or a DLQ config dict.
    :param schema: the original rows' schema (DDL string or StructType). Without it the schema is
        inferred from one dead letter with ``schema_of_json`` (numbers become BIGINT/DOUBLE, decimals and
        timestamps strings): pass the target table's schema to reload exactly.
    :param starting_offsets: Kafka range start (see :func:`envelope_json_frame`).
    :param ending_offsets: Kafka range end.
    :param prefix: S3/file prefix to read below.
    :param pipeline_id: only used to build a hook from a config dict.
    """
    from pyspark.sql import functions as F

    hook = dead_letter if isinstance(dead_letter, DeadLetterHook) else DeadLetterHook(dead_letter, pipeline_id)
    frame = envelope_json_frame(spark, hook, starting_offsets=starting_offsets,
                                ending_offsets=ending_offsets, prefix=prefix)
    frame = frame.select(
        F.get_json_object("value", "$.record").alias("_record_json"),
        F.from_json("value", _ENVELOPE_DDL).alias("_env"),
        "_dlq_location",
    )
    if schema is None:
        sample = frame.select("_record_json").where(F.col("_record_json").isNotNull()).limit(1).collect()
        if not sample:
            return spark.createDataFrame([], _ENVELOPE_DDL.replace("envelope_id", "_dlq_envelope_id"))
        schema = spark.range(1).select(F.schema_of_json(F.lit(sample[0][0]))).first()[0]
    restored = F.from_json("_record_json", schema, {"mode": "PERMISSIVE"}).alias("_rec")
    dlq_cols = [F.col(f"_env.{c}").alias(f"_dlq_{c}") for c in DLQ_COLUMNS]
    return frame.select(restored, *dlq_cols, "_dlq_location").select("_rec.*", *[f"_dlq_{c}" for c in DLQ_COLUMNS],
                                                                     "_dlq_location")


def original_columns(df: DataFrame) -> Sequence[str]:
    """The columns of a redriven DataFrame that came from the original rows."""
    return [c for c in df.columns if not c.startswith("_dlq_")]
