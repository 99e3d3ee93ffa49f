"""Where published status events go live: Redis streams, or memory for embedded use.

A transport numbers each import's events 1, 2, 3... (across every process publishing
to it) and keeps them readable by import, and all imports together, for the relay.

In Redis, each import has a stream whose entry ids are ``{event id}-0`` (the field
``event`` holds its JSON, without ``id``); one more stream holds every import's
events, a batch an entry (read it with :func:`batch_entry`), and a sorted set the
imports by last event time. Streams are trimmed to about ``maxlen`` entries. A
batch's ids are kept for 10 minutes (or as long as its events, if longer), so a retried
append whose reply was lost publishes nothing twice. The names of these keys are in
:mod:`dramatiq_shared.keys`.

Between the stream and the history there is a window: a broadcaster persists what it
streamed a moment later, in batches. A process killed in that window would leave
events in the stream that the history never gets, and once the stream trims them the
relay would show a gap. So an append made for a history keeps its events in Redis
until :meth:`RedisTransport.persisted` says they are stored; whatever a dead process
left there, :meth:`RedisTransport.reclaim` hands to a live one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

import redis
from loguru import logger

from .._redis import text
from ..errors import ValidationError
from ..keys import DEFAULT_NAMESPACE, Keys
from ._scripts import APPEND, RECLAIM
from .events import StatusEvent

__all__ = [
    "MemoryTransport",
    "Reclaimable",
    "Reclaimed",
    "RedisTransport",
    "Transport",
    "batch_entry",
    "wire_json",
]

#: Most events one append takes: a batch is one entry of the all-imports stream, built
#: by a script whose stack holds six values an event.
MAX_BATCH = 1_000

Listener = Callable[[str, dict[str, Any]], None]


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def wire_json(event: StatusEvent, timestamp: int) -> str:
    """The event's JSON as transports store it: the wire form without its id."""
    wire = event.to_wire(timestamp=timestamp)
    del wire["id"]
    return _ENCODE(wire)


def batch_entry(fields: dict[bytes, bytes]) -> list[tuple[str, int, str]]:
    """The ``(import id, event id, event JSON)`` of each event in one entry of the
    all-imports stream, in the order they were appended."""
    events = []
    number = 1
    while (import_id := fields.get(b"i%d" % number)) is not None:
        event_id, event = fields[b"d%d" % number], fields[b"e%d" % number]
        events.append((import_id.decode(), int(event_id), event.decode()))
        number += 1
    return events


class Transport(Protocol):
    """What a broadcaster needs of a transport."""

    def append(
        self,
        events: Sequence[StatusEvent],
        timestamp: int,
        *,
        batch: str | None = None,
        persist: bool = False,
    ) -> list[int]:
        """Publish ``events`` in order; return the id each got.

        A retry with the same ``batch`` token publishes nothing twice and returns the
        ids the first try gave, though its reply was lost. ``persist`` says a history
        will store these events: a transport that outlives the process (one that is
        also :class:`Reclaimable`) keeps them until told they are stored.
        """

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        """An import's events with an id above ``after``, oldest first, in wire form."""


@runtime_checkable
class Reclaimable(Protocol):
    """A transport that keeps appended events until they are persisted, across processes."""

    def persisted(self, batches: Sequence[str]) -> None:
        """Forget the events of ``batches`` (tokens): the history has them."""

    def reclaim(self, older_than: int, limit: int = 100) -> Reclaimed:
        """Up to ``limit`` batches appended for a history at least ``older_than`` ms ago
        and not persisted since, leased to the caller for another ``older_than`` ms.
        """


class Reclaimed(NamedTuple):
    """What :meth:`Reclaimable.reclaim` found."""

    #: Token of each batch, and its ``(event id, timestamp ms, event)`` triples.
    batches: list[tuple[str, list[tuple[int, int, StatusEvent]]]]
    #: Batches whose events had expired before anyone persisted them.
    expired: int
    #: Batches that could not be read back (and are dropped).
    unreadable: int


#: Milliseconds a batch's ids are remembered, for a retried append.
_BATCH_TTL = 600_000
#: Milliseconds the events of a batch wait in Redis for someone to persist them.
_UNPERSISTED_TTL = 3_600_000


class RedisTransport:
    """Status events in Redis streams; one round trip per batch of events.

    Parameters:
      client: The Redis client.
      namespace: Prefix of the keys (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.
      maxlen: About how many events each stream keeps (the database keeps them all).
        Default 10000.
    """

    def __init__(
        self, client: redis.Redis, *, namespace: str = DEFAULT_NAMESPACE, maxlen: int = 10_000
    ) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.maxlen = maxlen
        self._append = client.register_script(APPEND)
        self._reclaim = client.register_script(RECLAIM)

    def append(
        self,
        events: Sequence[StatusEvent],
        timestamp: int,
        *,
        batch: str | None = None,
        persist: bool = False,
    ) -> list[int]:
        token = batch or uuid.uuid4().hex
        keys = [
            self.keys.all_status,
            self.keys.imports,
            self.keys.batch(token),
            self.keys.batch_events(token),
            self.keys.unpersisted,
            self.keys.last_ids,
        ]
        if len(events) > MAX_BATCH:
            raise ValidationError(
                f"a batch holds at most {MAX_BATCH} events, got {len(events)}", field="events"
            )
        kept = _UNPERSISTED_TTL if persist else 0
        numbers: dict[str, int] = {}
        per_event: list[Any] = []
        for event in events:
            number = numbers.setdefault(event.import_id, len(numbers) + 1)
            per_event += [number, wire_json(event, timestamp)]
        keys += [self.keys.status(import_id) for import_id in numbers]
        args: list[Any] = [self.maxlen, timestamp, _BATCH_TTL, kept, token, len(numbers), *numbers]
        return [int(i) for i in self._append(keys=keys, args=args + per_event)]

    def persisted(self, batches: Sequence[str]) -> None:
        if not batches:
            return
        pipeline = self.client.pipeline(transaction=False)
        pipeline.zrem(self.keys.unpersisted, *batches)
        pipeline.delete(*(self.keys.batch_events(token) for token in batches))
        for token in batches:  # the ids stay as long as any batch's, for a retried append
            pipeline.pexpire(self.keys.batch(token), _BATCH_TTL)
        pipeline.execute()

    def reclaim(self, older_than: int, limit: int = 100) -> Reclaimed:
        now = int(time.time() * 1000)
        found = self._reclaim(
            keys=[self.keys.unpersisted],
            args=[now - older_than, now, limit, self.keys.batch(""), self.keys.batch_events("")],
        )
        batches: list[tuple[str, list[tuple[int, int, StatusEvent]]]] = []
        unreadable: list[str] = []
        for raw, ids, events in zip(found[1::3], found[2::3], found[3::3], strict=True):
            token = text(raw)
            try:
                wires = [json.loads(text) for text in json.loads(events)]
                records = [
                    (int(i), int(wire["timestamp"]), StatusEvent.from_wire(wire))
                    for i, wire in zip(json.loads(ids), wires, strict=True)
                ]
            except (KeyError, TypeError, ValueError, ValidationError) as error:
                logger.error(
                    "Dropping unreadable status batch {}: {}: {}",
                    token,
                    type(error).__name__,
                    error,
                )
                unreadable.append(token)
                continue
            batches.append((token, records))
        self.persisted(unreadable)
        return Reclaimed(batches, int(found[0]), len(unreadable))

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            self.client.xrange(self.keys.status(import_id), min=f"({after}-0", count=limit),
        )
        return [
            {**json.loads(fields[b"event"]), "id": int(entry_id.split(b"-")[0])}
            for entry_id, fields in entries
        ]


class MemoryTransport:
    """Status events in memory, for one process running everything (the embedded default).

    Thread-safe. Listeners get each event as it is appended; :meth:`queue` hands them to
    an asyncio loop.

    Parameters:
      maxlen: Events kept per import; older ones are dropped. Default 10000.
      last_id: Gives an import's last event id from an earlier run (such as
        :meth:`~dramatiq_shared.stores.status_history.StatusHistory.last_id`), asked once
        per import, so a process that runs an import again goes on numbering its events
        where the history ends instead of reusing ids. Default: start at 1.
    """

    def __init__(
        self, *, maxlen: int = 10_000, last_id: Callable[[str], int] | None = None
    ) -> None:
        self.maxlen = maxlen
        self._resume = last_id
        self._lock = threading.Lock()
        self._events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._last: dict[str, int] = defaultdict(int)
        self._listeners: list[Listener] = []

    def append(
        self,
        events: Sequence[StatusEvent],
        timestamp: int,
        *,
        batch: str | None = None,
        persist: bool = False,
    ) -> list[int]:
        # Nothing to keep for ``persist``: these events die with the process that would
        # persist them.
        published: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            for event in events:
                if self._resume is not None and event.import_id not in self._last:
                    self._last[event.import_id] = self._resume(event.import_id)
                self._last[event.import_id] += 1
                wire = {
                    **json.loads(wire_json(event, timestamp)),
                    "id": self._last[event.import_id],
                }
                kept = self._events[event.import_id]
                kept.append(wire)
                del kept[: -self.maxlen]
                published.append((event.import_id, wire))
            listeners = list(self._listeners)
        for import_id, wire in published:
            for listener in listeners:
                listener(import_id, wire)
        return [wire["id"] for _, wire in published]

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(w) for w in self._events.get(import_id, []) if w["id"] > after][:limit]

    def imports(self) -> list[str]:
        """Every import that has events."""
        with self._lock:
            return list(self._events)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(import_id, event)`` for each new event; returns the unsubscriber."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.remove(listener)

        return unsubscribe

    def queue(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[asyncio.Queue[Any], Callable[[], None]]:
        """An asyncio queue on ``loop`` receiving ``(import_id, event)``, and its unsubscriber."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def forward(import_id: str, wire: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (import_id, wire))

        return queue, self.subscribe(forward)
