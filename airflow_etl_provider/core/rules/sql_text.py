"""SQL text checks of rule queries and expressions: one read-only ``SELECT``, no ``;``."""

from __future__ import annotations

import re


def _strip_literals(sql: str) -> str:
    """``sql`` with comments removed and string literals / quoted identifiers blanked."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\" and ch != "`":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            out.append(" '' ")
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_FORBIDDEN_SQL = re.compile(
    r"\b(insert|update|delete|merge|create|drop|alter|truncate|grant|revoke|msck|refresh|cache|uncache"
    r"|load|overwrite|directory)\b",
    re.IGNORECASE,
)


def validate_select_query(query: str) -> str:
    """Return ``query`` if it is one ``SELECT`` (or ``WITH ... SELECT``) statement, else raise ``ValueError``.

    Comments and string literals are ignored; a trailing ``;`` is allowed. DDL, DML and commands
    (``INSERT``, ``UPDATE``, ``DELETE``, ``MERGE``, ``CREATE``, ``DROP``, ``ALTER``, ``TRUNCATE``, ``CACHE``
    ...) are refused anywhere in the text, so a column named like one of them must be back-quoted.
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("must be a non-empty SELECT query")
    code = _strip_literals(query).strip()
    code = code[:-1].rstrip() if code.endswith(";") else code
    if ";" in code:
        raise ValueError("must be a single statement: remove the ';' between statements")
    first = re.match(r"[\s(]*([A-Za-z]+)", code)
    if first is None or first.group(1).lower() not in ("select", "with"):
        raise ValueError("must be a single SELECT or WITH ... SELECT query (no DDL, DML or commands)")
    forbidden = _FORBIDDEN_SQL.search(code)
    if forbidden:
        raise ValueError(
            f"must only read data: {forbidden.group(1).upper()} is not allowed in a quality query "
            "(back-quote a column with that name)"
        )
    return query
