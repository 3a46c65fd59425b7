"""Property tests over every configuration parser (issue 14, R4), with hypothesis.

Inputs are valid configurations mutated (keys dropped, misspelt or added, values replaced by other types or
random JSON, values nested one level deeper) and random JSON. The properties:

* **total**: every input either parses, or raises :class:`ConfigError`; never another exception;
* **named**: a ``ConfigError`` names a field of the input: its path (the message starts with it) resolves in
  the input, except perhaps its last part, a required field the input lacks;
* **no silent default**: a misspelt or unknown key is refused, and the message names it.

Each property runs 1,000 examples per parser (``derandomize``: the same examples every run, so a failure
reproduces). Bugs found in the streaming modules, which this branch must not edit, are ``xfail(strict=True)``
tests naming the failing input.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_etl_provider.core.circuit_breaker import CircuitBreakerPolicy
from airflow_etl_provider.core.config import ErrorHandlingConfig, parse_dead_letter
from airflow_etl_provider.core.errors import ConfigError
from airflow_etl_provider.core.retry import RetryPolicy
from airflow_etl_provider.core.rules import CONDITION_KEYS, parse_rules
from airflow_etl_provider.core.rules.models import _MODELS
from airflow_etl_provider.core.streaming import SINK_KEYS, SOURCE_KEYS, validate_streaming
from airflow_etl_provider.hooks.sources import validate_source
from airflow_etl_provider.operators.load import validate_target

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------------------------------- inputs

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["", " ", "x", "0", "-1", "1.5", "5 minutes", "s3://b/p", "{{ ds }}", "public.t", "a.b"]
    )
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
WRONG_TYPES = st.sampled_from(
    [None, True, False, 0, -1, 1, 2.5, math.inf, -0.0, "", "x", [], [1], {}, {"a": 1}]
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node's path (mapping keys, list indexes), the root included."""
    out = [prefix]
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _misspell(draw: Callable[..., Any], key: str) -> str:
    """A plausible typo of ``key``: a letter doubled, dropped, swapped or changed, or a case change."""
    if not key:
        return "x"
    i = draw(st.integers(0, len(key) - 1))
    kind = draw(st.sampled_from(["double", "drop", "swap", "change", "case", "suffix"]))
    if kind == "double":
        return key[: i + 1] + key[i] + key[i + 1 :]
    if kind == "drop" and len(key) > 1:
        return key[:i] + key[i + 1 :]
    if kind == "swap" and i + 1 < len(key) and key[i] != key[i + 1]:
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if kind == "change":
        return key[:i] + ("q" if key[i] != "q" else "z") + key[i + 1 :]
    if kind == "case" and key.swapcase() != key:
        return key.swapcase()
    return key + "s"


@st.composite
def mutated(draw: Callable[..., Any], seeds: list[Any]) -> Any:
    """A valid seed with one to three mutations."""
    obj = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(obj)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["drop", "misspell", "replace", "wrong_type", "extra", "nest", "unnest"]))
        if not path:  # the root itself
            if op in ("replace", "wrong_type"):
                obj = copy.deepcopy(draw(JSON if op == "replace" else WRONG_TYPES))
            elif op == "nest":
                obj = draw(st.sampled_from([[obj], {"value": obj}]))
            elif op == "extra" and isinstance(obj, dict):
                obj[draw(st.text(max_size=10))] = draw(JSON)
            continue
        parent, last = _get(obj, path[:-1]), path[-1]
        if op == "drop" and isinstance(parent, dict):
            del parent[last]
        elif op == "misspell" and isinstance(parent, dict) and isinstance(last, str):
            parent[_misspell(draw, last)] = parent.pop(last)
        elif op == "replace":
            parent[last] = draw(JSON)
        elif op == "wrong_type":
            parent[last] = copy.deepcopy(draw(WRONG_TYPES))
        elif op == "extra" and isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=10))] = draw(JSON)
        elif op == "nest":
            parent[last] = draw(st.sampled_from([[parent[last]], {"value": parent[last]}]))
        elif op == "unnest" and isinstance(parent[last], dict) and parent[last]:
            parent[last] = next(iter(parent[last].values()))
    return obj


def inputs(seeds: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(mutated(seeds), mutated(seeds), mutated(seeds), JSON)


# ------------------------------------------------------------------------------------- properties

_ANNOTATION = re.compile(r" \((?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\)")
_INDEX = re.compile(r"\[(\d+)\]")


def _walk(rest: str, node: Any) -> bool:
    """Whether the dotted ``rest`` resolves in ``node``; the last part may be a field the mapping lacks."""
    while rest:
        rest = rest.removeprefix(".")
        annotation = _ANNOTATION.match(rest)
        if annotation:  # a rule's name after its index: "rules[0] ('email_present')"
            rest = rest[annotation.end() :]
            continue
        index = _INDEX.match(rest)
        if index:
            if not isinstance(node, list | tuple) or int(index[1]) >= len(node):
                return False
            node, rest = node[int(index[1])], rest[index.end() :]
            continue
        if not isinstance(node, Mapping):
            return False
        keys = [
            k
            for k in node
            if isinstance(k, str)
            and k
            and (rest == k or any(rest.startswith(k + s) for s in (".", "[", " (")))
        ]
        if not keys:  # a missing field: a single last part
            return not re.search(r"[.\[]", rest)
        key = max(keys, key=len)
        node, rest = node[key], rest[len(key) :]
    return True


def names_a_field(error: ConfigError, obj: Any, roots: tuple[str, ...]) -> bool:
    """Whether ``error`` names a field of ``obj``; ``roots`` are the paths that stand for ``obj`` itself."""
    path = error.path
    if not path or not str(error).startswith(path):
        return False
    if isinstance(obj, Mapping) and any(path == repr(k) for k in obj if not k):
        return True  # an empty key, named by its repr
    for root in roots:
        if path == root:
            return True
        if root == "":
            if _walk(path, obj):
                return True
        elif path.startswith(root) and path[len(root)] in ".[ " and _walk(path[len(root) :], obj):
            return True
    return False


def check(parse: Callable[[Any], Any], obj: Any, roots: tuple[str, ...]) -> None:
    """The input parses, or raises a ConfigError naming one of its fields (any other exception escapes)."""
    try:
        parse(obj)
    except ConfigError as error:
        assert names_a_field(error, obj, roots), f"{error.path!r} is not a field of {obj!r}: {error}"


def _refused_naming(parse: Callable[[Any], Any], obj: Any, node: dict[str, Any], key: str, typo: str) -> None:
    node[typo] = node.pop(key)
    with pytest.raises(ConfigError) as info:
        parse(obj)
    message = str(info.value)
    assert typo in message or repr(typo) in message, f"{typo!r} (was {key!r}) not named: {message}"


@st.composite
def typo_case(
    draw: Callable[..., Any], seeds: list[tuple[Any, list[tuple[Any, ...]]]], known: set[str]
) -> Any:
    """(config, the mapping's path, the key, its typo): a key of a strict mapping of a valid seed, misspelt
    into a name no parser knows."""
    seed, strict_paths = draw(st.sampled_from(seeds))
    path = draw(st.sampled_from(strict_paths))
    obj = copy.deepcopy(seed)
    node = _get(obj, path)
    key = draw(st.sampled_from(sorted(node)))
    typo = _misspell(draw, key) if draw(st.booleans()) else draw(st.text(min_size=1, max_size=8))
    assume(typo not in known and typo not in node and not typo.startswith("{{"))
    return obj, node, key, typo


# --------------------------------------------------------------------------------- errorHandling

KAFKA_SEED = {"type": "kafka", "config": {"bootstrap.servers": "127.0.0.1:9092", "topic": "etl.dlq"}}
DLQ_SEEDS: list[Any] = [
    KAFKA_SEED,
    {"enabled": True, "type": "kafka", "topic": "etl.dlq", "connId": "kafka_x", "config": {"acks": "all"}},
    {"type": "s3", "bucket": "etl-dlq", "prefix": "orders", "format": "parquet", "partitionBy": "hour"},
    {"type": "s3", "path": "s3://etl-dlq/a/b", "conn_id": "aws_x"},
    {"type": "s3", "config": {"bucket": "etl-dlq", "prefix": "p"}},
    {"type": "file", "path": "/tmp/dlq", "format": "jsonl", "partition_by": "pipeline"},
    {"type": "file", "config": {"path": "/tmp/dlq"}},
]
RETRY_SEEDS: list[Any] = [
    {"strategy": "exponential-backoff", "maxAttempts": 5, "initialDelayMs": 1000, "maxDelayMs": 60000,
     "backoffMultiplier": 2.0, "jitter": True, "deadlineMs": 300000},
    {"max_attempts": 3, "initial_delay_s": 0.5, "max_delay_s": 10, "multiplier": 3, "jitter": "equal"},
    {"maxAttempts": 3, "delaySeconds": 5},
]  # fmt: skip
BREAKER_SEEDS: list[Any] = [
    {
        "enabled": True,
        "failureThreshold": 5,
        "resetTimeoutSeconds": 60,
        "halfOpenMaxAttempts": 1,
        "onOpen": "fail",
    },
    {"failure_threshold": 2, "reset_timeout_s": 1.5, "name": "pg", "on_open": "reschedule"},
]
ERROR_HANDLING_SEEDS: list[Any] = [
    {"retry": r, "circuitBreaker": b, "deadLetterQueue": d}
    for r, b, d in zip(RETRY_SEEDS * 3, BREAKER_SEEDS * 4, DLQ_SEEDS, strict=False)
] + [{"errorHandling": {"retry": RETRY_SEEDS[0], "dead_letter": DLQ_SEEDS[2]}}]

KNOWN_KEYS: set[str] = {
    *RetryPolicy.config_keys,
    *CircuitBreakerPolicy.config_keys,
    *ErrorHandlingConfig._BLOCKS,
    "errorHandling",
    "error_handling",
    "type",
    "enabled",
    "topic",
    "conn_id",
    "connId",
    "config",
    "bucket",
    "prefix",
    "path",
    "format",
    "partition_by",
    "partitionBy",
    *CONDITION_KEYS,
    "column",
    "condition",
    "rules",
    "column_mapping",
    "checks",
    "accept_none",
    "check_statement",
    "partition_clause",
    *{f for model in _MODELS.values() for f in model.model_fields},
    "options",
    "schema",
    "table",
    "query",
    "mode",
    "keys",
    "load_id",
}


def _error_handling(obj: Any) -> Any:
    if isinstance(obj, str):  # a file path: refused unless it names a readable JSON/YAML file
        assume(False)
    return ErrorHandlingConfig.from_config(obj)


@FUZZ
@given(inputs(ERROR_HANDLING_SEEDS))
def test_error_handling_parses_or_names_the_field(obj: Any) -> None:
    check(_error_handling, obj, ("errorHandling", ""))


@FUZZ
@given(inputs(RETRY_SEEDS))
def test_retry_parses_or_names_the_field(obj: Any) -> None:
    check(lambda o: RetryPolicy.from_config(o, path="retry"), obj, ("retry",))


@FUZZ
@given(inputs(BREAKER_SEEDS))
def test_circuit_breaker_parses_or_names_the_field(obj: Any) -> None:
    check(lambda o: CircuitBreakerPolicy.from_config(o, path="circuitBreaker"), obj, ("circuitBreaker",))


@FUZZ
@given(inputs(DLQ_SEEDS))
def test_dead_letter_parses_or_names_the_field(obj: Any) -> None:
    check(parse_dead_letter, obj, ("dead_letter",))


def _strict(seed: Any, free: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of the seed's mappings whose keys are a schema (not user data such as producer settings)."""
    return [
        p
        for p in _paths(seed)
        if isinstance(_get(seed, p), dict) and _get(seed, p) and not (p and p[-1] in free)
    ]


ERROR_HANDLING_TYPOS = [(s, _strict(s, free=("config",))) for s in ERROR_HANDLING_SEEDS] + [
    (s, _strict(s)) for s in DLQ_SEEDS if s["type"] != "kafka"
]


@FUZZ
@given(typo_case(ERROR_HANDLING_TYPOS, KNOWN_KEYS))
def test_error_handling_refuses_a_misspelt_key_naming_it(case: Any) -> None:
    obj, node, key, typo = case
    parse = parse_dead_letter if "type" in obj else ErrorHandlingConfig.from_config
    _refused_naming(parse, obj, node, key, typo)


# --------------------------------------------------------------------------------- source / target

SOURCE_SEEDS: list[Any] = [
    {"format": "parquet", "path": "/data/in"},
    {"format": "csv", "path": "/data/in.csv", "options": {"header": "true"}, "schema": "id INT, name STRING"},
    {"format": "json", "path": "s3a://b/in/"},
    {"format": "jdbc", "conn_id": "postgres_default", "table": "public.orders"},
    {"format": "jdbc", "query": "select 1"},
    {"format": "table", "table": "db.orders"},
]
TARGET_SEEDS: list[Any] = [
    {
        "type": "postgres",
        "conn_id": "postgres_default",
        "table": "public.orders",
        "mode": "append",
        "load_id": "x",
    },
    {"type": "postgres", "table": "orders", "mode": "upsert", "keys": ["id", "day"]},
    {"type": "parquet", "path": "/out", "mode": "overwrite", "partition_by": ["day"]},
]


@FUZZ
@given(inputs(SOURCE_SEEDS))
def test_source_parses_or_names_the_field(obj: Any) -> None:
    check(validate_source, obj, ("source",))


@FUZZ
@given(inputs(TARGET_SEEDS))
def test_target_parses_or_names_the_field(obj: Any) -> None:
    check(validate_target, obj, ("target",))


@FUZZ
@given(typo_case([(s, _strict(s, free=("options",))) for s in SOURCE_SEEDS], KNOWN_KEYS))
def test_source_refuses_a_misspelt_key_naming_it(case: Any) -> None:
    obj, node, key, typo = case
    _refused_naming(validate_source, obj, node, key, typo)


@FUZZ
@given(typo_case([(s, _strict(s)) for s in TARGET_SEEDS], KNOWN_KEYS))
def test_target_refuses_a_misspelt_key_naming_it(case: Any) -> None:
    obj, node, key, typo = case
    _refused_naming(validate_target, obj, node, key, typo)


# ------------------------------------------------------------------------------------- quality rules

RULE_SEEDS: list[Any] = [
    {
        "rules": [
            {"type": "not_null", "column": "email", "mostly": 0.99, "severity": "warn"},
            {"type": "unique", "columns": ["id", "day"], "max_failures": 3, "name": "key"},
            {"type": "range", "column": "amount", "min": 0, "max": 100, "max_inclusive": False},
            {"type": "regex", "column": "code", "pattern": "^[A-Z]{2}$", "action": "quarantine"},
            {"type": "format", "column": "d", "format": "date", "pattern": "yyyy-MM-dd"},
            {"type": "allowed_values", "column": "status", "values": ["new", "paid"]},
            {"type": "length", "column": "name", "min": 1, "max": 10},
            {"type": "expression", "expression": "a >= b", "columns": ["a", "b"]},
        ]
    },
    {
        "rules": [
            {"type": "row_count", "min": 1, "max": 1000},
            {"type": "freshness", "column": "ts", "max_age": "1h30m"},
            {"type": "schema", "columns": {"id": "int", "name": "string"}, "allow_extra": False},
            {"type": "sql", "query": "select count(*) from data where x < 0", "equal_to": 0},
            {
                "type": "column_metric",
                "column": "x",
                "metric": "max",
                "condition": {"leq_to": 5, "tolerance": 0.1},
            },
            {"type": "row_count_change", "max_change": 0.2, "history": [10, 12], "baseline": "median"},
        ]
    },
    {
        "column_mapping": {
            "amount": {"null_check": {"equal_to": 0}, "min": {"geq_to": -100, "tolerance": 0.5}},
            "id": {
                "unique_check": {"equal_to": 0, "severity": "warn"},
                "distinct_check": {"greater_than": 3},
            },
        },
        "checks": {
            "positive": {"check_statement": "amount > 0"},
            "rows": {"check_statement": "COUNT(*) > 0"},
        },
        "accept_none": False,
    },
    [{"type": "not_null", "columns": ["a", "b"]}, {"type": "length", "column": "x", "max": 3}],
]
RULE_TYPO_SEEDS = [
    (s, _strict(s, free=("column_mapping", "checks", "columns")) + ([("column_mapping", "amount", "min")] if "column_mapping" in s else []))
    for s in RULE_SEEDS
    if isinstance(s, dict)
]  # fmt: skip


@FUZZ
@given(inputs(RULE_SEEDS))
def test_quality_rules_parse_or_name_the_field(obj: Any) -> None:
    if isinstance(obj, str):
        assume(False)  # a rules file path
    check(parse_rules, obj, ("", "rules"))


@FUZZ
@given(typo_case(RULE_TYPO_SEEDS, KNOWN_KEYS))
def test_quality_rules_refuse_a_misspelt_key_naming_it(case: Any) -> None:
    obj, node, key, typo = case
    _refused_naming(parse_rules, obj, node, key, typo)


# ----------------------------------------------------------------------------------------- streaming

STREAMING_SEEDS: list[Any] = [
    {
        "source": {"type": "kafka", "topic": "orders", "schema": "order_id STRING, amount DOUBLE, ts TIMESTAMP",
                   "starting_offsets": "earliest", "max_offsets_per_trigger": 1000},
        "event_time_column": "ts",
        "watermark": "10 minutes",
        "window": {"type": "tumbling", "duration": "5 minutes"},
        "group_by": ["order_id"],
        "aggregations": {"amount": ["sum", "avg"], "*": ["count"]},
        "sink": {"type": "postgres", "table": "public.orders_5min"},
        "output_mode": "append",
        "checkpoint_location": "/tmp/ckpt",
        "trigger": "available_now",
        "late_data": {"dead_letter": {"type": "file", "path": "/tmp/late"}},
    },
    {
        "source": {"type": "files", "path": "/in", "format": "json", "schema": "k STRING, v INT, t TIMESTAMP"},
        "event_time_column": "t",
        "watermark": "1 hour",
        "window": {"type": "sliding", "duration": "10 minutes", "slide": "5 minutes"},
        "group_by": [],
        "aggregations": {"v": ["min", "max"]},
        "sink": {"type": "parquet", "path": "/out"},
        "output_mode": "append",
        "checkpoint_location": "/tmp/ckpt2",
        "trigger": {"processing_time": "30 seconds", "max_runtime": "15 minutes"},
        "late_data": "drop",
    },
]  # fmt: skip


REQUIRED_STREAMING = (
    "source",
    "event_time_column",
    "watermark",
    "window",
    "aggregations",
    "sink",
    "checkpoint_location",
)
#: The operator's defaults for the arguments a DAG may leave out.
STREAMING_DEFAULTS = {
    "group_by": (),
    "output_mode": "append",
    "trigger": "available_now",
    "late_data": "drop",
}


def _streaming_kwargs(obj: Any) -> dict[str, Any]:
    """The keyword arguments a DAG would pass: only known argument names (an unknown one is a TypeError of
    the call, not the parser's business), every required one present."""
    assume(isinstance(obj, Mapping) and all(k in obj for k in REQUIRED_STREAMING))
    return {k: obj.get(k, STREAMING_DEFAULTS.get(k)) for k in STREAMING_SEEDS[0]}


@FUZZ
@given(mutated(STREAMING_SEEDS))
def test_streaming_config_parses_or_names_the_field(obj: Any) -> None:
    kwargs = _streaming_kwargs(obj)
    check(lambda o: validate_streaming(**o), kwargs, ("",))


@FUZZ
@given(mutated(STREAMING_SEEDS))
def test_streaming_operator_constructor_parses_or_names_the_field(obj: Any) -> None:
    from airflow_etl_provider.operators.streaming import StreamingWatermarkOperator

    kwargs = _streaming_kwargs(obj)
    check(lambda o: StreamingWatermarkOperator(task_id="stream", **o), kwargs, ("",))


STREAMING_TYPOS = [(s, _strict(s, free=("aggregations",))) for s in STREAMING_SEEDS]


@FUZZ
@given(
    typo_case(
        [(s, [p for p in paths if p]) for s, paths in STREAMING_TYPOS],
        # a typo must be a name no parser knows: not another window, source or sink setting either ("type"
        # misspelt into "gap" is a session window's gap, not a typo)
        KNOWN_KEYS | set(STREAMING_SEEDS[0]) | {"duration", "slide", "gap"}
        | {k for keys in (*SOURCE_KEYS.values(), *SINK_KEYS.values()) for k in keys},
    )
)
def test_streaming_config_refuses_a_misspelt_key_naming_it(case: Any) -> None:
    obj, node, key, typo = case
    _refused_naming(lambda o: validate_streaming(**o), obj, node, key, typo)
