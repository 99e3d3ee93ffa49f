"""Helpers the middleware share for working on messages."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import DecodeError
from loguru import logger

from .._redis import text

__all__ = ["ack_set", "guard_decoding", "proxied", "qualified_name", "record_failure", "requeue"]

#: Milliseconds a lost connection to the broker is waited out before a message that
#: must be enqueued again is failed instead.
BROKER_OUTAGE = 60_000
#: Longest pause between two tries at enqueueing, in milliseconds.
_MAX_PAUSE = 2_000
_CONNECTION_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    dramatiq.errors.BrokerConnectionError,
)

#: Called with (queue name, message id or None, body, error) for a body set aside.
OnUndecodable = Callable[[str, "str | None", bytes, BaseException], None]

#: Entries of ``message.options["error_history"]`` kept; the total is in ``error_count``.
HISTORY_LIMIT = 10
#: Characters of an error message kept in the history.
MESSAGE_LIMIT = 500


def proxied(message: MessageProxy | dramatiq.Message[Any]) -> dramatiq.Message[Any]:
    """The message a proxy wraps (a message is its own), for reading fields on a hot path.

    A proxy reaches each field of its message through ``__getattr__``, which Python
    calls only after the normal lookup failed: about 0.8 µs a field, where reading the
    message's own field costs a few dozen nanoseconds, and the middleware read a dozen
    fields a message.
    """
    found: dramatiq.Message[Any] = message.__dict__.get("_message", message)
    return found


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
    outage: int = BROKER_OUTAGE,
) -> bool:
    """Enqueue ``message`` again; fail it when that cannot be done.

    Dramatiq acks the current delivery once the middleware is done with it, so a copy
    that was never enqueued would be lost. Failing the message makes the worker nack
    it instead, and the broker keeps it in its dead-letter queue.

    An error of the enqueue is tried ``attempts`` times, backing off from ``backoff``
    milliseconds. A lost connection to the broker is waited out for up to ``outage``
    milliseconds, as Dramatiq's worker waits to ack: a broker restarting is no reason
    to dead-letter the message, which would leave its import unfinished.

    Returns:
      True when the copy was enqueued.
    """
    number = 0
    started = time.monotonic()
    # As Dramatiq's Retries stamps its copies: the copy is a new delivery (DeathLimit).
    message.options["requeue_timestamp"] = int(time.time() * 1000)
    while True:
        number += 1
        try:
            broker.enqueue(message.copy(), delay=delay or None)
        except Exception as error:
            disconnected = isinstance(error, _CONNECTION_ERRORS)
            waited = (time.monotonic() - started) * 1000
            if (number >= attempts and not disconnected) or (disconnected and waited >= outage):
                logger.error(
                    "Message {} could not be enqueued again ({}: {}); failing it",
                    message.message_id,
                    type(error).__name__,
                    error,
                )
                message.fail()
                return False
            pause = min(backoff * 2 ** min(number - 1, 10), _MAX_PAUSE)
            logger.warning(
                "Enqueueing message {} again failed (try {}), again in {} ms: {}: {}",
                message.message_id,
                number,
                pause,
                type(error).__name__,
                error,
            )
            time.sleep(pause / 1000)
        else:
            return True


def ack_set(broker: RedisBroker, queue_name: str) -> str:
    """The key of the set of ``queue_name``'s messages this RedisBroker has fetched and
    not yet acked or nacked (Dramatiq's own layout)."""
    return f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"


def guard_decoding(broker: dramatiq.Broker, on_undecodable: OnUndecodable) -> None:
    """Make the Redis consumers of ``broker`` set an undecodable body aside, not die of it.

    Dramatiq's Redis consumer decodes each fetched body; one that is not a message (a
    foreign producer, another encoder, corruption) raises out of the consumer, which
    the worker then replaces, dropping the messages it had prefetched: they stay in
    the worker's ack set until its heartbeat expires. Guarded, the body is nacked to the
    queue's dead-letter queue, as Dramatiq's RabbitMQ consumer does, and
    ``on_undecodable`` is told; the consumer goes on with the next message.

    It also requeues what a consumer strands when its connection to Redis is lost
    (see ``_Guarded``), so a Redis restart does not leave messages in the ack set of
    a worker that lives on. Other brokers are left as they are. Guarding twice
    changes nothing.
    """
    if not isinstance(broker, RedisBroker) or getattr(broker, "_decoding_guarded", False):
        return
    consume = broker.consume

    queues: dict[str, _QueueState] = defaultdict(_QueueState)

    def guarded(queue_name: str, prefetch: int = 1, timeout: int = 5_000) -> Consumer:
        state = queues[queue_name]
        if state.lost_connection:
            state.reconcile(broker, queue_name)
        inner = consume(queue_name, prefetch, timeout)
        return _Guarded(inner, broker, on_undecodable, state)  # type: ignore[return-value]

    broker.consume = guarded  # type: ignore[method-assign]
    broker._decoding_guarded = True  # type: ignore[attr-defined]


class _QueueState:
    """What this worker's consumers of one queue hold, shared across their restarts."""

    def __init__(self) -> None:
        self.held: set[str] = set()  # handed to the worker, not yet acked or nacked
        self.lost_connection = False
        self.lock = threading.Lock()

    def reconcile(self, broker: RedisBroker, queue_name: str) -> None:
        """Requeue what this worker's ack set holds that no thread of it still has.

        After a lost connection, Dramatiq's worker replaces the consumer and forgets
        what it held: prefetched messages not yet handed over, delayed ones it kept in
        memory, and a fetch whose reply was lost on the way. They would stay in this
        worker's ack set until it died. Requeueing an id acked meanwhile does nothing.
        """
        acks = ack_set(broker, queue_name)
        try:
            members = {text(m) for m in broker.client.smembers(acks)}
            with self.lock:
                stranded = sorted(members - self.held)
            if stranded:
                broker.do_requeue(queue_name, *stranded)
        except Exception as error:  # still unreachable: the next consumer tries again
            logger.warning("Could not requeue stranded messages of {} yet: {}", queue_name, error)
            return
        self.lost_connection = False
        if stranded:
            logger.info(
                "Requeued {} messages of {} stranded by a lost connection",
                len(stranded),
                queue_name,
            )


class _Guarded:
    """A Redis consumer that sets undecodable bodies aside, and notes what it hands over
    so what a lost connection strands can be requeued (see :meth:`_QueueState.reconcile`);
    everything else is the consumer's."""

    def __init__(
        self, inner: Any, broker: RedisBroker, on_undecodable: OnUndecodable, state: _QueueState
    ) -> None:
        self._inner = inner
        self._broker = broker
        self._on_undecodable = on_undecodable
        self._state = state
        # Delayed messages wait in the worker's memory, which a lost connection empties.
        self._delayed = inner.queue_name.endswith(".DQ")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __iter__(self) -> Iterator[MessageProxy | None]:
        return self

    def __next__(self) -> MessageProxy | None:
        try:
            message: MessageProxy | None = next(self._inner)
        except DecodeError as error:
            self._set_aside(error.data, error.error or error)
            return None  # as on an idle poll: the worker thread carries on
        except dramatiq.errors.BrokerConnectionError:
            with self._state.lock:
                if self._delayed:
                    self._state.held.clear()
                self._state.lost_connection = True
            raise
        if message is not None:
            with self._state.lock:
                self._state.held.add(_redis_id(message))
        return message

    def ack(self, message: MessageProxy) -> None:
        self._inner.ack(message)
        with self._state.lock:
            self._state.held.discard(_redis_id(message))

    def nack(self, message: MessageProxy) -> None:
        self._inner.nack(message)
        with self._state.lock:
            self._state.held.discard(_redis_id(message))

    def _set_aside(self, body: bytes, error: BaseException) -> None:
        queue_name = self._inner.queue_name
        # The fetch returned bodies, not ids: find the body's id in the queue's hash.
        key = f"{self._broker.namespace}:{queue_name}.msgs"
        message_id = None
        try:
            for field, value in self._broker.client.hscan_iter(key, count=1_000):
                if value == body:
                    message_id = text(field)
                    self._broker.do_nack(queue_name, message_id)
                    break
            self._on_undecodable(queue_name, message_id, body, error)
        except Exception as failure:  # never let a poison body stop the consumer
            logger.opt(exception=failure).error(
                "Could not set aside an undecodable message on {}: {}", queue_name, failure
            )


def _redis_id(message: MessageProxy) -> str:
    fields = proxied(message)
    # Not .get(key, fields.message_id): Dramatiq's Redis messages all carry the option.
    found = fields.options.get("redis_message_id")
    return str(found if found is not None else fields.message_id)
