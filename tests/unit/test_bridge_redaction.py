"""hide_from_spark_logs: py4j's and Spark Connect's DEBUG records lose registered secrets and pickled closures."""

from __future__ import annotations

import base64
import logging

import pytest

from airflow_etl_provider.hooks.postgres import BRIDGE_LOGGERS, hide_from_spark_logs


@pytest.fixture
def records() -> list[logging.LogRecord]:
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Keep(logging.DEBUG)
    saved = []
    for name in BRIDGE_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.disabled))
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        logger.addHandler(handler)
    yield captured
    for logger, level, disabled in saved:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled


def test_py4j_commands_lose_the_secret_and_bytes_arguments(records: list[logging.LogRecord]) -> None:
    secret = "Pw-unit-9f2c\\back\nslash"
    hide_from_spark_logs(secret, None, "")
    pickled = base64.b64encode(b"closure holding " + secret.encode()).decode()
    escaped = secret.replace("\\", "\\\\").replace("\n", "\\n")  # how py4j writes a string argument
    logging.getLogger("py4j.clientserver").debug(
        "Command to send: " + f"c\no85\noption\nspassword\ns{escaped}\ne\n")  # as py4j: pre-formatted
    logging.getLogger("py4j.java_gateway").debug("Command to send: %s", f"c\nz:x\nj{pickled}\ne\n")
    logging.getLogger("pyspark.sql.connect.logging").debug(
        'Executing plan options { key: "password" value: "%s" }', secret)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 3
    assert all(secret not in m and escaped not in m and pickled not in m for m in messages), messages
    assert "spassword\ns***\n" in messages[0]
    assert "base64 chars redacted" in messages[1]
    assert 'value: "***"' in messages[2]


def test_other_records_pass_unchanged(records: list[logging.LogRecord]) -> None:
    hide_from_spark_logs("Pw-unit-other")
    logging.getLogger("py4j.clientserver").debug("Answer received: %s", "!yro12")
    assert records[-1].getMessage() == "Answer received: !yro12"
    assert records[-1].args == ("!yro12",)  # untouched: no secret in it
