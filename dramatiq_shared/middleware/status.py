"""Lifecycle status events for the messages of an import.

A message carries an import id as the argument ``import_id`` of its actor (by keyword
or position) or as the message option of that name, and a note id likewise, as
``note_id``. For such a message the middleware publishes:

==============  ===========================================================================
PROCESSING      when it starts
COMPLETED       when it succeeds
RETRYING        when it failed and runs again: a retry (metadata: attempt, max_attempts,
                delay, error_type), or a deferral (``Defer``, an open circuit breaker, a
                shutdown), with the reason
FAILED          when it failed for good (metadata: error_type, error_message, attempt),
                or was failed before it ran (``DeathLimit``, Dramatiq's ``AgeLimit``)
==============  ===========================================================================

The event's context is the actor option ``status_context`` (default: the actor's
name); ``status=False`` opts an actor out. Put the middleware before
:class:`~dramatiq_shared.middleware.Retry` in the broker's list, so it reads Retry's
decision (from the message's :class:`~dramatiq_shared.middleware.delivery.Delivery`),
and after :class:`~dramatiq_shared.middleware.CircuitBreaker`, so a message
the breaker holds back is not reported as started. A failure to publish is logged and
counted; it never touches the message.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from loguru import logger

from .._checks import check_text
from ..errors import ConfigError
from ..status.broadcaster import Broadcaster
from ..status.events import MAX_TEXT, NoteStatus, StatusEvent
from .delivery import delivery, refusal
from .messages import qualified_name

__all__ = ["StatusBroadcast"]


class _Reporting(NamedTuple):
    """What an actor's events say of it, worked out once per actor."""

    enabled: bool
    context: str
    actor: dramatiq.Actor[..., Any] | None


class StatusBroadcast(Middleware):
    """Publishes PROCESSING, COMPLETED, RETRYING and FAILED for messages of an import.

    Parameters:
      broadcaster: Where the events go.
    """

    def __init__(self, *, broadcaster: Broadcaster) -> None:
        if not isinstance(broadcaster, Broadcaster):
            raise ConfigError.invalid("broadcaster", broadcaster, "a Broadcaster")
        self.broadcaster = broadcaster
        self._actors: dict[str, _Reporting] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"status", "status_context"}

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        where = f"actor {actor.actor_name!r}"
        if not isinstance(actor.options.get("status", True), bool):
            raise ConfigError.invalid(f"{where}: status", actor.options["status"], "True or False")
        context = actor.options.get("status_context")
        if context is not None:
            check_text(f"{where}: status_context", context, max_length=MAX_TEXT, error=ConfigError)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._publish(broker, message, NoteStatus.PROCESSING, "started")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            self._publish(broker, message, NoteStatus.COMPLETED, "completed")
        else:
            self._report_failure(broker, message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        # Held back by a middleware that decided (a deferral), or failed before it ran.
        if delivery(message).decision is not None or message.failed:
            self._report_failure(broker, message, refusal(message))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.broadcaster.flush()

    def _report_failure(
        self, broker: dramatiq.Broker, message: MessageProxy, exception: BaseException | None
    ) -> None:
        decision = delivery(message).decision
        error_type = (decision and decision.error_type) or qualified_name(type(exception))
        runs_again = decision.action.runs_again if decision else not message.failed
        if runs_again:
            metadata: dict[str, Any] = {"error_type": error_type}
            if decision is not None:
                fields = (
                    ("attempt", decision.attempt),
                    ("max_attempts", decision.max_attempts),
                    ("delay", decision.delay),
                    ("reason", decision.reason or None),
                )
                metadata.update((key, value) for key, value in fields if value is not None)
            reason = (decision and decision.reason) or "it runs again"
            self._publish(broker, message, NoteStatus.RETRYING, f"retrying: {reason}", metadata)
        else:
            metadata = {"error_type": error_type, "error_message": str(exception or "")[:500]}
            if decision is not None:
                metadata["attempt"] = decision.attempt
            self._publish(broker, message, NoteStatus.FAILED, f"failed: {error_type}", metadata)

    def _reporting(self, broker: dramatiq.Broker, actor_name: str) -> _Reporting:
        reporting = self._actors.get(actor_name)
        if reporting is None:
            actor = broker.actors.get(actor_name)
            options = actor.options if actor else {}
            reporting = _Reporting(
                options.get("status") is not False,
                options.get("status_context") or actor_name,
                actor,
            )
            if actor is not None:  # one not declared here may be declared later
                self._actors[actor_name] = reporting
        return reporting

    def _publish(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        status: NoteStatus,
        what: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        current = delivery(message)
        actor_name = current.message.actor_name
        started = current.status_event
        try:
            if started is not None:
                # The delivery's PROCESSING event was checked: the next one is made from it.
                event = started.with_status(status, f"{actor_name} {what}", metadata)
            else:
                reporting = self._reporting(broker, actor_name)
                if not reporting.enabled:
                    return
                import_id, note_id = current.ids(reporting.actor)
                if import_id is None:
                    return
                event = StatusEvent(
                    import_id=str(import_id),
                    status=status,
                    note_id=None if note_id is None else str(note_id),
                    message=f"{actor_name} {what}",
                    context=reporting.context,
                    indent_level=1 if note_id is not None else 0,
                    metadata=metadata,
                )
                if status is NoteStatus.PROCESSING:
                    current.status_event = event
            self.broadcaster.publish(event)
        except Exception as error:
            self.broadcaster.count("failed")
            logger.opt(exception=error).error(
                "Could not publish {} for message {}: {}", status.value, message.message_id, error
            )
