"""Helpers the middleware share for working on messages."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.broker import MessageProxy
from loguru import logger

__all__ = ["qualified_name", "record_failure", "requeue"]

#: Entries of ``message.options["error_history"]`` kept; the total is in ``error_count``.
HISTORY_LIMIT = 10
#: Characters of an error message kept in the history.
MESSAGE_LIMIT = 500


def qualified_name(kind: type) -> str:
    """``module.QualName`` of a class, without the module for builtins."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def record_failure(message: MessageProxy, error: BaseException, attempt: int) -> None:
    """Append a failed attempt to the message's capped error history.

    The history travels in ``message.options`` with every retry, so the last delivery
    and any dead letter tell the whole story.
    """
    history = message.options.setdefault("error_history", [])
    history.append(
        {
            "attempt": attempt,
            "error_type": qualified_name(type(error)),
            "message": str(error)[:MESSAGE_LIMIT],
            "time": int(time.time() * 1000),
        }
    )
    del history[:-HISTORY_LIMIT]
    message.options["error_count"] = message.options.get("error_count", 0) + 1


def requeue(
    broker: dramatiq.Broker,
    message: MessageProxy,
    delay: int | None,
    *,
    attempts: int = 3,
    backoff: int = 100,
) -> bool:
    """Enqueue ``message`` again, trying ``attempts`` times; fail it if all of them fail.

    Dramatiq acks the current delivery once the middleware is done with it, so a copy
    that was never enqueued would be lost. Failing the message makes the worker nack
    it instead, and the broker keeps it in its dead-letter queue.

    Returns:
      True when the copy was enqueued.
    """
    for number in range(1, attempts + 1):
        try:
            broker.enqueue(message.copy(), delay=delay or None)
        except Exception as error:
            logger.warning(
                "Enqueueing message {} again failed (try {} of {}): {}: {}",
                message.message_id,
                number,
                attempts,
                type(error).__name__,
                error,
            )
            if number < attempts:
                time.sleep(backoff * 2 ** (number - 1) / 1000)
        else:
            return True
    logger.error("Message {} could not be enqueued again; failing it", message.message_id)
    message.fail()
    return False
