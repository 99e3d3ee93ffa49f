"""Where the relay reads status events: their history, and the live feed.

Both sources hand the relay events already rendered as websocket frames (JSON text),
so an event is encoded once however many clients receive it.

* :class:`RedisSource` reads history from an import's stream, falling back to the
  database history where the stream was trimmed, and tails the all-imports stream
  with one blocking XREAD for every client of the relay.
* :class:`MemorySource` reads a :class:`~dramatiq_shared.status.transport.MemoryTransport`,
  for the relay served in-process by an embedded run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from ..keys import DEFAULT_NAMESPACE, Keys
from ..status.transport import MemoryTransport, batch_entry
from ..stores.status_history import StatusHistory

__all__ = ["Event", "EventSource", "MemorySource", "RedisSource", "frame"]

#: Events read per history page.
PAGE = 500
#: Entries (batches of events) taken from the live stream at a time; each client may
#: queue more events than these hold.
READ_COUNT = 50


@dataclass(frozen=True)
class Event:
    """One event as the relay passes it on: its import, id and ready-made frame."""

    import_id: str
    id: int
    frame: str

    def data(self) -> dict[str, Any]:
        """The event itself, in wire form with its id."""
        return cast("dict[str, Any]", json.loads(self.frame)["event"])


def frame(import_id: str, event_id: int, event_json: str) -> Event:
    """Render the ``event`` frame ``{"type", "id", "import_id", "event"}`` around the JSON.

    ``event_json`` is the event's wire form without its id, as transports store it.
    """
    with_id = (
        f'{event_json[:-1]},"id":{event_id}}}' if event_json != "{}" else f'{{"id":{event_id}}}'
    )
    text = (
        f'{{"type":"event","id":{event_id},"import_id":{json.dumps(import_id)},"event":{with_id}}}'
    )
    return Event(import_id, event_id, text)


Dispatch = Callable[[Event], None]


class EventSource(Protocol):
    """What the relay reads."""

    async def history(self, import_id: str, after: int, limit: int = PAGE) -> list[Event]:
        """Events of ``import_id`` with ids above ``after``, in order, without gaps."""

    async def position(self) -> Any:
        """Where the live feed starts: taken at startup, so no later event is missed."""

    async def run(self, dispatch: Dispatch, position: Any) -> None:
        """Pass every event after ``position`` to ``dispatch`` until cancelled."""

    async def imports(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent imports, each with its last event."""

    async def check(self) -> dict[str, str]:
        """The health of what the source depends on: name -> "ok" or a reason."""


class RedisSource:
    """Status events from Redis streams, with the database for what was trimmed.

    Parameters:
      client: An asyncio Redis client.
      history: The database history, for events older than the streams keep.
      namespace: Prefix of the keys (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        history: StatusHistory | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.client = client
        self.database = history
        self.keys = Keys(namespace)

    async def history(self, import_id: str, after: int, limit: int = PAGE) -> list[Event]:
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.client.xrange(self.keys.status(import_id), min=f"({after}-0", count=limit),
        )
        events = [
            frame(import_id, int(entry_id.split(b"-")[0]), fields[b"event"].decode())
            for entry_id, fields in entries
        ]
        first = events[0].id if events else None
        if self.database is not None and (first is None or first > after + 1):
            # Trimmed from the stream (or never in it): the database has them.
            older = await asyncio.get_running_loop().run_in_executor(
                None, self._from_database, import_id, after, limit
            )
            older = [e for e in older if first is None or e.id < first]
            events = (older + events)[:limit]
        return events

    def _from_database(self, import_id: str, after: int, limit: int) -> list[Event]:
        assert self.database is not None
        rows = self.database.read(import_id, after=after, limit=limit)
        return [
            frame(import_id, row["id"], json.dumps({k: v for k, v in row.items() if k != "id"}))
            for row in rows
        ]

    async def position(self) -> str:
        newest = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.client.xrevrange(self.keys.all_status, count=1),
        )
        return newest[0][0].decode() if newest else "0-0"

    async def run(self, dispatch: Dispatch, position: Any) -> None:
        last = position
        key = self.keys.all_status
        while True:
            try:
                replies = await self.client.xread({key: last}, count=READ_COUNT, block=1_000)
            except aioredis.ConnectionError:
                await asyncio.sleep(0.5)  # Redis went away; clients catch up on return
                continue
            streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", replies)
            for _, entries in streams or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    for import_id, event_id, event in batch_entry(fields):
                        dispatch(frame(import_id, event_id, event))
            # Let the clients' senders drain their queues before the next batch.
            await asyncio.sleep(0)

    async def imports(self, limit: int = 100) -> list[dict[str, Any]]:
        ids = cast(
            "list[bytes]",
            await self.client.zrevrange(self.keys.imports, 0, limit - 1),
        )
        found = []
        for raw in ids:
            import_id = raw.decode()
            last = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self.client.xrevrange(self.keys.status(import_id), count=50),
            )
            events = [
                {**json.loads(fields[b"event"]), "id": int(entry_id.split(b"-")[0])}
                for entry_id, fields in last
            ]
            found.append(_summary(import_id, events))
        return found

    async def check(self) -> dict[str, str]:
        health = {}
        try:
            await self.client.ping()
            health["redis"] = "ok"
        except aioredis.RedisError as error:
            health["redis"] = f"down: {type(error).__name__}"
        if self.database is not None:
            health["database"] = await asyncio.get_running_loop().run_in_executor(
                None, _database_health, self.database
            )
        return health


class MemorySource:
    """Status events from a :class:`MemoryTransport` in this process."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport

    async def history(self, import_id: str, after: int, limit: int = PAGE) -> list[Event]:
        return [_render(import_id, w) for w in self.transport.read(import_id, after, limit)]

    async def position(self) -> None:
        return None  # the subscription starts with the feed

    async def run(self, dispatch: Dispatch, position: Any) -> None:
        queue, unsubscribe = self.transport.queue(asyncio.get_running_loop())
        try:
            while True:
                import_id, wire = await queue.get()
                dispatch(_render(import_id, wire))
        finally:
            unsubscribe()

    async def imports(self, limit: int = 100) -> list[dict[str, Any]]:
        return [
            _summary(import_id, list(reversed(self.transport.read(import_id, 0, 100_000)[-50:])))
            for import_id in self.transport.imports()[-limit:][::-1]
        ]

    async def check(self) -> dict[str, str]:
        return {"transport": "ok (in-process)"}


def _render(import_id: str, wire: dict[str, Any]) -> Event:
    body = json.dumps({k: v for k, v in wire.items() if k != "id"}, separators=(",", ":"))
    return frame(import_id, int(wire["id"]), body)


def _summary(import_id: str, newest_first: list[dict[str, Any]]) -> dict[str, Any]:
    """An import's last event and its latest counts, for the admin list."""
    last = newest_first[0] if newest_first else {}
    counted = next((e for e in newest_first if e.get("totalCount") is not None), {})
    return {
        "import_id": import_id,
        "last_event_id": last.get("id"),
        "status": last.get("status"),
        "current_count": counted.get("currentCount"),
        "total_count": counted.get("totalCount"),
        "timestamp": last.get("timestamp"),
    }


def _database_health(history: StatusHistory) -> str:
    try:
        history.read("health-check", after=0, limit=1)
    except Exception as error:
        return f"down: {type(error).__name__}"
    return "ok"
