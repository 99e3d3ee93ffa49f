"""What a test reads back from the suite: decisions, failures, error records, transitions.

Each recorder is fed by the suite's own parts, never by parsing text: decisions and
failures by a middleware that reads each delivery's
:class:`~dramatiq_shared.middleware.delivery.Delivery` once the broker acks or nacks it,
error records by a loguru sink taking ErrorHandling's records, breaker transitions by a
pybreaker listener on every breaker of the stack. All of them are thread-safe: the
worker's threads write while the test reads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import dramatiq
import pybreaker
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from ..middleware.delivery import Action, Decision, delivery, seen

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["ErrorRecord", "Event", "Failure", "RecordedDecision", "Transition"]


@dataclass(frozen=True)
class RecordedDecision:
    """What the suite decided about one delivery of a message (see ``Decision``)."""

    actor: str
    message_id: str
    action: Action
    attempt: int
    max_attempts: int | None
    #: Milliseconds the copy was to wait, as chosen: the test's shortened wait is not it.
    delay: int | None
    reason: str
    error_type: str | None


@dataclass(frozen=True)
class Failure:
    """A message that failed for good: the broker nacked it to its dead-letter queue."""

    actor: str
    message_id: str
    queue: str
    #: What the actor raised, or what failed the message before it ran.
    error: BaseException
    decision: Decision | None

    def detail(self) -> str:
        """The message id, the attempt and the decision's reason, in words."""
        decision = self.decision
        if decision is None:
            return f"message {self.message_id}"
        of = "" if decision.max_attempts is None else f" of {decision.max_attempts}"
        return (
            f"message {self.message_id}, attempt {decision.attempt}{of},"
            f" {decision.action.value}: {decision.reason}"
        )


@dataclass(frozen=True)
class ErrorRecord:
    """One record ErrorHandling logged about a failed delivery ("Action execution failed",
    a deferral, a message failed before it ran), with every field bound to it."""

    level: str
    #: The record's text, such as ``"Action execution failed"``.
    message: str
    actor: str | None
    attempt: int | None
    max_attempts: int | None
    will_retry: bool
    error_type: str
    error_message: str
    #: Everything bound to the record: ``message_id``, ``queue``, ``import_id``,
    #: ``note_id``, ``duration_ms`` and the fields above.
    context: dict[str, Any]


class Event(NamedTuple):
    """One status event as streamed (the transport's wire form, read back)."""

    id: int
    status: str
    note_id: str | None
    context: str | None
    current_count: int | None
    total_count: int | None
    #: The attempt StatusBroadcast put in the event's metadata, when it did.
    attempt: int | None
    message: str | None
    #: All StatusBroadcast put in the event's metadata (``reason``, ``error_type``,
    #: ``error_message``, ``delay``, ``max_attempts``...); empty when none.
    metadata: dict[str, Any]

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Event:
        """The event of a transport's wire form (camelCase keys)."""
        return cls(
            wire["id"],
            wire["status"],
            wire.get("noteId"),
            wire.get("context"),
            wire.get("currentCount"),
            wire.get("totalCount"),
            (wire.get("metadata") or {}).get("attempt"),
            wire.get("message"),
            dict(wire.get("metadata") or {}),
        )


class Transition(NamedTuple):
    """A circuit breaker moving from one state to another."""

    breaker: str
    old: str
    new: str


class Outcomes(Middleware):
    """Notes the decision of every delivery and every message failed for good, as the
    broker acks or nacks it (when every middleware has decided)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: list[tuple[float, RecordedDecision]] = []
        self.failures: list[Failure] = []

    @property
    def decisions(self) -> list[RecordedDecision]:
        """The decisions in the order their deliveries started: a worker may ack a
        delivery after the retry it enqueued has already run."""
        with self._lock:
            return [decision for _, decision in sorted(self._decisions, key=lambda d: d[0])]

    def after_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._note(message, failed=False)

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._note(message, failed=True)

    def _note(self, message: MessageProxy, *, failed: bool) -> None:
        current = delivery(message) if seen(message) else None
        decision = current.decision if current is not None else None
        with self._lock:
            if current is not None and decision is not None:
                self._decisions.append(
                    (
                        current.started,
                        RecordedDecision(
                            message.actor_name,
                            message.message_id,
                            decision.action,
                            decision.attempt,
                            decision.max_attempts,
                            decision.delay,
                            decision.reason,
                            decision.error_type,
                        ),
                    )
                )
            if failed:
                error = getattr(message, "_exception", None) or Exception(
                    "failed with no exception kept"
                )
                self.failures.append(
                    Failure(
                        message.actor_name, message.message_id, message.queue_name, error, decision
                    )
                )


class ErrorRecords:
    """A loguru sink keeping ErrorHandling's records of failed deliveries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[ErrorRecord] = []

    @staticmethod
    def wanted(record: Any) -> bool:
        """Whether a loguru record is one of ErrorHandling's about a delivery."""
        return "will_retry" in record["extra"]

    def __call__(self, line: Message) -> None:
        record = line.record
        extra = dict(record["extra"])
        with self._lock:
            self.records.append(
                ErrorRecord(
                    record["level"].name,
                    record["message"],
                    extra.get("actor"),
                    extra.get("attempt"),
                    extra.get("max_attempts"),
                    bool(extra["will_retry"]),
                    extra.get("error_type", ""),
                    extra.get("error_message", ""),
                    extra,
                )
            )


class Transitions(pybreaker.CircuitBreakerListener):
    """Keeps every transition of the breakers it listens to, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.transitions: list[Transition] = []

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        with self._lock:
            self.transitions.append(
                Transition(cb.name or "", old_state.name if old_state else "", new_state.name)
            )
