"""Where published status events go live: Redis streams, or memory for embedded use.

A transport numbers each import's events 1, 2, 3... (across every process publishing
to it) and keeps them readable by import, and all imports together, for the relay.

Redis keys, under ``namespace`` (default ``dramatiq_shared``):

================================  ====================================================
``{ns}:status:{import_id}``       stream of one import's events; the entry id is
                                  ``{event id}-0``, the field ``event`` its JSON
                                  (without ``id``); trimmed to about ``maxlen`` entries
``{ns}:status-seq:{import_id}``   the import's last event id
``{ns}:status:all``               stream of every import's events: fields
                                  ``import_id``, ``id``, ``event``; trimmed likewise
``{ns}:status:imports``           sorted set of import ids by last event time (ms)
``{ns}:status-batch:{token}``     the ids a batch got, for 10 minutes: a retried
                                  append whose reply was lost publishes nothing twice
================================  ====================================================
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import redis

from .events import StatusEvent

__all__ = ["MemoryTransport", "RedisTransport", "Transport", "wire_json"]

Listener = Callable[[str, dict[str, Any]], None]


def wire_json(event: StatusEvent, timestamp: int) -> str:
    """The event's JSON as transports store it: the wire form without its id."""
    wire = event.to_wire(timestamp=timestamp)
    del wire["id"]
    return json.dumps(wire, separators=(",", ":"), ensure_ascii=False)


class Transport(Protocol):
    """What a broadcaster needs of a transport."""

    def append(
        self, events: Sequence[StatusEvent], timestamp: int, *, batch: str | None = None
    ) -> list[int]:
        """Publish ``events`` in order; return the id each got.

        A retry with the same ``batch`` token publishes nothing twice and returns the
        ids the first try gave, though its reply was lost.
        """

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        """An import's events with an id above ``after``, oldest first, in wire form."""


# KEYS: the all-stream, the imports index, the batch's key, then a stream and a counter
# per event. ARGV: maxlen, timestamp, the batch key's TTL (ms), then an import id and a
# JSON text per event. A batch whose key exists was appended before (its reply was
# lost): its ids are returned again and nothing is appended twice.
_APPEND = """
local done = redis.call('GET', KEYS[3])
if done then return cjson.decode(done) end
local ids = {}
for i = 0, (#KEYS - 3) / 2 - 1 do
  local stream, counter = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local import_id, event = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local id = redis.call('INCR', counter)
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], id .. '-0', 'event', event)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
             'import_id', import_id, 'id', id, 'event', event)
  redis.call('ZADD', KEYS[2], ARGV[2], import_id)
  ids[#ids + 1] = id
end
redis.call('SET', KEYS[3], cjson.encode(ids), 'PX', ARGV[3])
return ids
"""

#: Milliseconds a batch's ids are remembered, for a retried append.
_BATCH_TTL = 600_000


class RedisTransport:
    """Status events in Redis streams; one round trip per batch of events.

    Parameters:
      client: The Redis client.
      namespace: Prefix of the keys. Default ``"dramatiq_shared"``.
      maxlen: About how many events each stream keeps (the database keeps them all).
        Default 10000.
    """

    def __init__(
        self, client: redis.Redis, *, namespace: str = "dramatiq_shared", maxlen: int = 10_000
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen
        self._append = client.register_script(_APPEND)

    def stream_key(self, import_id: str) -> str:
        return f"{self.namespace}:status:{import_id}"

    @property
    def all_key(self) -> str:
        return f"{self.namespace}:status:all"

    def append(
        self, events: Sequence[StatusEvent], timestamp: int, *, batch: str | None = None
    ) -> list[int]:
        token = batch or uuid.uuid4().hex
        keys = [
            self.all_key,
            f"{self.namespace}:status:imports",
            f"{self.namespace}:status-batch:{token}",
        ]
        args: list[Any] = [self.maxlen, timestamp, _BATCH_TTL]
        for event in events:
            keys += [
                self.stream_key(event.import_id),
                f"{self.namespace}:status-seq:{event.import_id}",
            ]
            args += [event.import_id, wire_json(event, timestamp)]
        return [int(i) for i in self._append(keys=keys, args=args)]

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            self.client.xrange(self.stream_key(import_id), min=f"({after}-0", count=limit),
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
        :meth:`~dramatiq_shared.db.status_history.StatusHistory.last_id`), asked once
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
        self, events: Sequence[StatusEvent], timestamp: int, *, batch: str | None = None
    ) -> list[int]:
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
