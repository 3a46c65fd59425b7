"""The comparison of one observed value (common-sql's ``equal_to``/``geq_to``/... with ``tolerance``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from airflow_etl_provider.core.rules.base import _Model


class Condition(_Model):
    """A comparison of one observed value, as in Airflow common-sql's column and value checks.

    ``tolerance`` widens the bounds exactly like common-sql: ``geq_to``/``greater_than`` by
    ``x (1 - tolerance)``, ``leq_to``/``less_than`` by ``x (1 + tolerance)``, ``equal_to`` to the range
    ``[v (1 - tolerance), v (1 + tolerance)]``. Several bounds must all hold.
    """

    equal_to: float | None = None
    greater_than: float | None = None
    geq_to: float | None = None
    less_than: float | None = None
    leq_to: float | None = None
    tolerance: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Condition:
        if all(
            v is None for v in (self.equal_to, self.greater_than, self.geq_to, self.less_than, self.leq_to)
        ):
            raise ValueError("give at least one of equal_to, greater_than, geq_to, less_than, leq_to")
        if self.greater_than is not None and self.geq_to is not None:
            raise ValueError("give greater_than or geq_to, not both")
        if self.less_than is not None and self.leq_to is not None:
            raise ValueError("give less_than or leq_to, not both")
        low = self.greater_than if self.greater_than is not None else self.geq_to
        high = self.less_than if self.less_than is not None else self.leq_to
        if low is not None and high is not None and low > high:
            raise ValueError(f"the lower bound ({low:g}) is above the upper bound ({high:g})")
        return self

    def matches(self, value: Any) -> bool:
        """Whether ``value`` (a number; ``None`` never matches) satisfies every bound."""
        if value is None:
            return False
        try:
            x = float(value)
        except (TypeError, ValueError):
            return False
        if math.isnan(x):
            return False
        tol = self.tolerance
        ok = True
        if self.geq_to is not None:
            ok &= x >= (self.geq_to * (1 - tol) if tol is not None else self.geq_to)
        if self.greater_than is not None:
            ok &= x > (self.greater_than * (1 - tol) if tol is not None else self.greater_than)
        if self.leq_to is not None:
            ok &= x <= (self.leq_to * (1 + tol) if tol is not None else self.leq_to)
        if self.less_than is not None:
            ok &= x < (self.less_than * (1 + tol) if tol is not None else self.less_than)
        if self.equal_to is not None:
            if tol is not None:
                ok &= self.equal_to * (1 - tol) <= x <= self.equal_to * (1 + tol)
            else:
                ok &= x == self.equal_to
        return ok

    def describe(self) -> str:
        """E.g. ``>= 0 and <= 100 (tolerance 0.1)``."""
        parts = [
            f"{op} {value:g}"
            for op, value in (
                ("==", self.equal_to),
                (">", self.greater_than),
                (">=", self.geq_to),
                ("<", self.less_than),
                ("<=", self.leq_to),
            )
            if value is not None
        ]
        text = " and ".join(parts)
        return f"{text} (tolerance {self.tolerance:g})" if self.tolerance is not None else text


CONDITION_KEYS = tuple(Condition.model_fields)


def _condition_keys(data: Any) -> Any:
    """Move inline condition keys (``{"equal_to": 0, ...}``) into ``condition``."""
    if not isinstance(data, Mapping):
        return data
    inline = {k: data[k] for k in CONDITION_KEYS if k in data}
    if not inline:
        return data
    if "condition" in data:
        raise ValueError(f"give the condition inline ({', '.join(inline)}) or as 'condition', not both")
    rest = {k: v for k, v in data.items() if k not in inline}
    return {**rest, "condition": inline}
