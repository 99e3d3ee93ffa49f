"""Worker heartbeats: each worker process says it is alive, in Redis, every few seconds.

A key per worker process (:meth:`dramatiq_shared.keys.Keys.worker`) holds its status
as JSON (host, pid, started, threads, queues, messages in flight, processed, failed,
retried, last beat) and expires after ``ttl``: a worker that died disappears by itself.
A heartbeat that cannot be written is logged (at most once a minute) and never touches
the messages. :func:`live_workers` reads them back; :func:`queue_depths` counts each
queue's ready, delayed and dead messages, on Redis and on RabbitMQ, and
:func:`stored_queues` finds the queues a Redis broker holds messages of, whether or not
a live worker declared them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import dramatiq
import redis
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.middleware import Middleware
from loguru import logger

from .._checks import check_int
from .._redis import text
from ..errors import ConfigError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..workers import MessageCounts, message_counts

__all__ = ["Heartbeat", "live_workers", "queue_depths", "stored_queues"]


class Heartbeat(Middleware):
    """Publishes this worker process's status to Redis while it runs.

    Parameters:
      client: The Redis client.
      interval: Milliseconds between heartbeats. Default 5000.
      ttl: Milliseconds a heartbeat lasts; a worker silent that long counts as gone.
        Default 15000 (three heartbeats).
      namespace: Prefix of the keys (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.

    Raises:
      ConfigError: When ``ttl`` is not longer than ``interval``, or a number is invalid.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        interval: int = 5_000,
        ttl: int = 15_000,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.client = client
        self.interval = check_int("interval", interval, minimum=10, error=ConfigError)
        self.ttl = check_int("ttl", ttl, minimum=interval + 1, error=ConfigError)
        self.key = Keys(namespace).worker(socket.gethostname(), os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -60.0

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        counts = message_counts(broker)
        started = datetime.now(timezone.utc).isoformat()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, args=(worker, counts, started), name="heartbeat", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.client.delete(self.key)
        except redis.RedisError as error:
            logger.warning("Could not remove heartbeat {}: {}", self.key, error)

    def _beat(self, worker: dramatiq.Worker, counts: MessageCounts, started: str) -> None:
        while True:
            status = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": started,
                "threads": sum(1 for t in worker.workers if t.is_alive()),
                "queues": sorted(worker.consumer_whitelist or worker.broker.get_declared_queues()),
                "in_flight": counts.in_flight,
                "processed": counts.processed,
                "failed": counts.failed,
                "retried": counts.retried,
                "beat_at": datetime.now(timezone.utc).isoformat(),
            }
            try:
                self.client.set(self.key, json.dumps(status), px=self.ttl)
            except redis.RedisError as error:
                if time.monotonic() - self._warned_at >= 60:
                    self._warned_at = time.monotonic()
                    logger.warning(
                        "Heartbeat could not be written: {}: {}", type(error).__name__, error
                    )
            if self._stop.wait(self.interval / 1000):
                return


def live_workers(client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
    """The workers whose heartbeat has not expired, by host and pid."""
    workers = []
    for key in client.scan_iter(match=Keys(namespace).worker_pattern(), count=100):
        raw = client.get(key)
        if raw:
            workers.append(json.loads(raw))
    return sorted(workers, key=lambda w: (w["host"], w["pid"]))


def queue_depths(
    broker: dramatiq.Broker, queues: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """Ready, delayed and dead messages of each queue (every declared one when None)."""
    names = sorted(queues if queues is not None else broker.get_declared_queues())
    if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ
        counts = {name: broker.get_queue_message_counts(name) for name in names}
        return {n: {"ready": r, "delayed": d, "dead": x} for n, (r, d, x) in counts.items()}
    client = getattr(broker, "client", None)
    if client is None:
        raise ConfigError(
            f"queue depths need a Redis or RabbitMQ broker, not {type(broker).__name__}"
        )
    namespace = getattr(broker, "namespace", "dramatiq")
    depths = {}
    for name in names:
        depths[name] = {
            "ready": int(client.llen(f"{namespace}:{name}")),
            "delayed": int(client.hlen(f"{namespace}:{dq_name(name)}.msgs")),
            "dead": int(client.zcard(f"{namespace}:{xq_name(name)}")),
        }
    return depths


def stored_queues(client: redis.Redis, namespace: str = "dramatiq") -> list[str]:
    """The queues of which a Redis broker in ``namespace`` holds messages: ready, delayed,
    being processed or dead (their ``.msgs`` hashes, which Redis drops when empty)."""
    prefix, suffix = f"{namespace}:", ".msgs"
    names = {
        q_name(text(key)[len(prefix) : -len(suffix)])
        for key in client.scan_iter(match=f"{prefix}*{suffix}", count=100)
    }
    return sorted(names)
