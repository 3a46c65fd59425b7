"""Spark type names in canonical form, for ``schema`` rules."""

from __future__ import annotations

import re

_TYPE_ALIASES = {
    "int": "int",
    "integer": "int",
    "int32": "int",
    "long": "bigint",
    "bigint": "bigint",
    "int64": "bigint",
    "short": "smallint",
    "smallint": "smallint",
    "byte": "tinyint",
    "tinyint": "tinyint",
    "str": "string",
    "string": "string",
    "text": "string",
    "varchar": "string",
    "bool": "boolean",
    "boolean": "boolean",
    "float": "float",
    "real": "float",
    "float32": "float",
    "double": "double",
    "float64": "double",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_ltz": "timestamp",
    "timestamp_ntz": "timestamp_ntz",
    "binary": "binary",
    "decimal": "decimal",
    "numeric": "decimal",
}


def normalize_type(type_name: str) -> str:
    """A Spark type name in canonical form: ``integer`` -> ``int``, ``long`` -> ``bigint``,
    ``decimal(10, 2)`` -> ``decimal(10,2)``, ``varchar(20)`` -> ``string``; others lower-cased."""
    text = re.sub(r"\s+", "", type_name.strip().lower())
    base, _, rest = text.partition("(")
    if base in ("varchar", "char"):
        return "string"
    if base in ("decimal", "numeric"):
        return f"decimal({rest}" if rest else "decimal"
    return _TYPE_ALIASES.get(text, text)
