"""The comparison of one observed value (common-sql's ``equal_to``/``geq_to``/... with ``tolerance``)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import Field, model_validator

from airflow_etl_provider.core.rules.base import _Model


class Condition(_Model):
    """A comparison of one observed value, as in Airflow common-sql's column and value checks.

    ``tolerance`` widens the bounds outward, exactly like common-sql's ``SQLColumnCheckOperator``: a lower
    bound ``b`` (``geq_to``/``greater_than``) becomes ``b - |b| tolerance``, an upper bound (``leq_to``/
    ``less_than``) ``b + |b| tolerance``, ``equal_to`` ``v`` the range ``[v - |v| tolerance, v + |v|
    tolerance]``. So a tolerance never tightens a bound, also for negative bounds (``geq_to: -100`` with
    ``tolerance: 0.5`` accepts down to -150), and leaves a zero bound as it is. Several bounds must all
    hold. The observed value is compared as it is (``int``, ``float``, ``Decimal``: exactly, as Python
    compares them), other values after ``float()``.
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
        x: Any = value
        if not isinstance(value, int | float | Decimal):
            try:
                x = float(value)
            except (TypeError, ValueError):
                return False
        if x != x:  # NaN (float or Decimal)
            return False
        tol = self.tolerance

        def lower(bound: float) -> float:
            return bound - abs(bound) * tol if tol is not None else bound

        def upper(bound: float) -> float:
            return bound + abs(bound) * tol if tol is not None else bound

        ok = True
        if self.geq_to is not None:
            ok &= x >= lower(self.geq_to)
        if self.greater_than is not None:
            ok &= x > lower(self.greater_than)
        if self.leq_to is not None:
            ok &= x <= upper(self.leq_to)
        if self.less_than is not None:
            ok &= x < upper(self.less_than)
        if self.equal_to is not None:
            if tol is not None:
                ok &= lower(self.equal_to) <= x <= upper(self.equal_to)
            else:
                ok &= x == self.equal_to
        return bool(ok)

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
