"""Kafka dead letters published inside Spark's JVM: the driver half.

``DeadLetterHook.publish_dataframe`` hands a DataFrame of failed rows to Spark. On the Python path
(:func:`~airflow_etl_provider.executor.dead_letter.partition_publisher` in ``mapInArrow``) every row crosses
to a Python worker, is built into its message (~8 us) and produced with confluent-kafka (~9 us with its 12
headers): ~40k envelopes/s per partition here, and the cores saturate before two partitions go faster
(``benchmarks/bench_dlq_kafka.py``). ``KafkaDeadLetterPublisher`` (``jvm/src/airflow_etl_provider/jvm``)
builds the same messages, byte for byte, from Spark's internal rows and sends them with Kafka's Java
producer; this module decides whether it can run and hands it everything that is the same for the whole
publish (the envelope template, the id's prefix, the constant headers), computed by the same
:class:`~airflow_etl_provider.executor.arrow_envelopes.KafkaMessageBuilder` the Python path uses.

The JVM path runs when: the session is classic (not Spark Connect) and has ``airflow-etl-jvm.jar`` and
``kafka-clients`` (``SparkSessionHook`` puts both on ``spark.jars``); every record column has a type it renders
(strings, integers, booleans, decimals of scale 0-6, dates, timestamps, binary; not floating point, not nested);
the error and error-class columns are strings and the failed-rules column (quality quarantine) an array of
strings; every producer setting has a Java equivalent (:func:`java_producer_config`). Otherwise the Python path
runs, with the reason logged (or, for ``writer="jvm"``, an error naming it).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_etl_provider.core.envelope import (
    HEADER_PREFIX,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_HEADER_MESSAGE_CHARS,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from airflow_etl_provider.core.envelope import RunContext
    from airflow_etl_provider.executor.sinks import KafkaSink

log = logging.getLogger(__name__)

PUBLISHER_CLASS = "airflow_etl_provider.jvm.KafkaDeadLetterPublisher"
PRODUCER_CLASS = "org.apache.kafka.clients.producer.KafkaProducer"

#: librdkafka settings with the same name and meaning in Kafka's Java producer
_SAME_SETTINGS = ("bootstrap.servers", "acks", "enable.idempotence", "linger.ms", "compression.type", "client.id",
                  "batch.size", "request.timeout.ms", "retry.backoff.ms", "max.in.flight.requests.per.connection")
#: librdkafka settings spelled differently in the Java producer, with the same meaning
_RENAMED = {"socket.timeout.ms": "request.timeout.ms", "queue.buffering.max.ms": "linger.ms",
            "message.send.max.retries": "retries", "retries": "retries"}
#: librdkafka settings that only tune librdkafka's own queue, batching or logging: nothing to translate
_LIBRDKAFKA_ONLY = ("queue.buffering.max.messages", "queue.buffering.max.kbytes", "batch.num.messages", "log_level",
                    "statistics.interval.ms")
#: settings for the Java producer unless the dead-letter config sets them (the sink's defaults suit librdkafka):
#: 1 MiB batches and 10 ms linger gave 100-130k envelopes/s warm here, 16 KiB / 2 ms (Java's default batch, our
#: librdkafka linger) 45-55k/s (benchmarks/bench_dlq_kafka.py)
JAVA_TUNING = {"batch.size": 1048576, "linger.ms": 10}
_BOOLEAN = {"true": "true", "false": "false", "1": "true", "0": "false"}

#: Spark type name -> the publisher's kind letter (decimals only of scale 0-6: see _decimal_kind)
_KINDS = {"string": "s", "byte": "i", "short": "i", "integer": "i", "long": "i", "boolean": "B", "date": "D",
          "timestamp": "T", "timestamp_ntz": "L", "binary": "b"}


def java_producer_config(librdkafka: Mapping[str, Any]) -> dict[str, str] | str:
    """Kafka's Java producer settings for a librdkafka producer config (``KafkaSink``'s, defaults included), or
    the reason there are none (a setting without a Java equivalent here: security, for one, is spelled
    differently).

    ``message.timeout.ms`` becomes ``delivery.timeout.ms`` and bounds the wait for the topic's metadata
    (``max.block.ms``); ``request.timeout.ms`` is kept below it, as the Java producer requires.

    :param librdkafka: the librdkafka settings.
    """
    java: dict[str, str] = {}
    for key, value in librdkafka.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if key in _SAME_SETTINGS:
            java[key] = _BOOLEAN.get(text.lower(), text) if key == "enable.idempotence" else text
        elif key == "message.timeout.ms":
            java["delivery.timeout.ms"] = text
        elif key in _RENAMED:
            java[_RENAMED[key]] = text
        elif key == "security.protocol" and text.lower() == "plaintext":
            java[key] = "PLAINTEXT"
        elif key in _LIBRDKAFKA_ONLY:
            continue
        else:
            return f"the producer setting {key!r} has no Java producer equivalent here"
    if "bootstrap.servers" not in java:
        return "no bootstrap.servers"
    delivery = int(java.get("delivery.timeout.ms", "120000"))
    linger = int(java.get("linger.ms", "5"))
    request = min(int(java.get("request.timeout.ms", "30000")), max(1, delivery - linger))
    java["request.timeout.ms"] = str(request)
    java["delivery.timeout.ms"] = str(max(delivery, linger + request))
    java.setdefault("max.block.ms", str(delivery))
    return java


def sink_java_config(sink: KafkaSink) -> dict[str, str] | str:
    """The Java producer settings the JVM writer uses for ``sink`` (its librdkafka settings, defaults included,
    plus :data:`JAVA_TUNING` where the user set nothing), or why there are none (see :func:`java_producer_config`).

    :param sink: the Kafka sink.
    """
    tuning = {k: v for k, v in JAVA_TUNING.items() if k not in sink.producer_config}
    return java_producer_config({**sink._config(), **tuning})


def record_kinds(fields: Sequence[tuple[str, str, int | None]]) -> str | list[str]:
    """The publisher's kind letter of each record column, or why one cannot be rendered on the JVM.

    :param fields: ``(name, Spark type name, decimal scale or None)`` of each record column.
    """
    kinds = []
    for name, type_name, scale in fields:
        if type_name == "decimal" and scale is not None and 0 <= scale <= 6:
            kinds.append("n")
        elif type_name in _KINDS:
            kinds.append(_KINDS[type_name])
        else:
            return f"column {name!r} is {type_name}{'' if scale is None else f' of scale {scale}'}"
    return kinds


def _type_name(data_type: Any) -> tuple[str, int | None]:
    from pyspark.sql.types import DecimalType

    if isinstance(data_type, DecimalType):
        return "decimal", data_type.scale
    return data_type.typeName(), None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _is_string_array(data_type: Any) -> bool:
    from pyspark.sql.types import ArrayType, StringType

    return isinstance(data_type, ArrayType) and isinstance(data_type.elementType, StringType)


def jvm_unavailable(spark: Any) -> str | None:
    """Why the JVM publisher cannot run in this session (``None``: it can)."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        return "a Spark Connect session (no JVM in the client)"
    from airflow_etl_provider.hooks.spark import jvm_class

    if jvm_class(jvm, PUBLISHER_CLASS) is None:
        return ("airflow-etl-jvm.jar is not on spark.jars (make jvm-jar builds it into airflow_etl_provider/jars, "
                "which sessions built by SparkSessionHook put there)")
    if jvm_class(jvm, PRODUCER_CLASS) is None:
        return "kafka-clients is not on spark.jars (make spark-jars fetches it into .local/jars)"
    return None


class JvmPublish:
    """One publish of a DataFrame's failed rows on the JVM: :meth:`plan` checks it can run, :meth:`run` runs it.

    :param failed: the failed rows (original columns plus the error columns).
    :param sink: the Kafka sink (topic and librdkafka producer settings).
    :param error_columns: the (error, error class, failed rules) column names.
    """

    def __init__(self, failed: DataFrame, sink: KafkaSink, error_columns: tuple[str, str, str]) -> None:
        self.failed = failed
        self.sink = sink
        self.error_columns = error_columns
        self.producer_config: dict[str, str] = {}
        self.kinds: list[str] = []

    def unavailable(self) -> str | None:
        """Why this publish cannot run on the JVM (``None``: it can). Touches no executor."""
        error_col, class_col, rules_col = self.error_columns
        fields = self.failed.schema.fields
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            return "duplicate column names"
        for meta in (error_col, class_col):
            if meta in names and _type_name(fields[names.index(meta)].dataType)[0] != "string":
                return f"column {meta!r} is not a string"
        if rules_col in names and not _is_string_array(fields[names.index(rules_col)].dataType):
            return f"column {rules_col!r} is not an array of strings"
        kinds = record_kinds([(f.name, *_type_name(f.dataType)) for f in fields if f.name not in self.error_columns])
        if isinstance(kinds, str):
            return kinds
        config = sink_java_config(self.sink)
        if isinstance(config, str):
            return config
        reason = jvm_unavailable(self.failed.sparkSession)
        if reason is not None:
            return reason
        self.kinds, self.producer_config = kinds, config
        return None

    def run(self, *, spool_dir: str, batch_prefix: str, pipeline_id: str, run_context: RunContext, stage: str,
            key_columns: Sequence[str], source: str | None, target: str | None, default_error: str,
            batch_size: int) -> list[dict[str, Any]]:
        """Publish on the JVM (after :meth:`unavailable` said it can) and return one status per partition, in the
        Python path's status format.

        :param spool_dir: where each executor spools what Kafka did not take.
        :param batch_prefix: prefix of the spool files' names.
        """
        from airflow_etl_provider.executor.arrow_envelopes import DEFAULT_ERROR_CLASS, KafkaMessageBuilder
        from airflow_etl_provider.hooks.spark import jvm_class

        error_col, class_col, rules_col = self.error_columns
        builder = KafkaMessageBuilder(stage=stage, pipeline_id=pipeline_id, run_context=run_context,
                                      key_columns=key_columns, source=source, target=target,
                                      default_error=default_error, now=datetime.now(UTC), error_column=error_col,
                                      error_class_column=class_col, rules_column=rules_col)
        names = self.failed.schema.names
        record = sorted(n for n in names if n not in self.error_columns)  # the envelope's key order
        kind_of = dict(zip([n for n in names if n not in self.error_columns], self.kinds, strict=True))
        spark = self.failed.sparkSession
        headers = builder.constant_headers
        plan = {  # one py4j call: a list passed element by element costs a round trip each (~30 ms a publish)
            "topic": self.sink.topic, "producer_config": self.producer_config,
            "value_parts": [_b64(p) for p in builder.value_parts()], "identity_prefix": _b64(builder.identity_prefix),
            "record_indexes": [names.index(n) for n in record], "record_names": record,
            "kinds": "".join(kind_of[n] for n in record),
            "error_index": names.index(error_col) if error_col in names else -1,
            "class_index": names.index(class_col) if class_col in names else -1,
            "rules_index": names.index(rules_col) if rules_col in names else -1,
            "key_indexes": [record.index(c) if c in record else -1 for c in key_columns],
            "pipeline_key": _b64(builder.pipeline_key), "default_error": default_error,
            "default_class": DEFAULT_ERROR_CLASS, "constant_header_names": [h[0] for h in headers],
            "constant_header_values": [_b64(h[1]) for h in headers], "header_prefix": HEADER_PREFIX,
            "max_error_chars": MAX_ERROR_MESSAGE_CHARS, "max_header_chars": MAX_HEADER_MESSAGE_CHARS,
            "session_zone": spark.conf.get("spark.sql.session.timeZone") or "UTC", "spool_dir": spool_dir,
            "batch_prefix": batch_prefix, "batch_size": batch_size,
        }
        publisher = jvm_class(spark._jvm, PUBLISHER_CLASS)  # type: ignore[attr-defined]
        if publisher is None:  # plan() checked it; a session whose jars changed since
            raise RuntimeError(f"{PUBLISHER_CLASS} is not in the session's JVM: {jvm_unavailable(spark)}")
        statuses = publisher.publish(self.failed._jdf, json.dumps(plan))
        return json.loads(statuses)  # type: ignore[no-any-return]
