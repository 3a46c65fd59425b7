"""The 20 data-quality rules of benchmarks P5/P6 (issue #5), shared by ``bench_quality.py`` (main venv) and
``quality_peers.py`` (peers venv): standard library only.

The rules are written once, in our format; the bare aggregation, PyDeequ and Great Expectations sides are
translated from this list by rule type, so every tool checks the same constraints. Semantics all tools
share on this data: a NULL passes every rule but ``not_null`` (the regex and unique columns have no NULLs,
because Deequ's ``hasPattern`` counts a NULL as a non-match and its ``Uniqueness`` keeps keys with a NULL
part), ``unique`` fails every row of a duplicated key, ``expression`` fails when false (NULL passes).
"""

from __future__ import annotations

STATUSES = ["new", "paid", "packed", "shipped", "delivered", "cancelled", "returned"]
CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK", "PLN", "DKK"]
COUNTRIES = ["DE", "FR", "NL", "BE", "AT", "CH", "IT", "ES", "PL", "SE", "DK", "GB", "US", "IE", "PT"]
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
ORDER_REF_RE = r"^ORD-[0-9]{8}$"
SKU_RE = r"^SKU-[0-9]{6}$"
KEY_COLUMNS = ("order_id",)

RULES: list[dict] = [
    # 5 not_null
    {"name": "customer_id_present", "type": "not_null", "column": "customer_id"},
    {"name": "status_present", "type": "not_null", "column": "status"},
    {"name": "amount_present", "type": "not_null", "column": "amount"},
    {"name": "ordered_at_present", "type": "not_null", "column": "ordered_at"},
    {"name": "phone_present", "type": "not_null", "column": "phone"},
    # 5 range (inclusive bounds)
    {"name": "quantity_range", "type": "range", "column": "quantity", "min": 1, "max": 100},
    {"name": "unit_price_range", "type": "range", "column": "unit_price", "min": 0, "max": 10_000},
    {"name": "amount_range", "type": "range", "column": "amount", "min": 0, "max": 1_000_000},
    {"name": "discount_range", "type": "range", "column": "discount_pct", "min": 0, "max": 100},
    {"name": "weight_range", "type": "range", "column": "weight_kg", "min": 0, "max": 500},
    # 3 regex
    {"name": "email_format", "type": "regex", "column": "email", "pattern": EMAIL_RE},
    {"name": "order_ref_format", "type": "regex", "column": "order_ref", "pattern": ORDER_REF_RE},
    {"name": "sku_format", "type": "regex", "column": "sku", "pattern": SKU_RE},
    # 3 allowed_values
    {"name": "status_known", "type": "allowed_values", "column": "status", "values": STATUSES},
    {"name": "currency_known", "type": "allowed_values", "column": "currency", "values": CURRENCIES},
    {"name": "country_known", "type": "allowed_values", "column": "country", "values": COUNTRIES},
    # 2 unique
    {"name": "order_id_unique", "type": "unique", "columns": ["order_id"]},
    {"name": "order_line_unique", "type": "unique", "columns": ["order_ref", "line_no"]},
    # 1 row_count, 1 expression
    {"name": "not_empty", "type": "row_count", "min": 1},
    {"name": "shipped_after_ordered", "type": "expression", "expression": "shipped_at >= ordered_at",
     "columns": ["ordered_at", "shipped_at"]},
]

#: The rules counting failing rows (all but row_count), in rule order: the names compared across tools.
COUNTED = [r["name"] for r in RULES if r["type"] != "row_count"]


def mismatches(reference: dict[str, int], other: dict[str, int]) -> list[str]:
    """Rules whose failing-row counts differ (or are missing) between two tools."""
    return [f"{name}: {reference.get(name)} vs {other.get(name)}" for name in COUNTED
            if reference.get(name) != other.get(name)]
