"""DeathLimit: a message that keeps killing its worker process is failed, not run for ever.

Dramatiq counts a message's attempts in the message, so a run that kills its process
(an OOM kill, a segfault in a C extension, SIGKILL) is never counted: the broker hands
the message to the next worker, which it kills too, and so on (Dramatiq's issue
#213). This middleware counts every run where the count survives the process, in
Redis, before the actor starts, and clears it once the delivery has an outcome (the
broker acked or nacked it). A message that ran ``max_deaths`` times without an outcome
does not run again: it is failed with a :class:`~dramatiq_shared.errors.WorkerDiedError`
(how many runs, the last worker, when it started), and the rest of the suite treats it
as any final failure: a dead letter with that reason, FAILED for its import, Dramatiq's
``on_retry_exhausted`` sent.

A process that dies takes every message it runs with it, and the broker hands them
back together: counting the death against each would dead-letter messages whose only
fault was to run beside the killer. So a message that comes back with a death on its
count runs alone in its process: it waits for the messages in flight there to finish
(at most ``isolation_wait``), and none starts beside it. A death then is its own. A
bystander carries at most the one death it shared, and its lone run reaches an outcome
that clears it; the killer dies alone until it reaches ``max_deaths``. A process that
is killed from outside while a message runs alone (a deploy's SIGKILL, say) counts
against that message, which is why ``max_deaths`` is more than one.

Cost: one Redis command a message, on the worker thread before the actor, because a
count that is not in Redis when the process dies counts nothing: ``HSETNX`` of the
delivery's field in the hash ``{ns}:global:deliveries``, whose value
``runs|worker|started`` says who ran it last. A field that is already there is a
message coming back without an outcome; only such a message costs more (reading its
count, counting its lone run). Counts are cleared after the outcome in batches, one
``HDEL`` every ``flush_interval`` by a background thread, which also drops, every ten
minutes (or ``ttl``), counts whose message has not started for ``ttl`` (it never came
back). The
field is the message id with its ``retries`` and ``requeue_timestamp``: a retry of the
message, which follows an outcome, is a field of its own and starts clean even before
the clear of its predecessor lands.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from loguru import logger

from .._checks import check_int
from ..errors import ConfigError, WorkerDiedError
from ..keys import DEFAULT_NAMESPACE, Keys
from .delivery import Action, delivery, seen
from .isolation import ALONE, SHARED, Isolation
from .messages import qualified_name

__all__ = ["DeathLimit"]

#: Counts cleared by one ``HDEL``.
_CLEAR_BATCH = 500
#: Longest time, in seconds, between two sweeps for counts whose message never came back.
_PRUNE_EVERY = 600.0
#: Clears kept while Redis refuses them; beyond, the oldest are left to ``ttl``.
_PENDING_LIMIT = 100_000


class DeathLimit(Middleware):
    """Fails a message whose runs killed their worker process ``max_deaths`` times.

    Parameters:
      client: The Redis client the counts live in (any Redis every worker reaches).
      max_deaths: Runs without an outcome after which a message is failed; the
        ``max_deaths`` option of an actor or a message overrides it, None there or
        here counts nothing (and costs nothing). Default 3.
      isolation_wait: Milliseconds a message with a death on its count waits for the
        messages running beside it to finish before it runs anyway. Default 30000.
      flush_interval: Milliseconds between two batches of cleared counts. Default 100.
      ttl: Milliseconds a count whose message does not start again is kept: longer
        than the longest run and than a killed worker's messages take to come back.
        Default 86400000 (a day).
      namespace: Prefix of the keys (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.

    Raises:
      ConfigError: When a number is invalid.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_deaths: int | None = 3,
        isolation_wait: int = 30_000,
        flush_interval: int = 100,
        ttl: int = 86_400_000,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.max_deaths = _check_limit("max_deaths", max_deaths)
        self.isolation_wait = check_int(
            "isolation_wait", isolation_wait, minimum=0, error=ConfigError
        )
        self.flush_interval = check_int(
            "flush_interval", flush_interval, minimum=1, error=ConfigError
        )
        self.ttl = check_int("ttl", ttl, minimum=1_000, error=ConfigError)
        self.client = client
        self._key = Keys(namespace).deliveries
        self._isolation = Isolation()
        self._limits: dict[str, int | None] = {}
        self._pending: list[str] = []
        self._pruned_at = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._local = threading.local()
        self._connections: list[Any] = []  # redis-py Connections (it types them loosely)
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        self._warned_at = -60.0

    @property
    def actor_options(self) -> set[str]:
        return {"max_deaths"}

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        if "max_deaths" in actor.options:
            _check_limit(f"actor {actor.actor_name!r}: max_deaths", actor.options["max_deaths"])

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._worker = f"{socket.gethostname()}:{os.getpid()}"  # this process's, after a fork
        self._stop.clear()
        self._flusher = threading.Thread(target=self._flush_every, name="death-limit", daemon=True)
        self._flusher.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(5)
        self._flush()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.disconnect()

    # --- one delivery -------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        current = delivery(message)
        limit = self._limit(broker, current.message)
        if limit is None:
            return
        options = current.message.options
        field = "|".join(
            (
                current.message.message_id,
                str(options.get("retries", 0)),
                str(options.get("requeue_timestamp", 0)),
            )
        )
        # Joined before the count: a message waiting for one running alone has not run.
        self._isolation.enter()
        if self._first_run(field):
            current.death_watch = (field, SHARED)
            return
        self._isolation.leave(SHARED)
        runs, worker, started = self._read(field)
        if runs >= limit:
            current.death_watch = (field, "")
            error = WorkerDiedError(runs, worker, started)
            current.decide(
                Action.NOT_RETRYABLE, reason=str(error), error_type=qualified_name(WorkerDiedError)
            )
            message.fail()
            raise error
        logger.info(
            "Message {} was running when its worker died ({} of {} such runs): it runs alone",
            message.message_id,
            runs,
            limit,
        )
        self._isolation.enter_alone(self.isolation_wait / 1000)
        self._write(field, runs + 1)
        current.death_watch = (field, ALONE)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._release(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._release(message)

    def after_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._outcome(message)

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._outcome(message)

    def _limit(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> int | None:
        if "max_deaths" in message.options:
            try:
                return _check_limit("max_deaths", message.options["max_deaths"])
            except ConfigError as error:
                logger.error("Ignoring the max_deaths of message {}: {}", message.message_id, error)
        try:
            return self._limits[message.actor_name]
        except KeyError:
            actor = broker.actors.get(message.actor_name)
            options = actor.options if actor else {}
            limit = self._limits[message.actor_name] = options.get("max_deaths", self.max_deaths)
            return limit

    # A count Redis refuses is logged, and the message runs uncounted rather than not at
    # all; its clear at the outcome is harmless, as it clears only its own field.

    def _first_run(self, field: str) -> bool:
        """Count a run; False when the field was there: the message ran without an outcome."""
        try:
            return bool(self._command("HSETNX", self._key, field, self._value(1)))
        except redis.RedisError as error:
            self._warn("could not count a run of {}: {}", field, error)
            return True

    def _command(self, *args: Any) -> Any:
        """Run the per-message count on this worker thread's own connection: the pool's
        lock and health check cost a message about as much as the command itself (33 of
        71 µs of CPU here)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self.client.connection_pool.make_connection()
            with self._lock:
                self._connections.append(connection)
        try:
            connection.send_packed_command(connection.pack_command(*args), check_health=False)
            return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()  # a socket gone stale (Redis restarted): once more, anew
            connection.send_packed_command(connection.pack_command(*args))
            return connection.read_response()

    def _read(self, field: str) -> tuple[int, str, str]:
        """Runs, last worker and its start (ISO 8601) of the count of ``field``."""
        try:
            value = self.client.hget(self._key, field)
        except redis.RedisError as error:
            self._warn("could not read the count of {}: {}", field, error)
            value = None
        if value is None:  # cleared since, or unreadable: a first run
            return 0, "", ""
        runs, rest = _text(value).split("|", 1)
        worker, started = rest.rsplit("|", 1)
        when = datetime.fromtimestamp(int(started) / 1000, timezone.utc)
        return int(runs), worker, when.isoformat(timespec="milliseconds")

    def _write(self, field: str, runs: int) -> None:
        try:
            self.client.hset(self._key, field, self._value(runs))
        except redis.RedisError as error:
            self._warn("could not count a run of {}: {}", field, error)

    def _value(self, runs: int) -> str:
        return f"{runs}|{self._worker}|{int(time.time() * 1000)}"

    def _release(self, message: MessageProxy) -> None:
        current = delivery(message)
        if current.death_watch is not None and current.death_watch[1]:
            self._isolation.leave(current.death_watch[1])
            current.death_watch = (current.death_watch[0], "")

    def _outcome(self, message: MessageProxy) -> None:
        watch = delivery(message).death_watch if seen(message) else None
        if watch is not None:
            with self._lock:
                self._pending.append(watch[0])

    # --- clearing, off the worker threads -----------------------------------------------

    def _flush_every(self) -> None:
        while not self._stop.wait(self.flush_interval / 1000):
            self._flush()
            if time.monotonic() - self._pruned_at >= min(_PRUNE_EVERY, self.ttl / 1000):
                self._pruned_at = time.monotonic()
                self._prune()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for start in range(0, len(pending), _CLEAR_BATCH):
            batch = pending[start : start + _CLEAR_BATCH]
            try:
                self.client.hdel(self._key, *batch)
            except redis.RedisError as error:
                self._warn("could not clear {} counts of finished messages: {}", len(batch), error)
                with self._lock:
                    self._pending = (pending[start:] + self._pending)[-_PENDING_LIMIT:]
                return

    def _prune(self) -> None:
        """Drop the counts of messages that have not started for ``ttl``: they never came
        back (deleted, or their process died after the outcome, before its clear)."""
        oldest = int(time.time() * 1000) - self.ttl
        try:
            stale = [
                field
                for field, value in self.client.hscan_iter(self._key, count=1_000)
                if int(_text(value).rsplit("|", 1)[1]) < oldest
            ]
            for start in range(0, len(stale), _CLEAR_BATCH):
                self.client.hdel(self._key, *stale[start : start + _CLEAR_BATCH])
        except redis.RedisError as error:
            self._warn("could not drop stale counts: {}", error)

    def _warn(self, text: str, *args: Any) -> None:
        # A side concern: logged at most once a minute, never failing the message.
        if time.monotonic() - self._warned_at >= 60:
            self._warned_at = time.monotonic()
            logger.warning("DeathLimit " + text, *args)


def _check_limit(field: str, value: Any) -> int | None:
    return None if value is None else check_int(field, value, minimum=1, error=ConfigError)


def _text(value: bytes | str) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
