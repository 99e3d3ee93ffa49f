"""The relay: status events from Redis (or memory) to browsers, over websockets.

Routes:

==================================  ================================================
``GET /``                           the dashboard page
``GET /ws``                         the websocket (see :mod:`.connections`)
``GET /imports/{id}/events``        an import's events after ``?after=`` (at most
                                    ``?limit=``, 1000), with a token for it as
                                    ``Authorization: Bearer`` or ``?token=``
``GET /imports/{id}/snapshot``      an import's state as of its newest event (see
                                    :mod:`.snapshot`): subscribe from its
                                    ``last_event_id``; a token for it, as above
``GET /imports``                    the recent imports and their progress (admin token)
``GET /imports/overview``           the 32 most recent imports from their snapshots:
                                    state, counts (done, failed, retrying, dead
                                    letters when the relay has their table), elapsed
                                    seconds, notes and lines finished a second, the
                                    seconds left at that rate (admin token)
``GET /health``                     Redis, database, breaker states and live workers;
                                    503 when Redis or the database is down
``GET /metrics``                    Prometheus metrics (see :mod:`dramatiq_shared.metrics`)
``GET /ops/breakers``               every breaker's state hash, its last transition,
                                    the last 50 transitions (admin token)
``POST /ops/breakers/{name}/{a}``   force a breaker: ``a`` is ``open``, ``close``
                                    (its counts reset) or ``half-open``; audited
                                    (admin token; see :mod:`.operations`)
``GET /ops/workers``                live workers, and each RedisBroker queue's
                                    waiting, delayed and dead-lettered messages
                                    (admin token)
``GET /ops/dead-letters``           dead letters matching ``?actor=&queue=&error_type=
                                    &import_id=&since=&until=&text=`` (``&retried=1``
                                    too those retried), newest first, and their count
                                    (admin token)
``GET /ops/dead-letters/{id}``      one, its full error history and message (admin)
``POST /ops/dead-letters/replay``   ``{"ids": [...]}`` or ``{"filter": {...}}``, with
                                    ``"dry_run"`` (count only) and ``"rate"`` (a
                                    second, default 10); audited (admin token)
``GET /ops/audit``                  the newest audited actions (admin token)
==================================  ================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

import dramatiq
import redis.asyncio as aioredis
from aiohttp import WSCloseCode, WSMsgType, web

from .._checks import check_int
from ..breakers import Breakers
from ..errors import ConfigError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..metrics import RELAY_REFUSALS, render
from ..stores.audit import AuditLog
from ..stores.dead_letters import DeadLetterFilter, DeadLetterStore
from .auth import ADMIN, authorize_request
from .connections import Connection, Hub
from .operations import Operations, breaker_states, live_workers
from .snapshot import KEPT, Snapshots, progress
from .sources import EventSource

__all__ = ["HUB", "SECRET", "create_app"]

#: Largest client frame, in bytes.
MAX_FRAME = 64 * 1024

#: The relay's secret, in the application (a demo relay makes its own).
SECRET = web.AppKey("secret", str)
#: The relay's connections, in the application (for health and metrics).
HUB = web.AppKey("hub", Hub)


def create_app(
    source: EventSource,
    *,
    secret: str | None,
    demo: bool = False,
    allowed_origins: Iterable[str] = (),
    max_queue: int = 2_000,
    breaker_client: aioredis.Redis | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    breakers: Breakers | None = None,
    audit: AuditLog | None = None,
    broker_namespace: str | None = "dramatiq",
    dead_letters: DeadLetterStore | None = None,
    broker: dramatiq.Broker | None = None,
) -> web.Application:
    """Build the relay's aiohttp application.

    Parameters:
      source: Where events come from (:class:`~.sources.RedisSource` or
        :class:`~.sources.MemorySource`).
      secret: The stream token secret (``DRAMATIQ_SHARED_SECRET``), 16 bytes or more.
      demo: Allow running without a secret: a random one is made, for a local demo
        (read it back as ``app[SECRET]`` to mint tokens).
      allowed_origins: Origins (``https://host:port``) whose pages may open the
        websocket, besides the relay's own. Default none.
      max_queue: Frames a client may fall behind before it is cut off; at least 500, more
        than the live feed hands over at once. Default 2000.
      breaker_client: Redis to read circuit breaker states from, for ``/health``.
      namespace: Prefix of the Redis keys (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.
      breakers: The breakers admin tokens may force (``/ops/breakers``), configured as
        the workers' are; default none (forcing answers 503).
      audit: Where forced actions are recorded; default none (forcing answers 503).
      broker_namespace: The RedisBroker's namespace, for queue depths; None on
        RabbitMQ. Default ``"dramatiq"``. The operations routes need
        ``breaker_client``.
      dead_letters: The dead-letters table, for ``/ops/dead-letters``; default none.
      broker: Where replayed dead letters are enqueued; default none (no replay).

    Raises:
      ConfigError: Without a secret outside demo mode, or with a short one.
    """
    if not secret:
        if not demo:
            raise ConfigError(
                "the relay needs a secret to check stream tokens: set DRAMATIQ_SHARED_SECRET"
                " (16 bytes or more), or run it in local demo mode",
                field="secret",
            )
        secret = secrets.token_urlsafe(32)
    if len(secret.encode()) < 16:
        raise ConfigError("the relay's secret must be at least 16 bytes", field="secret")
    check_int("max_queue", max_queue, minimum=500, error=ConfigError)
    relay = _Relay(
        source,
        secret,
        origins=set(allowed_origins),
        max_queue=max_queue,
        breaker_client=breaker_client,
        namespace=namespace,
        dead_letters=dead_letters,
    )
    app = web.Application()
    app[SECRET] = secret
    app[HUB] = relay.hub
    app.cleanup_ctx.append(relay.feed)
    app.on_shutdown.append(relay.going_away)
    app.router.add_get("/", relay.dashboard)
    app.router.add_get("/ws", relay.websocket)
    app.router.add_get("/imports", relay.imports)
    app.router.add_get("/imports/overview", relay.overview)
    app.router.add_get("/imports/{import_id}/events", relay.events)
    app.router.add_get("/imports/{import_id}/snapshot", relay.snapshot)
    app.router.add_get("/health", relay.health)
    app.router.add_get("/metrics", relay.metrics)
    if breaker_client is not None:
        Operations(
            secret,
            breaker_client,
            Keys(namespace),
            breakers=breakers,
            audit=audit,
            broker_namespace=broker_namespace,
            dead_letters=dead_letters,
            broker=broker,
        ).add_routes(app)
    return app


class _Relay:
    """The handlers, and what they share."""

    def __init__(
        self,
        source: EventSource,
        secret: str,
        *,
        origins: set[str],
        max_queue: int,
        breaker_client: aioredis.Redis | None,
        namespace: str,
        dead_letters: DeadLetterStore | None,
    ) -> None:
        self.source = source
        self.secret = secret
        self.origins = origins
        self.max_queue = max_queue
        self.breaker_client = breaker_client
        self.keys = Keys(namespace)
        self.hub = Hub()
        self.snapshots = Snapshots(source)
        self.dead_letters = dead_letters

    async def feed(self, app: web.Application) -> AsyncIterator[None]:
        # The position is taken before the relay answers, so a client that connects
        # once it does misses no live event.
        position = await self.source.position()
        task = asyncio.get_running_loop().create_task(self.source.run(self.hub.dispatch, position))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def going_away(self, app: web.Application) -> None:
        await asyncio.gather(
            *(
                connection.ws.close(code=WSCloseCode.GOING_AWAY, message=b"relay shutting down")
                for connection in list(self.hub.connections)
            ),
            return_exceptions=True,
        )

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        own = f"{request.scheme}://{request.host}"
        if origin is not None and origin != own and origin not in self.origins:
            RELAY_REFUSALS.labels("origin").inc()
            raise web.HTTPForbidden(text=f"origin {origin} is not allowed")
        # timeout: seconds a closing socket waits for the client's reply.
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30, timeout=2)
        await ws.prepare(request)
        connection = Connection(ws, self.hub, self.source, self.secret, self.max_queue)
        self.hub.connections.add(connection)
        sender = asyncio.get_running_loop().create_task(connection.send_forever())
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await connection.receive(message.data)
                elif message.type == WSMsgType.BINARY:
                    connection.error("bad_request", "frames must be JSON text")
                elif message.type == WSMsgType.ERROR:  # aiohttp closes the socket itself
                    too_big = getattr(ws.exception(), "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                    RELAY_REFUSALS.labels("frame_too_large" if too_big else "bad_frame").inc()
        finally:
            connection.drop()
            connection.wakeup.set()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return ws

    async def events(self, request: web.Request) -> web.Response:
        import_id = request.match_info["import_id"]
        authorize_request(request, self.secret, import_id)
        try:
            after = int(request.query.get("after", "0"))
            limit = min(int(request.query.get("limit", "1000")), 1_000)
        except ValueError:
            raise web.HTTPBadRequest(text="after and limit must be integers") from None
        if after < 0 or limit < 1:
            raise web.HTTPBadRequest(text="after must be >= 0 and limit >= 1")
        found = await self.source.history(import_id, after, limit)
        body = "[" + ",".join(json.dumps(e.data()) for e in found) + "]"
        return web.Response(text=body, content_type="application/json")

    async def snapshot(self, request: web.Request) -> web.Response:
        import_id = request.match_info["import_id"]
        authorize_request(request, self.secret, import_id)
        return web.json_response(await self.snapshots.get(import_id))

    async def imports(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        return web.json_response(await self.source.imports())

    async def overview(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        # As many as the relay keeps snapshots of: each is folded once, then kept fresh.
        recent = await self.source.imports(limit=KEPT)
        now_ms = int(time.time() * 1000)
        lines = [
            progress(
                await self.snapshots.get(item["import_id"]),
                now_ms=now_ms,
                dead_lettered=await self._dead_lettered(item["import_id"]),
            )
            for item in recent
        ]
        return web.json_response(lines)

    async def _dead_lettered(self, import_id: str) -> int | None:
        """How many of the import's messages are dead letters not replayed yet; None
        without the dead-letters table."""
        store = self.dead_letters
        if store is None:
            return None
        matching = DeadLetterFilter(import_id=import_id)
        return await asyncio.get_running_loop().run_in_executor(None, store.count, matching)

    async def health(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = await self.source.check()
        if self.breaker_client is not None:
            checks["breakers"] = await breaker_states(self.breaker_client, self.keys)
            checks["workers"] = await live_workers(self.breaker_client, self.keys)
        down = any(isinstance(v, str) and v.startswith("down") for v in checks.values())
        checks["status"] = "down" if down else "ok"
        checks["clients"] = len(self.hub.connections)
        return web.json_response(checks, status=503 if down else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def dashboard(self, request: web.Request) -> web.Response:
        page = resources.files("dramatiq_shared.relay").joinpath("static/dashboard.html")
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html")
