"""SQL identifiers from configuration: validated and quoted, so a name can never inject SQL."""

from __future__ import annotations

import re

from airflow_etl_provider.core.errors import ConfigError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def validate_identifier(name: str, field: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, ``_``, ``$``; ≤ 63 chars).

    :param name: the identifier.
    :param field: the config field it came from, for the error message.
    :raises ConfigError: naming the field, the value and the rule.
    """
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfigError(
            field,
            f"{name!r} is not a valid SQL identifier: use letters, digits and '_' (starting with a "
            "letter or '_'), at most 63 characters",
        )
    return name


def quote_identifier(name: str, field: str = "identifier") -> str:
    """Validate and double-quote one identifier."""
    return '"' + validate_identifier(name, field) + '"'


def quote_table(name: str, field: str = "table") -> str:
    """Validate and quote ``table`` or ``schema.table``: ``"schema"."table"``."""
    parts = name.split(".") if isinstance(name, str) else [name]
    if len(parts) > 2:
        raise ConfigError(field, f"{name!r}: expected 'table' or 'schema.table'")
    return ".".join(quote_identifier(p, field) for p in parts)
