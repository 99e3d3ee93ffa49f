"""Websocket clients of the relay: subscriptions, catch-up, backpressure, limits.

Protocol (JSON text frames):

* client: ``{"type": "subscribe", "import_id": ..., "token": ..., "last_event_id": n}``
  (``last_event_id`` optional; an admin token may subscribe to ``"*"``, every import's
  live events) and ``{"type": "unsubscribe", "import_id": ...}``;
* server: ``{"type": "event", "id", "import_id", "event"}``,
  ``{"type": "subscribed", "import_id", "last_event_id"}`` once the history is sent,
  and ``{"type": "error", "code", "message"}``. To keep up, the server may send a JSON
  array of such frames in one websocket message.

On subscribe the client first gets the import's history after ``last_event_id`` (all
of it when absent), then live events: ids strictly increasing per import with no gap
and no duplicate, events published during the catch-up included. The relay registers
the subscription before reading the history and drops what the client already has.

Limits: 64 KiB a client frame, 100 subscriptions a connection, frames rate-limited
(a burst of 30, then 10 a second). Close codes: 1001 relay shutting down, 1009 frame
too big, 1011 the history could not be read (reconnect), 4001 too slow (its send queue
filled: reconnect with ``last_event_id``), 4003 too many refused tokens, 4008 too many
frames.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict, deque
from typing import Any

from aiohttp import WSCloseCode, web
from loguru import logger

from ..errors import AuthError
from ..metrics import RELAY_REFUSALS
from .auth import ADMIN, verify
from .sources import Event, EventSource

__all__ = ["Connection", "Hub"]

MAX_SUBSCRIPTIONS = 100
MAX_AUTH_FAILURES = 5
RATE_BURST = 30.0
RATE_PER_SECOND = 10.0
MAX_RATE_STRIKES = 5

#: Seconds a sender waits after waking, to send what arrives meanwhile in one message.
GATHER = 0.01

CLOSE_TOO_SLOW = 4001
CLOSE_AUTH = 4003
CLOSE_FLOOD = 4008


class Hub:
    """Routes each live event to the connections subscribed to its import (or to all)."""

    def __init__(self) -> None:
        self._by_import: dict[str, set[Connection]] = defaultdict(set)
        self._everything: set[Connection] = set()
        self.connections: set[Connection] = set()

    def subscribe(self, connection: Connection, import_id: str) -> None:
        (self._everything if import_id == ADMIN else self._by_import[import_id]).add(connection)

    def unsubscribe(self, connection: Connection, import_id: str) -> None:
        if import_id == ADMIN:
            self._everything.discard(connection)
            return
        subscribers = self._by_import.get(import_id)
        if subscribers is not None:
            subscribers.discard(connection)
            if not subscribers:
                del self._by_import[import_id]

    def dispatch(self, event: Event) -> None:
        for connection in self._by_import.get(event.import_id, ()):
            connection.offer(event)
        for connection in self._everything:
            connection.offer(event, everything=True)


class Connection:
    """One websocket client: its subscriptions and its bounded send queue.

    The hub offers events without waiting; a sender task drains the queue, batching
    what accumulated into one websocket message. A client whose queue fills is closed
    with 4001 so it never slows the others, and resumes with ``last_event_id``.
    """

    def __init__(
        self, ws: web.WebSocketResponse, hub: Hub, source: EventSource, secret: str, max_queue: int
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.source = source
        self.secret = secret
        self.max_queue = max_queue
        self.queue: deque[Any] = deque()  # frames (str) and catch-up jobs (tuple)
        self.wakeup = asyncio.Event()
        self.subscriptions: set[str] = set()
        self.last_queued: dict[str, int] = {}
        self.catching_up: dict[str, list[Event]] = {}
        self.closing = False
        self.sending = False
        self.auth_failures = 0
        self.rate_tokens = RATE_BURST
        self.rate_checked = time.monotonic()
        self.rate_strikes = 0

    # --- the hub's side: never waits --------------------------------------------------

    def offer(self, event: Event, *, everything: bool = False) -> None:
        if self.closing:
            return
        if everything:
            if event.id > self.last_queued.get(f"*{event.import_id}", 0):
                self.last_queued[f"*{event.import_id}"] = event.id
                self._enqueue(event.frame)
            return
        buffered = self.catching_up.get(event.import_id)
        if buffered is not None:
            buffered.append(event)
            if len(buffered) > self.max_queue:
                self._too_slow()
            return
        last = self.last_queued.get(event.import_id, 0)
        if event.id <= last:
            return  # the client has it
        if event.id > last + 1:  # missed some: fetch them from the history first
            self.catching_up[event.import_id] = [event]
            self._enqueue(("catch-up", event.import_id, last), job=True)
            return
        self.last_queued[event.import_id] = event.id
        self._enqueue(event.frame)

    def _enqueue(self, item: Any, *, job: bool = False) -> None:
        self.queue.append(item)
        # Too slow: the queue passed its bound while the last send is still waiting on
        # the client, or passed four times the bound whatever the reason.
        backlog = len(self.queue)
        if not job and backlog > self.max_queue and (self.sending or backlog > 4 * self.max_queue):
            self._too_slow()
            return
        self.wakeup.set()

    def _too_slow(self) -> None:
        self.closing = True
        self.queue.clear()
        self.catching_up.clear()
        self.wakeup.set()
        asyncio.get_running_loop().create_task(
            self.ws.close(code=CLOSE_TOO_SLOW, message=b"too slow; resume with last_event_id")
        )

    # --- the sender task --------------------------------------------------------------

    async def send_forever(self) -> None:
        try:
            await self._send_forever()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as error:
            # Its history could not be read (Redis or the database away): let the client
            # reconnect and resume rather than wait on a connection that sends nothing.
            logger.warning("Relay client dropped: {}: {}", type(error).__name__, error)
            self.closing = True
            await self.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"try again")

    async def _send_forever(self) -> None:
        while not self.closing and not self.ws.closed:
            await self.wakeup.wait()
            # Gather what arrives in the next few milliseconds into the same message:
            # far fewer sends for a little latency.
            await asyncio.sleep(GATHER)
            self.wakeup.clear()
            frames: list[str] = []
            while self.queue and not self.closing:
                item = self.queue.popleft()
                if isinstance(item, tuple):
                    await self._send(frames)
                    frames = []
                    await self._catch_up(item[1], item[2])
                else:
                    frames.append(item)
            await self._send(frames)

    async def _send(self, frames: list[str]) -> None:
        if not frames or self.ws.closed:
            return
        self.sending = True
        try:
            await self.ws.send_str(frames[0] if len(frames) == 1 else f"[{','.join(frames)}]")
        finally:
            self.sending = False

    async def _catch_up(self, import_id: str, after: int) -> None:
        while True:
            page = await self.source.history(import_id, after)
            if page:
                await self._send([e.frame for e in page])
                after = page[-1].id
            if len(page) < 500:
                break
        buffered = self.catching_up.pop(import_id, [])
        self.last_queued[import_id] = after
        for event in buffered:
            self.offer(event)  # drops what the history covered; repairs any gap again
        if import_id not in self.catching_up:
            self._enqueue(
                json.dumps({"type": "subscribed", "import_id": import_id, "last_event_id": after})
            )

    # --- the client's frames ---------------------------------------------------------

    async def receive(self, text: str) -> None:
        if not self._rate_allows():
            if self.rate_strikes >= MAX_RATE_STRIKES:
                # Closed here, by the one task reading the socket: a close from another
                # task raced this reader, and the client saw 1006 instead of 4008.
                await self.ws.close(code=CLOSE_FLOOD, message=b"too many frames")
            return
        request = self._parse(text)
        if request is None:
            return
        import_id = request["import_id"]
        if request["type"] == "unsubscribe":
            self.subscriptions.discard(import_id)
            self.hub.unsubscribe(self, import_id)
            self.catching_up.pop(import_id, None)
        else:
            await self._subscribe(import_id, request.get("token"), request.get("last_event_id", 0))

    def _parse(self, text: str) -> dict[str, Any] | None:
        """The client's request, or None after telling it what was wrong."""
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            self.error("bad_request", "frames must be JSON objects")
            return None
        if request.get("type") not in ("subscribe", "unsubscribe"):
            self.error("bad_request", "type must be subscribe or unsubscribe")
            return None
        import_id = request.get("import_id")
        if not isinstance(import_id, str) or not 0 < len(import_id) <= 128:
            self.error("bad_request", "import_id must be a string of 1 to 128 characters")
            return None
        return request

    async def _subscribe(self, import_id: str, token: Any, last_event_id: Any) -> None:
        try:
            verify(token, self.secret, import_id=import_id)
        except AuthError as error:
            self.auth_failures += 1
            self.error(error.code, str(error))
            if self.auth_failures >= MAX_AUTH_FAILURES:
                await self.ws.close(code=CLOSE_AUTH, message=b"too many refused tokens")
            return None
        if (
            not isinstance(last_event_id, int)
            or isinstance(last_event_id, bool)
            or last_event_id < 0
        ):
            return self.error("bad_request", "last_event_id must be an int >= 0")
        if import_id in self.subscriptions:
            return self.error("bad_request", f"already subscribed to {import_id!r}")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            return self.error("too_many_subscriptions", f"at most {MAX_SUBSCRIPTIONS} a connection")
        self.subscriptions.add(import_id)
        self.hub.subscribe(self, import_id)  # before reading history: nothing falls between
        if import_id == ADMIN:
            self._enqueue(
                json.dumps({"type": "subscribed", "import_id": ADMIN, "last_event_id": None})
            )
            return None
        self.catching_up[import_id] = []
        self._enqueue(("catch-up", import_id, last_event_id), job=True)
        return None

    def error(self, code: str, message: str) -> None:
        RELAY_REFUSALS.labels(code).inc()
        self._enqueue(json.dumps({"type": "error", "code": code, "message": message}))

    def _rate_allows(self) -> bool:
        now = time.monotonic()
        self.rate_tokens = min(
            RATE_BURST, self.rate_tokens + (now - self.rate_checked) * RATE_PER_SECOND
        )
        self.rate_checked = now
        if self.rate_tokens >= 1:
            self.rate_tokens -= 1
            self.rate_strikes = 0
            return True
        self.rate_strikes += 1
        self.error("rate_limited", f"at most {RATE_PER_SECOND:.0f} frames a second")
        return False

    def drop(self) -> None:
        """Forget the connection: it closed."""
        self.closing = True
        for import_id in self.subscriptions:
            self.hub.unsubscribe(self, import_id)
        self.hub.connections.discard(self)
