"""DeathLimit: a message that keeps killing its worker process is failed, not run for ever.

Dramatiq counts a message's attempts in the message, so a run that kills its process
(an OOM kill, a segfault in a C extension, SIGKILL) is never counted: the broker hands
the message to the next worker, which it kills too, and so on (Dramatiq's issue
#213). This middleware tells a message that comes back from a worker that never
finished it, and counts its deaths in Redis, where the count survives the process. A
message whose worker died ``max_deaths`` times with it does not run again: it is
failed with a :class:`~dramatiq_shared.errors.WorkerDiedError` (how many deliveries,
the last worker, when), and the rest of the suite treats it as any final failure: a
dead letter with that reason, FAILED for its import, Dramatiq's ``on_retry_exhausted``
sent.

A process that dies takes every message it holds with it, and the broker hands them
back together: counting the death against each would dead-letter messages whose only
fault was to be beside the killer. So a message that comes back runs alone in its
process: it waits for the messages in flight there to finish (at most
``isolation_wait``), and none starts beside it. A death then is its own, and only a
lone run counts one more. A bystander carries the one death it shared, and its lone
run reaches an outcome that clears it; the killer dies alone until it reaches
``max_deaths``. A process killed from outside while a message runs alone (a deploy's
SIGKILL, say) counts against that message, which is why ``max_deaths`` is more than one.
A lone run is counted as it starts and uncounted as it ends, before the next one
starts: Dramatiq acks a little later, on the consumer thread, and a message whose run
ended but whose ack died with the process comes back, not charged for that run.

How a message is known to come back, where Dramatiq already talks to the broker:

* RedisBroker: the consumer's fetch is followed by one pipelined ``HSETNX`` a fetched
  message into the hash ``{ns}:global:deliveries``, its field the message's
  ``redis_message_id`` (new at every enqueue, so a retry is a new field), its value
  ``lone runs|worker|time``. A field already there is a message fetched before without
  an outcome. One round trip a fetched batch, on the consumer thread; none on a worker
  thread. The fields are cleared after the outcome (acked, nacked, or requeued unrun by
  a consumer that closes), in batches, by a background thread every
  ``flush_interval``, which also drops, every ten minutes (or ``ttl``), fields not
  touched for ``ttl`` (their message never came back).
* RabbitMQ: the delivery's ``redelivered`` flag; Redis holds only the lone runs.
* Any other broker (the StubBroker) loses its messages with its process: nothing counts.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from loguru import logger

from .._checks import check_int
from ..errors import ConfigError, WorkerDiedError
from ..keys import DEFAULT_NAMESPACE, Keys
from .delivery import Action, delivery, seen
from .isolation import ALONE, SHARED, Isolation
from .messages import qualified_name

__all__ = ["DeathLimit"]

#: Fields cleared by one ``HDEL``.
_CLEAR_BATCH = 500
#: Clears kept while Redis refuses them; beyond, the oldest are left to ``ttl``.
_PENDING_LIMIT = 100_000
#: Longest time, in seconds, between two sweeps for counts whose message never came back.
_PRUNE_EVERY = 600.0


class DeathLimit(Middleware):
    """Fails a message whose worker process died with it ``max_deaths`` times.

    Parameters:
      client: The Redis client the counts live in (any Redis every worker reaches).
      max_deaths: Deaths after which a message is failed; the ``max_deaths`` option of
        an actor or a message overrides it, None there or here lets the message come
        back for ever. None here and on every actor counts nothing, and costs nothing
        (a message's own option is then ignored). Default 3.
      isolation_wait: Milliseconds a message that came back waits for the messages
        running beside it to finish before it runs anyway. Default 30000.
      flush_interval: Milliseconds between two batches of cleared counts. Default 100.
      ttl: Milliseconds a count untouched is kept: longer than the longest run and
        than a killed worker's messages take to come back. Default 86400000 (a day).
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
        #: Whether any message can have a limit: else nothing is fetched with a note.
        self._counting = self.max_deaths is not None
        self._lock = threading.Lock()
        self._marked: set[str] = set()  # fetched here, to clear at their outcome
        self._back: set[str] = set()  # of those, the ones fetched before without one
        self._pending: list[str] = []
        self._pruned_at = time.monotonic()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        self._warned_at = -60.0

    @property
    def actor_options(self) -> set[str]:
        return {"max_deaths"}

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        if "max_deaths" in actor.options:
            limit = _check_limit(
                f"actor {actor.actor_name!r}: max_deaths", actor.options["max_deaths"]
            )
            self._counting = self._counting or limit is not None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._worker = f"{socket.gethostname()}:{os.getpid()}"  # this process's, after a fork
        if isinstance(broker, RedisBroker) and not getattr(broker, "_deaths_watched", False):
            broker.do_fetch = self._fetching(broker.do_fetch)  # type: ignore[attr-defined]
            broker.do_requeue = self._requeueing(broker.do_requeue)  # type: ignore[attr-defined]
            broker._deaths_watched = True  # type: ignore[attr-defined]

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        self._flusher = threading.Thread(target=self._flush_every, name="death-limit", daemon=True)
        self._flusher.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(5)
        self._flush()

    # --- what the Redis consumer fetches ------------------------------------------------

    def _fetching(self, fetch: Callable[..., list[bytes]]) -> Callable[..., list[bytes]]:
        def fetched(queue_name: str, *args: Any) -> list[bytes]:
            bodies = fetch(queue_name, *args)
            if bodies and self._counting:
                self._mark(bodies)
            return bodies

        return fetched

    def _mark(self, bodies: Iterable[bytes]) -> None:
        """Note each fetched message in Redis; those noted before came back."""
        ids = [message_id for message_id in map(_redis_message_id, bodies) if message_id]
        if not ids:
            return
        value = self._value(0)
        try:
            pipeline = self.client.pipeline(transaction=False)
            for message_id in ids:
                pipeline.hsetnx(self._key, message_id, value)
            fresh = pipeline.execute()
        except redis.RedisError as error:  # uncounted rather than not run at all
            self._warn("could not note {} fetched messages: {}", len(ids), error)
            return
        with self._lock:
            self._marked.update(ids)
            self._back.update(m for m, new in zip(ids, fresh, strict=True) if not new)

    def _requeueing(self, requeue: Callable[..., Any]) -> Callable[..., Any]:
        def requeued(queue_name: str, *message_ids: str) -> Any:
            done = requeue(queue_name, *message_ids)
            # Handed back unrun (a consumer closing): not a death. Cleared now, before
            # another worker fetches them.
            ids = [str(m) for m in message_ids]
            with self._lock:
                self._marked.difference_update(ids)
                self._back.difference_update(ids)
            if ids:
                try:
                    self.client.hdel(self._key, *ids)
                except redis.RedisError as error:
                    self._warn("could not clear {} requeued messages: {}", len(ids), error)
            return done

        return requeued

    # --- one delivery -------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        current = delivery(message)
        limit = self._limit(broker, current.message)
        if limit is None:
            return
        field = self._came_back(message, current.message)
        # Joined before anything is counted: a message waiting for one running alone has
        # not run, so a death meanwhile is not its own.
        self._isolation.enter()
        if field is None:
            current.death_watch = ("", SHARED, 0)
            return
        self._isolation.leave(SHARED)
        runs, worker, started = self._read(field)
        deaths = runs + 1  # the delivery before it came back, then each lone run
        current.death_watch = (field, "", runs)  # cleared at the outcome
        if deaths >= limit:
            error = WorkerDiedError(deaths, worker, started)
            current.decide(
                Action.NOT_RETRYABLE, reason=str(error), error_type=qualified_name(WorkerDiedError)
            )
            message.fail()
            raise error
        logger.info(
            "Message {} came back from a worker that died ({} of {} deaths): it runs alone",
            message.message_id,
            deaths,
            limit,
        )
        self._isolation.enter_alone(self.isolation_wait / 1000)
        self._write(field, runs + 1)
        current.death_watch = (field, ALONE, runs)

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

    def _came_back(self, message: MessageProxy, fields: dramatiq.Message[Any]) -> str | None:
        """The field of the message's count when it came back from a worker that never
        finished it, else None."""
        options = fields.options
        redis_id = options.get("redis_message_id")
        if redis_id is not None:  # a set's membership is one step under the GIL: no lock
            return redis_id if redis_id in self._back else None
        if getattr(message, "redelivered", False):  # RabbitMQ's flag
            stamp = (options.get("retries", 0), options.get("requeue_timestamp", 0))
            return f"{fields.message_id}|{stamp[0]}|{stamp[1]}"
        return None

    def _read(self, field: str) -> tuple[int, str, str]:
        """Lone runs, the last worker and when (ISO 8601) of the count of ``field``."""
        try:
            value = self.client.hget(self._key, field)
        except redis.RedisError as error:
            self._warn("could not read the count of {}: {}", field, error)
            value = None
        if value is None:  # none yet (RabbitMQ's first return), or unreadable
            return 0, "", ""
        runs, rest = _text(value).split("|", 1)
        worker, stamp = rest.rsplit("|", 1)
        when = datetime.fromtimestamp(int(stamp) / 1000, timezone.utc)
        return int(runs), worker, when.isoformat(timespec="milliseconds")

    def _write(self, field: str, runs: int) -> None:
        try:
            self.client.hset(self._key, field, self._value(runs))
        except redis.RedisError as error:
            self._warn("could not count a lone run of {}: {}", field, error)

    def _value(self, runs: int) -> str:
        return f"{runs}|{self._worker}|{int(time.time() * 1000)}"

    def _release(self, message: MessageProxy) -> None:
        current = delivery(message)
        if current.death_watch is None or not current.death_watch[1]:
            return
        field, held, runs = current.death_watch
        if held == ALONE:
            # The run ended, its process alive: uncounted while no other runs alone, so
            # that a killer next cannot take the uncount (and the ack) with it.
            self._write(field, runs)
        self._isolation.leave(held)
        current.death_watch = (field, "", runs)

    def _outcome(self, message: MessageProxy) -> None:
        redis_id = message.options.get("redis_message_id")
        watch = delivery(message).death_watch if seen(message) else None
        with self._lock:
            if redis_id in self._marked:
                self._marked.discard(redis_id)
                self._back.discard(redis_id)
                self._pending.append(redis_id)
            elif watch is not None and watch[0]:
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
        """Drop the counts untouched for ``ttl``: their message never came back (deleted,
        or its process died after the outcome, before the clear)."""
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


#: How Dramatiq's JSON encoder writes the key (no spaces). Inside a JSON string each
#: quote is escaped, so these bytes only ever open a key and its string value.
_ID_KEY = b'"redis_message_id":"'


def _redis_message_id(body: bytes) -> str | None:
    """The ``redis_message_id`` of a fetched body, None for one that has none.

    Read from the text where the key occurs once (every message RedisBroker enqueued
    has it in its options; a second occurrence is a message carried inside, such as
    the one an ``on_retry_exhausted`` callback is given). Decoded otherwise, or when
    the encoder is not Dramatiq's JSON: the decode costs more than the whole search.
    """
    start = body.find(_ID_KEY) + len(_ID_KEY)
    if start >= len(_ID_KEY) and body.find(_ID_KEY, start) < 0:  # one scan of the body
        end = body.find(b'"', start)
        found = body[start:end]
        if end > start and b"\\" not in found:
            return found.decode()
    try:
        return str(dramatiq.Message.decode(body).options["redis_message_id"])
    except Exception:  # the guarded consumer sets an undecodable body aside
        return None


def _check_limit(field: str, value: Any) -> int | None:
    return None if value is None else check_int(field, value, minimum=1, error=ConfigError)


def _text(value: bytes | str) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
