"""Starting, inspecting and stopping in-process workers.

:func:`create_worker` starts a ``dramatiq.Worker`` and counts what its broker processes
in this process; :func:`get_worker_status` reports it; :func:`close_workers` stops
workers together and gracefully: messages being processed finish, and prefetched ones
go back to the broker at once rather than when the stopped worker's heartbeat expires.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from ._checks import check_int
from .errors import ConfigError
from .metrics import IN_FLIGHT

__all__ = [
    "MessageCounts",
    "WorkerStatus",
    "close_workers",
    "create_worker",
    "get_worker_status",
    "message_counts",
]

#: Marks, on a message proxy, a delivery MessageCounts saw start.
_COUNTED = "_dramatiq_shared_counted"

_started: weakref.WeakKeyDictionary[dramatiq.Worker, datetime] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's state; the counts are its broker's in this process since it started."""

    running: bool
    threads: int
    queues: tuple[str, ...]
    in_flight: int
    processed: int
    failed: int
    retried: int
    started_at: datetime | None


class MessageCounts(Middleware):
    """Counts messages in flight, processed, failed for good and run again.

    Only messages it saw start count: one that a middleware before it in the list
    skipped (Dramatiq tells every middleware of the skip) was never in flight here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = self.processed = self.failed = self.retried = 0

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        message.__dict__[_COUNTED] = True
        with self._lock:
            self.in_flight += 1
        IN_FLIGHT.inc()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.__dict__.pop(_COUNTED, None) is None:
            return
        IN_FLIGHT.dec()
        with self._lock:
            self.in_flight -= 1
            self.processed += 1
            if exception is not None:
                if message.failed:
                    self.failed += 1
                else:
                    self.retried += 1

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.__dict__.pop(_COUNTED, None) is None:
            return
        IN_FLIGHT.dec()
        with self._lock:
            self.in_flight -= 1


def message_counts(broker: dramatiq.Broker) -> MessageCounts:
    """The broker's MessageCounts middleware, added first in its list when missing."""
    found = next((m for m in broker.middleware if isinstance(m, MessageCounts)), None)
    if found is None:
        found = MessageCounts()
        broker.middleware.insert(0, found)  # first: it sees every message that starts
    return found


def create_worker(
    broker: dramatiq.Broker,
    *,
    queues: Iterable[str] | None = None,
    worker_threads: int = 8,
    worker_timeout: int = 1_000,
) -> dramatiq.Worker:
    """Start a worker on ``broker``.

    Parameters:
      broker: The broker.
      queues: The queues to consume; every declared queue when None. Default None.
      worker_threads: Worker threads. Default 8.
      worker_timeout: Milliseconds a worker thread waits for a message before checking
        whether it should stop. Default 1000.

    Returns:
      The started worker.

    Raises:
      ConfigError: When a queue is not declared on the broker, or a number is invalid.
    """
    check_int("worker_threads", worker_threads, minimum=1, error=ConfigError)
    check_int("worker_timeout", worker_timeout, minimum=1, error=ConfigError)
    chosen = None if queues is None else set(queues)
    declared = broker.get_declared_queues()
    if chosen is not None and not chosen <= declared:
        missing = sorted(chosen - declared)[0]
        raise ConfigError.invalid(
            "queues", missing, f"a declared queue ({', '.join(sorted(declared))})"
        )
    message_counts(broker)
    worker = dramatiq.Worker(
        broker, queues=chosen, worker_threads=worker_threads, worker_timeout=worker_timeout
    )
    worker.start()
    _started[worker] = datetime.now(timezone.utc)
    return worker


def close_workers(workers: Iterable[dramatiq.Worker], *, timeout: int = 30_000) -> None:
    """Stop ``workers`` together, each given ``timeout`` milliseconds to finish its messages."""
    stopping = [
        threading.Thread(target=_stop, args=(worker, timeout), name="close-worker")
        for worker in workers
    ]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join()


def _stop(worker: dramatiq.Worker, timeout: int) -> None:
    worker.stop(timeout=timeout)
    # Worker.stop requeues its work queue, but Dramatiq's Redis consumer also keeps
    # fetched messages it had not yet handed over in a cache that stop() leaves
    # alone: they would sit in the stopped worker's ack set until its heartbeat
    # expires (a minute by default) before another worker could take them.
    for thread in worker.consumers.values():
        consumer = thread.consumer
        cached = getattr(consumer, "message_cache", None)
        if consumer is None or not cached:
            continue
        messages = []
        for data in cached:
            try:
                messages.append(MessageProxy(Message.decode(data)))
            except DecodeError:  # left for the next consumer, which sets it aside
                continue
        consumer.requeue(messages)
        cached.clear()


def get_worker_status(worker: dramatiq.Worker) -> WorkerStatus:
    """What ``worker`` is doing, and what its broker processed in this process."""
    counts = message_counts(worker.broker)
    threads = [t for t in worker.workers if t.is_alive()]
    consumed = worker.consumer_whitelist or worker.broker.get_declared_queues()
    return WorkerStatus(
        running=bool(threads),
        threads=len(threads),
        queues=tuple(sorted(consumed)),
        in_flight=counts.in_flight,
        processed=counts.processed,
        failed=counts.failed,
        retried=counts.retried,
        started_at=_started.get(worker),
    )
