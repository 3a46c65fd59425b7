"""The circuit breaker's policy, the copy of it an opener stores in the shared document, and the jitter of
a rescheduled task's wake-up time. Pure: no Airflow, no I/O."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field

from airflow_etl_provider.core.retry import ConfigModel, KeyMap, to_field

__all__ = ["CircuitBreakerPolicy", "StoredPolicy", "jittered_reschedule"]

#: Default reschedule jitter: this share of the reset timeout, at most ``MAX_DEFAULT_JITTER_S``.
DEFAULT_JITTER_SHARE = 0.2
MAX_DEFAULT_JITTER_S = 60.0


class CircuitBreakerPolicy(ConfigModel):
    """When a circuit breaker opens and how it recovers.

    :param enabled: ``False`` turns the breaker into a pass-through that never touches the store.
    :param name: the breaker's name, shared by every task that protects the same system; callers
        default it to the protected connection id.
    :param failure_threshold: consecutive failures (transient or system, not data) that open it.
    :param reset_timeout_s: how long it stays open before admitting trial calls.
    :param half_open_max_attempts: trial calls admitted when half-open; that many successes close it.
    :param on_open: what a task does when the breaker refuses a call: ``reschedule`` (try again when it
        turns half-open) or ``fail``.
    :param reschedule_jitter_s: a rescheduled task wakes at ``retry_at`` plus a random delay in
        ``[0, reschedule_jitter_s]`` (never earlier), so the tasks an open breaker refused do not all
        race for the half-open trial at the same instant. ``None`` (default): 20 % of
        ``reset_timeout_s``, at most 60 s; ``0``: no jitter.
    """

    config_path: ClassVar[str] = "circuit_breaker"
    config_keys: ClassVar[KeyMap] = {
        "enabled": to_field("enabled"),
        "name": to_field("name"),
        "failure_threshold": to_field("failure_threshold"),
        "failureThreshold": to_field("failure_threshold"),
        "reset_timeout_s": to_field("reset_timeout_s"),
        "resetTimeoutSeconds": to_field("reset_timeout_s"),
        "half_open_max_attempts": to_field("half_open_max_attempts"),
        "halfOpenMaxAttempts": to_field("half_open_max_attempts"),
        "on_open": to_field("on_open"),
        "onOpen": to_field("on_open"),
        "reschedule_jitter_s": to_field("reschedule_jitter_s"),
        "rescheduleJitterSeconds": to_field("reschedule_jitter_s"),
    }

    enabled: bool = True
    name: str | None = None
    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout_s: float = Field(default=60.0, gt=0)
    half_open_max_attempts: int = Field(default=1, ge=1)
    on_open: Literal["reschedule", "fail"] = "reschedule"
    reschedule_jitter_s: float | None = Field(default=None, ge=0)

    def jitter_bound_s(self) -> float:
        """The largest delay added to a reschedule date (seconds); see ``reschedule_jitter_s``."""
        if self.reschedule_jitter_s is not None:
            return self.reschedule_jitter_s
        return min(self.reset_timeout_s * DEFAULT_JITTER_SHARE, MAX_DEFAULT_JITTER_S)

    @classmethod
    def from_config(
        cls, obj: CircuitBreakerPolicy | Mapping[str, Any] | None, *, path: str = "circuit_breaker"
    ) -> CircuitBreakerPolicy:
        """Build a policy from a policy, ``None`` (the defaults) or a mapping.

        The mapping may use the field names or the pipeline config's camelCase block
        (``enabled``, ``failureThreshold``, ``resetTimeoutSeconds``, ``halfOpenMaxAttempts``,
        ``onOpen``, ``name``).

        :param obj: the configuration.
        :param path: where the block sits in the configuration, for error messages.
        :raises ConfigError: naming the key, the value and what is allowed.
        """
        if isinstance(obj, CircuitBreakerPolicy):
            return obj
        if obj is None:
            return cls()
        return cls.from_mapping(obj, path)


def jittered_reschedule(retry_at: datetime, bound_s: float, rng: random.Random | None = None) -> datetime:
    """``retry_at`` plus a uniform random delay in ``[0, bound_s]`` seconds: never before ``retry_at``
    (the breaker would still refuse), at most ``bound_s`` after it.

    :param retry_at: when the breaker turns half-open.
    :param bound_s: the largest delay (``CircuitBreakerPolicy.jitter_bound_s()``); ``0``: ``retry_at``.
    :param rng: the random source (seed one for reproducible draws); default: the ``random`` module's.
    """
    if bound_s < 0:
        raise ValueError(f"bound_s must be >= 0, got {bound_s!r}")
    if bound_s == 0:
        return retry_at
    return retry_at + timedelta(seconds=(rng or random).uniform(0.0, bound_s))


@dataclass(frozen=True)
class StoredPolicy:
    """The policy of the process that opened the breaker, kept in the shared document while it is open or
    half-open, so that every reader applies the same reset timeout and number of trial calls to the
    shared ``opened_at`` whatever its own configuration says.

    :param reset_timeout_s: the opener's reset timeout.
    :param failure_threshold: the opener's failure threshold (for people reading the document; it
        matters only while the breaker is closed, where each process counts with its own).
    :param half_open_max_attempts: the opener's number of trial calls.
    """

    reset_timeout_s: float
    failure_threshold: int
    half_open_max_attempts: int

    @classmethod
    def of(cls, policy: CircuitBreakerPolicy) -> StoredPolicy:
        """The parts of ``policy`` an open breaker's readers must share.

        :param policy: the opener's policy.
        """
        return cls(policy.reset_timeout_s, policy.failure_threshold, policy.half_open_max_attempts)

    @classmethod
    def from_json(cls, data: Any) -> StoredPolicy | None:
        """Read the ``opened_with`` part of a document; ``None`` when absent (documents written before it
        existed).

        :raises TypeError, ValueError: if it is not a valid policy.
        """
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise TypeError(f"opened_with: expected a JSON object, got {type(data).__name__}")
        stored = cls(
            float(data["reset_timeout_s"]),
            int(data["failure_threshold"]),
            int(data["half_open_max_attempts"]),
        )
        if stored.reset_timeout_s <= 0 or stored.failure_threshold < 1 or stored.half_open_max_attempts < 1:
            raise ValueError(f"opened_with: out of range: {dict(data)!r}")
        return stored

    def differs_from(self, policy: CircuitBreakerPolicy) -> list[str]:
        """The settings where ``policy`` differs from this one, as ``"name: stored (own: x)"``.

        :param policy: a reader's own policy.
        """
        return [
            f"{name} {stored!r} (this task's: {own!r})"
            for name, stored, own in (
                ("reset_timeout_s", self.reset_timeout_s, policy.reset_timeout_s),
                ("failure_threshold", self.failure_threshold, policy.failure_threshold),
                ("half_open_max_attempts", self.half_open_max_attempts, policy.half_open_max_attempts),
            )
            if float(stored) != float(own)
        ]
