"""A circuit breaker whose state is one JSON document in a store shared by many processes.

The store is a key -> JSON document map with last-writer-wins upserts and no compare-and-set: in
production, Airflow Variables (see :func:`variable_key`); in tests, :class:`InMemoryBreakerStore`.
:class:`BreakerSnapshot` is the document and its ``with_*`` methods are the pure state machine;
:class:`SharedCircuitBreaker` drives them against a store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from airflow_etl_provider.core.breaker_policy import CircuitBreakerPolicy, StoredPolicy, jittered_reschedule
from airflow_etl_provider.core.errors import CircuitOpenError, ErrorKind, classify_any

__all__ = [
    "BreakerSnapshot",
    "BreakerStore",
    "CircuitBreakerPolicy",
    "CircuitState",
    "InMemoryBreakerStore",
    "SharedCircuitBreaker",
    "StoredPolicy",
    "TransitionEvent",
    "jittered_reschedule",
    "variable_key",
]

log = logging.getLogger("airflow_etl_provider.circuit_breaker")

T = TypeVar("T")

MAX_ERROR_CHARS = 500
MAX_PROBE_INTERVAL_S = 30.0
_MAX_READ_BACKS = 5
_VARIABLE_PREFIX = "etl_circuit_breaker__"
_MAX_VARIABLE_KEY = 250  # Airflow's Variable.key column


class CircuitState(StrEnum):
    """The states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_SEVERITY = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of ids, got {value!r}")
    return tuple(str(item) for item in value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return first + tuple(item for item in second if item not in first)


@dataclass(frozen=True)
class BreakerSnapshot:
    """The shared document of one circuit breaker, and the pure transitions on it.

    Within one ``version`` the id sets only grow, so two documents of the same version merge by
    union (:meth:`merge`); any change that drops ids (a state change, a success clearing the failure
    count, a new half-open round) increments ``version``.

    :param state: closed, open or half-open.
    :param consecutive_failures: failures since the breaker last closed or saw a success; while
        closed it equals ``len(failure_ids)``.
    :param opened_at: when it last opened (epoch seconds).
    :param failure_ids: event ids of the failures counted while closed.
    :param trial_ids: event ids of the trial calls admitted while half-open.
    :param success_ids: event ids of the trial calls that succeeded while half-open.
    :param last_error: the last failure, ``"Class: message"``, at most 500 characters.
    :param updated_at: when the document was written (epoch seconds).
    :param updated_by: who wrote it, e.g. ``dag.task.run_id.try`` or ``host:pid``.
    :param version: grows with every state change and every reset of an id set; with the state's
        severity (open > half-open > closed) it orders conflicting decisions.
    :param opened_with: the policy of the process that opened the breaker (reset timeout, threshold,
        trial calls), kept while it is open or half-open and cleared when it closes. Every reader
        applies its reset timeout and trial calls instead of its own (:meth:`effective_policy`), so all
        tasks agree on when the breaker turns half-open. ``None`` in documents written before it existed:
        readers then use their own policy, as they always did.
    """

    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    opened_at: float | None = None
    failure_ids: tuple[str, ...] = ()
    trial_ids: tuple[str, ...] = ()
    success_ids: tuple[str, ...] = ()
    last_error: str | None = None
    updated_at: float = 0.0
    updated_by: str = ""
    version: int = 0
    opened_with: StoredPolicy | None = None

    @property
    def half_open_trials_started(self) -> int:
        """Trial calls admitted in the current half-open round."""
        return len(self.trial_ids)

    @property
    def half_open_successes(self) -> int:
        """Trial calls that succeeded in the current half-open round."""
        return len(self.success_ids)

    @property
    def rank(self) -> tuple[int, int]:
        """``(version, severity)``: of two conflicting documents, the higher rank is the newer decision."""
        return self.version, _SEVERITY[self.state]

    def retry_at(self, reset_timeout_s: float) -> float | None:
        """When an open breaker turns half-open (epoch seconds); ``None`` if it never opened.

        :param reset_timeout_s: the reader's reset timeout, used only when the document does not carry
            the opener's (``opened_with``, which always wins).
        """
        if self.opened_at is None:
            return None
        if self.opened_with is not None and self.state is not CircuitState.CLOSED:
            reset_timeout_s = self.opened_with.reset_timeout_s
        return self.opened_at + reset_timeout_s

    def effective_policy(self, policy: CircuitBreakerPolicy) -> CircuitBreakerPolicy:
        """The policy a reader applies to this document: its own, with the opener's reset timeout,
        threshold and trial calls while the document carries them (open or half-open).

        :param policy: the reader's own policy.
        """
        stored = self.opened_with
        if stored is None or self.state is CircuitState.CLOSED:
            return policy
        if (stored.reset_timeout_s, stored.failure_threshold, stored.half_open_max_attempts) == (
            policy.reset_timeout_s,
            policy.failure_threshold,
            policy.half_open_max_attempts,
        ):
            return policy
        return policy.model_copy(
            update={
                "reset_timeout_s": stored.reset_timeout_s,
                "failure_threshold": stored.failure_threshold,
                "half_open_max_attempts": stored.half_open_max_attempts,
            }
        )

    # ------------------------------------------------------------------------------ serialisation

    def to_json(self) -> dict[str, Any]:
        """The document as a JSON-compatible dict (with the derived counts, for people reading it)."""
        doc = dataclasses.asdict(self)
        doc.update(
            state=self.state.value,
            failure_ids=list(self.failure_ids),
            trial_ids=list(self.trial_ids),
            success_ids=list(self.success_ids),
            half_open_trials_started=self.half_open_trials_started,
            half_open_successes=self.half_open_successes,
        )
        if self.opened_with is None:
            doc.pop("opened_with")
        return doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes | None) -> BreakerSnapshot:
        """Read a document. Missing keys take their defaults; a corrupt document is logged and read as
        a fresh closed breaker (it never raises).

        :param data: the document, as a dict or as JSON text.
        """
        try:
            doc = json.loads(data) if isinstance(data, str | bytes) else data
            if doc is None:
                return cls()
            if not isinstance(doc, Mapping):
                raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
            last_error = doc.get("last_error")
            return cls(
                state=CircuitState(doc.get("state", CircuitState.CLOSED.value)),
                consecutive_failures=int(doc.get("consecutive_failures", 0)),
                opened_at=_optional_float(doc.get("opened_at")),
                failure_ids=_ids(doc.get("failure_ids", ())),
                trial_ids=_ids(doc.get("trial_ids", ())),
                success_ids=_ids(doc.get("success_ids", ())),
                last_error=None if last_error is None else str(last_error),
                updated_at=float(doc.get("updated_at", 0.0)),
                updated_by=str(doc.get("updated_by", "")),
                version=int(doc.get("version", 0)),
                opened_with=_stored_policy(doc.get("opened_with")),
            )
        except (TypeError, ValueError) as exc:
            log.warning("Circuit breaker document is corrupt (%s); reading it as a fresh closed breaker", exc)
            return cls()

    # --------------------------------------------------------------------------- state machine

    def _move(self, state: CircuitState, now: float, who: str, **changes: Any) -> BreakerSnapshot:
        """The next version: a new state, or the same state with an id set reset."""
        return dataclasses.replace(
            self, state=state, version=self.version + 1, updated_at=now, updated_by=who, **changes
        )

    def _touch(self, now: float, who: str, **changes: Any) -> BreakerSnapshot:
        """The same version with ids added."""
        return dataclasses.replace(self, updated_at=now, updated_by=who, **changes)

    def _stale(self, policy: CircuitBreakerPolicy, now: float) -> bool:
        return now - self.updated_at >= policy.reset_timeout_s

    def _with_failure_ids(
        self, ids: tuple[str, ...], policy: CircuitBreakerPolicy, now: float, who: str, error: str | None
    ) -> BreakerSnapshot:
        if len(ids) >= policy.failure_threshold:
            return self._move(
                CircuitState.OPEN,
                now,
                who,
                consecutive_failures=len(ids),
                opened_at=now,
                failure_ids=(),
                last_error=error,
                opened_with=StoredPolicy.of(policy),
            )
        return self._touch(now, who, consecutive_failures=len(ids), failure_ids=ids, last_error=error)

    def _with_success_ids(
        self, ids: tuple[str, ...], policy: CircuitBreakerPolicy, now: float, who: str
    ) -> BreakerSnapshot:
        if len(ids) >= policy.half_open_max_attempts:
            return self._move(
                CircuitState.CLOSED,
                now,
                who,
                consecutive_failures=0,
                opened_at=None,
                failure_ids=(),
                trial_ids=(),
                success_ids=(),
                opened_with=None,
            )
        return self._touch(now, who, success_ids=ids)

    def refused_until(self, policy: CircuitBreakerPolicy, now: float) -> float | None:
        """When a call made ``now`` may be tried again, or ``None`` if the breaker admits it.

        Closed admits every call. Open refuses until the reset timeout has passed. Half-open admits
        up to ``half_open_max_attempts`` trial calls, and one more whenever the half-open document is
        older than the reset timeout (the trial callers probably died); it refuses the others for a
        short probe interval.

        :param policy: the breaker's policy (the opener's, stored in the document, wins: see
            :meth:`effective_policy`).
        :param now: the current time (epoch seconds).
        """
        policy = self.effective_policy(policy)
        if self.state is CircuitState.OPEN:
            retry_at = self.retry_at(policy.reset_timeout_s)
            return retry_at if retry_at is not None and now < retry_at else None
        if self.state is CircuitState.HALF_OPEN and not (
            len(self.trial_ids) < policy.half_open_max_attempts or self._stale(policy, now)
        ):
            return now + min(policy.reset_timeout_s, MAX_PROBE_INTERVAL_S)
        return None

    def with_trial(
        self, policy: CircuitBreakerPolicy, *, trial_id: str, now: float, who: str
    ) -> BreakerSnapshot:
        """Admit a trial call (only call it when :meth:`refused_until` returned ``None``).

        Open turns half-open with this trial; half-open adds it, or, when stale, starts a new round
        with it; closed needs no trial and is returned unchanged.

        :param policy: the breaker's policy.
        :param trial_id: a unique id for this trial.
        :param now: the current time (epoch seconds).
        :param who: the writer.
        """
        policy = self.effective_policy(policy)
        if self.state is CircuitState.OPEN or (
            self.state is CircuitState.HALF_OPEN and self._stale(policy, now)
        ):
            return self._move(CircuitState.HALF_OPEN, now, who, trial_ids=(trial_id,), success_ids=())
        if self.state is CircuitState.CLOSED or trial_id in self.trial_ids:
            return self
        return self._touch(now, who, trial_ids=(*self.trial_ids, trial_id))

    def with_failure(
        self, policy: CircuitBreakerPolicy, *, event_id: str, now: float, who: str, error: str
    ) -> BreakerSnapshot:
        """Count a failure (transient or system). Idempotent: the same ``event_id`` counts once.

        Closed counts it and opens at ``failure_threshold``; half-open reopens; open stays as it
        is (``opened_at`` never moves forward).

        :param policy: the breaker's policy.
        :param event_id: a unique id for this failure.
        :param now: the current time (epoch seconds).
        :param who: the writer.
        :param error: ``"Class: message"`` of the failure.
        """
        error = error[:MAX_ERROR_CHARS]
        if self.state is CircuitState.HALF_OPEN:
            return self._move(
                CircuitState.OPEN,
                now,
                who,
                consecutive_failures=self.consecutive_failures + 1,
                opened_at=now,
                trial_ids=(),
                success_ids=(),
                last_error=error,
                opened_with=self.opened_with or StoredPolicy.of(policy),
            )
        if self.state is CircuitState.OPEN or event_id in self.failure_ids:
            return self
        return self._with_failure_ids((*self.failure_ids, event_id), policy, now, who, error)

    def with_success(
        self, policy: CircuitBreakerPolicy, *, event_id: str, now: float, who: str
    ) -> BreakerSnapshot:
        """Record a success. Idempotent: the same ``event_id`` counts once.

        Closed clears its failure count (unchanged when already zero, so the healthy path never
        writes); half-open counts the success and closes after ``half_open_max_attempts`` of them;
        open stays open: the success raced with a newer decision to open, and a breaker does not
        fight other writers.

        :param policy: the breaker's policy.
        :param event_id: a unique id for this success.
        :param now: the current time (epoch seconds).
        :param who: the writer.
        """
        if self.state is CircuitState.CLOSED:
            if self.consecutive_failures == 0 and not self.failure_ids:
                return self
            return self._move(CircuitState.CLOSED, now, who, consecutive_failures=0, failure_ids=())
        if self.state is CircuitState.OPEN or event_id in self.success_ids:
            return self
        return self._with_success_ids((*self.success_ids, event_id), self.effective_policy(policy), now, who)

    def merge(
        self, read: BreakerSnapshot, policy: CircuitBreakerPolicy, *, now: float, who: str
    ) -> BreakerSnapshot:
        """Reconcile what this process knows (``self``) with a document it has just ``read``.

        The higher rank wins; at the same rank, failure ids (closed) and success ids (half-open) are
        united, which may reach the threshold and change state. Trial ids are never united: a trial
        is admitted only if it survives in the stored document. The result equals ``read`` when
        ``read`` already contains everything ``self`` knows.

        :param read: the document just read from the store.
        :param policy: the breaker's policy.
        :param now: the current time (epoch seconds).
        :param who: the writer, if the result has to be written back.
        """
        if read.rank != self.rank:
            return read if read.rank > self.rank else self
        if read.state is CircuitState.CLOSED:
            ids = _union(read.failure_ids, self.failure_ids)
            if ids != read.failure_ids:
                return read._with_failure_ids(ids, policy, now, who, self.last_error or read.last_error)
        elif read.state is CircuitState.HALF_OPEN:
            ids = _union(read.success_ids, self.success_ids)
            if ids != read.success_ids:
                return read._with_success_ids(ids, read.effective_policy(policy), now, who)
        return read


def _stored_policy(data: Any) -> StoredPolicy | None:
    try:
        return StoredPolicy.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning(
            "Circuit breaker document: its opened_with policy is unreadable (%r); readers use their own", exc
        )
        return None


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


class BreakerStore(ABC):
    """Where breaker documents live. Writes are last-writer-wins; no compare-and-set is needed."""

    @abstractmethod
    def load(self, name: str) -> BreakerSnapshot | None:
        """Read the document of breaker ``name``; ``None`` if there is none.

        :param name: the breaker's name.
        """

    @abstractmethod
    def save(self, name: str, snap: BreakerSnapshot) -> None:
        """Write (upsert) the document of breaker ``name``.

        :param name: the breaker's name.
        :param snap: the document.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete the document of breaker ``name`` (the breaker reads as a fresh closed one).

        :param name: the breaker's name.
        """


class InMemoryBreakerStore(BreakerStore):
    """A thread-safe in-process store that keeps JSON text, like an Airflow Variable would.

    ``documents`` maps names to the stored JSON text; ``loads`` and ``saves`` count the calls.
    """

    def __init__(self) -> None:
        self.documents: dict[str, str] = {}
        self.loads = 0
        self.saves = 0
        self._lock = threading.Lock()

    def load(self, name: str) -> BreakerSnapshot | None:
        with self._lock:
            self.loads += 1
            text = self.documents.get(name)
        return None if text is None else BreakerSnapshot.from_json(text)

    def save(self, name: str, snap: BreakerSnapshot) -> None:
        text = json.dumps(snap.to_json())
        with self._lock:
            self.saves += 1
            self.documents[name] = text

    def delete(self, name: str) -> None:
        with self._lock:
            self.documents.pop(name, None)


def variable_key(name: str) -> str:
    """The Airflow Variable key of breaker ``name``: ``etl_circuit_breaker__<name>``.

    Characters other than ``[A-Za-z0-9_.-]`` become ``_``; a key longer than Airflow's 250-character
    limit is cut and ends with a hash of the full name, so distinct names stay distinct.

    :param name: the breaker's name.
    """
    key = _VARIABLE_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if len(key) <= _MAX_VARIABLE_KEY:
        return key
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{key[: _MAX_VARIABLE_KEY - len(digest) - 1]}-{digest}"


@dataclass(frozen=True)
class TransitionEvent:
    """A state change of a circuit breaker, passed to ``on_transition`` (e.g. for metrics or alerts).

    :param name: the breaker's name.
    :param from_state: the state before.
    :param to_state: the state after.
    :param at: when (epoch seconds).
    :param reason: why, in words.
    """

    name: str
    from_state: CircuitState
    to_state: CircuitState
    at: float
    reason: str


_REASONS = {
    (CircuitState.CLOSED, CircuitState.OPEN): "{failures} consecutive failures, last: {error}",
    (CircuitState.HALF_OPEN, CircuitState.OPEN): "a trial call failed: {error}",
    (CircuitState.OPEN, CircuitState.HALF_OPEN): "reset timeout elapsed; admitting a trial call",
    (CircuitState.HALF_OPEN, CircuitState.CLOSED): "trial calls succeeded",
}
_RESTORED = "restoring a newer decision that a stale concurrent write had replaced"


class SharedCircuitBreaker:
    """A circuit breaker whose state is shared by every process that uses the same name and store.

    Closed, it lets calls through and counts consecutive transient or system failures (data errors
    never count); at ``failure_threshold`` it opens and refuses calls with :class:`CircuitOpenError`
    until ``reset_timeout_s`` has passed; then it turns half-open and admits
    ``half_open_max_attempts`` trial calls: that many successes close it, one failure reopens it.

    **Consistency model.** The store offers last-writer-wins upserts and no compare-and-set
    (Airflow Variables), so there is no lock and no atomic read-modify-write.

    * Every decision re-reads the document first: one read per call on the healthy path (a success
      after a clean closed read writes nothing), and one write per change followed by a read-back
      (repeated, up to 5 times, while concurrent writers keep overwriting it).
    * Transitions are pure functions of (document, event) and idempotent: every failure, success and
      trial carries a random event id, counts are sets of those ids, and an open breaker ignores
      failures, so re-applying an event yields the same document and ``opened_at`` never moves
      forward while open.
    * Documents are ordered by ``(version, severity)`` (:attr:`BreakerSnapshot.rank`); within one
      version the id sets only grow, so two documents of the same rank merge by union
      (:meth:`BreakerSnapshot.merge`). When two writers decide different states from the same
      document, the more severe state wins (open > half-open > closed).
    * Each breaker instance remembers the newest document it has read or written and merges every
      read with it; if the store is behind (a lost update, or a stale write that erased an open
      state), it writes the merge back. So an event is lost only if no live instance that knows it
      reads the store afterwards, and a stale closed write cannot keep erasing an open decision
      that some live instance has seen. Deleting the document (a manual reset) is always accepted.
    * A trial is admitted only if its id is still in the document read back after writing it, so
      of the callers racing for the half-open slots the last writers win and the others are refused.

    Design goal, to be measured with concurrent tasks: at most ``failure_threshold +
    half_open_max_attempts + (concurrency - 1)`` calls reach the protected system per open cycle,
    i.e. the failures that open it, the trial calls, and at most one call in flight per other
    process when it opens. Without compare-and-set no bound is absolute: it holds while a
    read-modify-write (two store round trips) is short next to the time between one process's
    calls; a writer stalled across other writers' whole cycles can still erase their updates, which
    then delays opening by the failures erased.

    :param name: the breaker's name; every process protecting the same system uses the same one.
    :param policy: a :class:`CircuitBreakerPolicy` or its configuration.
    :param store: where the shared document lives.
    :param clock: wall-clock time in epoch seconds (shared across hosts, so not monotonic).
    :param who: the writer's identity recorded in the document (default ``host:pid``).
    :param classifier: sorts failures into transient, system and data errors.
    :param on_transition: called with a :class:`TransitionEvent` on every state change this instance
        writes (racing instances may each report the same change); its errors are logged, not raised.
    """

    def __init__(
        self,
        name: str,
        policy: CircuitBreakerPolicy | Mapping[str, Any] | None,
        store: BreakerStore,
        *,
        clock: Callable[[], float] = time.time,
        who: str = "",
        classifier: Callable[[BaseException], ErrorKind | None] = classify_any,
        on_transition: Callable[[TransitionEvent], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = CircuitBreakerPolicy.from_config(policy)
        self.store = store
        self.clock = clock
        self.who = who or f"{socket.gethostname()}:{os.getpid()}"
        self.classifier = classifier
        self.on_transition = on_transition
        self.variable_key = variable_key(name)
        self._known: BreakerSnapshot | None = None
        self._known_lock = threading.Lock()
        self._policy_noted: float | None = None

    # ---------------------------------------------------------------------------------- public

    def state(self) -> BreakerSnapshot:
        """The current document (a fresh closed one if the store has none)."""
        return self._load()

    def before_call(self) -> None:
        """Admit a call or raise :class:`CircuitOpenError` (with ``retry_at``) if the breaker refuses it."""
        self._admit()

    def refusal(self) -> CircuitOpenError | None:
        """The :class:`CircuitOpenError` a call made now would get, or ``None`` if it would be admitted.

        Read-only: unlike :meth:`before_call` it never takes a half-open trial slot.
        """
        if not self.policy.enabled:
            return None
        snap = self._load()
        retry_at = snap.refused_until(self.policy, self.clock())
        return None if retry_at is None else self._refusal(retry_at, snap)

    def record_success(self) -> None:
        """Record that a call succeeded."""
        self._succeeded(None)

    def record_failure(self, exc: BaseException) -> ErrorKind:
        """Record that a call failed; data errors are not counted.

        :param exc: the exception of the failed call.
        :return: its classification.
        """
        kind = self.classifier(exc) or ErrorKind.SYSTEM
        if not self.policy.enabled or kind is ErrorKind.DATA:
            return kind
        event_id, error = _new_id(), f"{type(exc).__name__}: {exc}"
        self._commit(
            lambda snap, now: snap.with_failure(
                self.policy, event_id=event_id, now=now, who=self.who, error=error
            )
        )
        return kind

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker and return its result.

        Exceptions of ``fn`` are re-raised unchanged; a failure to record the outcome in the store
        is logged and never hides them.

        :param fn: the function.
        :param args: its positional arguments.
        :param kwargs: its keyword arguments.
        :raises CircuitOpenError: if the breaker refuses the call (``fn`` is not called).
        """
        seen = self._admit()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._record_quietly(self.record_failure, exc)
            raise
        self._record_quietly(self._succeeded, seen)
        return result

    def reset(self, who: str = "") -> BreakerSnapshot:
        """Close the breaker and clear its counts (for a person or a CLI).

        :param who: who resets it, recorded in the document and the log.
        """
        who = who or self.who
        before = self._load()
        after = BreakerSnapshot(version=before.version + 1, updated_at=self.clock(), updated_by=who)
        self._write(before, after, f"reset by {who}")
        return after

    def force_open(self, reason: str) -> BreakerSnapshot:
        """Open the breaker now, for ``reset_timeout_s`` (for a person or a CLI).

        :param reason: why, recorded as its last error and in the log.
        """
        before, now = self._load(), self.clock()
        after = before._move(
            CircuitState.OPEN,
            now,
            self.who,
            opened_at=now,
            failure_ids=(),
            trial_ids=(),
            success_ids=(),
            last_error=f"forced open: {reason}"[:MAX_ERROR_CHARS],
            opened_with=StoredPolicy.of(self.policy),
        )
        self._write(before, after, f"forced open: {reason}")
        return after

    # --------------------------------------------------------------------------------- private

    def _load(self) -> BreakerSnapshot:
        snap = self._read_repair()[0]
        self._note_policy_conflict(snap)
        return snap

    def _note_policy_conflict(self, snap: BreakerSnapshot) -> None:
        """Say once per open cycle that this instance follows the opener's policy, not its own."""
        if snap.opened_with is None or snap.state is CircuitState.CLOSED:
            return
        differences = snap.opened_with.differs_from(self.policy)
        if not differences or self._policy_noted == snap.opened_at:
            return
        self._policy_noted = snap.opened_at
        log.warning(
            "Circuit breaker %r was opened by %s with another policy; following the opener's, stored in "
            "Variable %s: %s. Give every task protecting this system the same circuit_breaker settings "
            "(or a different name) to silence this.",
            self.name,
            snap.updated_by or "another process",
            self.variable_key,
            "; ".join(differences),
        )

    def _read_repair(self) -> tuple[BreakerSnapshot, bool]:
        """Read the document merged with what this instance knows, and whether the merge had to be
        written back because the store was behind."""
        read = self.store.load(self.name)
        if read is None:  # never written, or deleted by a person to reset the breaker
            with self._known_lock:
                self._known = None
            return BreakerSnapshot(), False
        with self._known_lock:
            known = self._known
        merged = read if known is None else known.merge(read, self.policy, now=self.clock(), who=self.who)
        if merged == read:
            self._remember(read)
            return read, False
        log.info(
            "Circuit breaker %r: the store lost an update (read %s, version %d); writing back %s, version %d",
            self.name,
            read.state.value,
            read.version,
            merged.state.value,
            merged.version,
        )
        self._write(read, merged)
        return merged, True

    def _remember(self, snap: BreakerSnapshot) -> None:
        with self._known_lock:
            if self._known is None or snap.rank >= self._known.rank:
                self._known = snap

    def _admit(self) -> BreakerSnapshot | None:
        """Admit a call; return the document it was admitted on (``None`` when disabled)."""
        if not self.policy.enabled:
            return None
        now, snap = self.clock(), self._load()
        if snap.state is CircuitState.CLOSED:
            return snap
        retry_at = snap.refused_until(self.policy, now)
        if retry_at is not None:
            raise self._refusal(retry_at, snap)
        trial_id = _new_id()
        self._write(snap, snap.with_trial(self.policy, trial_id=trial_id, now=now, who=self.who))
        current = self._load()
        if current.state is CircuitState.CLOSED or trial_id in current.trial_ids:
            return current
        log.info("Circuit breaker %r: another caller took the trial slot", self.name)
        probe = now + min(current.effective_policy(self.policy).reset_timeout_s, MAX_PROBE_INTERVAL_S)
        raise self._refusal(current.refused_until(self.policy, now) or probe, current)

    def _succeeded(self, seen: BreakerSnapshot | None) -> None:
        if not self.policy.enabled:
            return
        if seen is not None and seen.state is CircuitState.CLOSED and seen.consecutive_failures == 0:
            return
        event_id = _new_id()
        self._commit(
            lambda snap, now: snap.with_success(self.policy, event_id=event_id, now=now, who=self.who)
        )

    def _commit(self, event: Callable[[BreakerSnapshot, float], BreakerSnapshot]) -> None:
        """Apply ``event`` to the current document, write it if it changed, and read it back until the
        store holds everything this instance knows (each read-back merges and repairs a lost update).
        """
        current = self._load()
        changed = event(current, self.clock())
        if changed == current:
            return
        self._write(current, changed)
        for _ in range(_MAX_READ_BACKS):
            if not self._read_repair()[1]:
                return

    def _write(self, before: BreakerSnapshot, after: BreakerSnapshot, reason: str | None = None) -> None:
        self.store.save(self.name, after)
        self._remember(after)
        if before.state is after.state and reason is None:
            return
        reason = reason or _REASONS.get((before.state, after.state), _RESTORED).format(
            failures=after.consecutive_failures, error=after.last_error
        )
        log.warning(
            "Circuit breaker %r: %s -> %s (%d consecutive failures): %s",
            self.name,
            before.state.value,
            after.state.value,
            after.consecutive_failures,
            reason,
        )
        if self.on_transition is not None and before.state is not after.state:
            try:
                self.on_transition(
                    TransitionEvent(self.name, before.state, after.state, self.clock(), reason)
                )
            except Exception:
                log.exception("Circuit breaker %r: the on_transition callback failed", self.name)

    def _refusal(self, retry_at: float, snap: BreakerSnapshot) -> CircuitOpenError:
        return CircuitOpenError(
            self.name, datetime.fromtimestamp(retry_at, tz=UTC), self.variable_key, snap.last_error
        )

    def _record_quietly(self, record: Callable[[Any], object], arg: Any) -> None:
        try:
            record(arg)
        except Exception:
            log.exception("Circuit breaker %r: could not record the call's outcome", self.name)
