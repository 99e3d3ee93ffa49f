"""The relay's operations views, for admin tokens only: breakers, workers and queues, dead
letters, the audit.

Every route answers 401 without a valid token and 403 to a token for one import. A
forced breaker moves through :class:`~dramatiq_shared.breakers.SharedCircuitBreaker`'s
``open()``, ``close()`` and ``half_open()``, so the breakers' Lua scripts stay the only
writers of their state, and each force is recorded in the audit table (who: the
token's subject) before it is made: an action the audit cannot record is refused.

Dead letters are searched and replayed through
:class:`~dramatiq_shared.stores.DeadLetterStore` (``search``, ``replay``: what the
``dramatiq-shared dead-letters`` command calls), a replay audited with its filter and
count before its first enqueue, paced at ``rate`` messages a second (default 10).

Queue depths are read from a ``RedisBroker``'s keys (its namespace, ``dramatiq`` by
default): messages waiting, delayed (``{queue}.DQ``) and dead-lettered
(``{queue}.XQ``). On RabbitMQ the relay reads no queue (``queues`` is null): its
management API has them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import dramatiq
import redis.asyncio as aioredis
from aiohttp import web

from .._redis import text
from ..breakers import Breakers, StateUnavailableError, check_breaker_name
from ..errors import ConfigError, ValidationError
from ..keys import Keys, _escape
from ..stores.audit import AuditLog
from ..stores.dead_letters import FILTER_KEYS, DeadLetterFilter, DeadLetterRecord, DeadLetterStore
from .auth import ADMIN, authorize_request

__all__ = ["Operations", "breaker_states", "live_workers"]

#: Breaker transitions the view shows, newest first.
TRANSITIONS = 50
#: Force actions, by the name in the route.
ACTIONS = {"open": "open", "close": "close", "half-open": "half_open"}
#: Dead letters a second a replay enqueues unless told otherwise.
DEFAULT_RATE = 10.0
#: Who the audit names for an admin token minted without a subject.
NO_SUBJECT = "admin (no subject)"


class Operations:
    """The handlers of ``/ops/...``.

    Parameters:
      secret: The relay's token secret.
      client: Redis holding the breakers, heartbeats and (on a RedisBroker) queues.
      keys: The library's key layout.
      breakers: The breakers to force, configured as the workers' are (a forced open
        lasts their ``reset_timeout``); None refuses forcing (503).
      audit: Where forced actions are recorded; None refuses them (503).
      broker_namespace: The RedisBroker's namespace; None for a broker whose queues the
        relay does not read (RabbitMQ).
      dead_letters: The dead-letters table; None answers 503.
      broker: Where replayed dead letters are enqueued; None refuses replays (503).
    """

    def __init__(
        self,
        secret: str,
        client: aioredis.Redis,
        keys: Keys,
        *,
        breakers: Breakers | None,
        audit: AuditLog | None,
        broker_namespace: str | None,
        dead_letters: DeadLetterStore | None = None,
        broker: dramatiq.Broker | None = None,
    ) -> None:
        self.secret = secret
        self.client = client
        self.keys = keys
        self.breakers = breakers
        self.audit = audit
        self.broker_namespace = broker_namespace
        self.dead_letters = dead_letters
        self.broker = broker

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ops/breakers", self.breaker_view)
        app.router.add_post("/ops/breakers/{name}/{action}", self.force)
        app.router.add_get("/ops/workers", self.worker_view)
        app.router.add_get("/ops/audit", self.audit_view)
        app.router.add_get("/ops/dead-letters", self.dead_letter_view)
        app.router.add_get("/ops/dead-letters/{id}", self.dead_letter)
        app.router.add_post("/ops/dead-letters/replay", self.replay)

    async def breaker_view(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        found: dict[str, dict[str, Any]] = {}
        async for key in self.client.scan_iter(match=self.keys.breaker_pattern(), count=100):
            fields = cast("dict[bytes, bytes]", await self.client.hgetall(key))
            state = {text(k): _number(text(v)) for k, v in fields.items()}
            found[self.keys.breaker_name(text(key))] = state
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.client.xrevrange(self.keys.breaker_events, count=TRANSITIONS * 4),
        )
        transitions: list[dict[str, Any]] = []
        for entry_id, raw in entries:
            event = {text(k): _number(text(v)) for k, v in raw.items()}
            event["id"] = text(entry_id)
            if event.get("event") != "rejected" and len(transitions) < TRANSITIONS:
                transitions.append(event)
        rows = []
        for name in sorted(found):
            state = found[name]
            last = next((t for t in transitions if t.get("breaker") == name), None)
            rows.append(
                {
                    "name": name,
                    "state": state.get("state", "closed"),
                    "failures": state.get("failures", 0),
                    "successes": state.get("successes", 0),
                    "opened_at": state.get("opened_at"),
                    "open_until": state.get("open_until"),
                    "reopens": state.get("reopens", 0),
                    "calls": state.get("calls"),
                    "slow": state.get("slow"),
                    "last_transition": last,
                }
            )
        return web.json_response(
            {"breakers": rows, "transitions": transitions, "can_force": self._can_force()}
        )

    def _can_force(self) -> bool:
        return self.breakers is not None and self.audit is not None

    async def force(self, request: web.Request) -> web.Response:
        claims = authorize_request(request, self.secret, ADMIN)
        action = ACTIONS.get(request.match_info["action"])
        if action is None:
            raise _error(web.HTTPNotFound, "bad_action", f"actions: {', '.join(ACTIONS)}")
        try:
            name = check_breaker_name(request.match_info["name"])
        except ConfigError as error:
            raise _error(web.HTTPBadRequest, "bad_request", str(error)) from None
        if self.breakers is None or self.audit is None:
            raise _error(
                web.HTTPServiceUnavailable,
                "unavailable",
                "forcing a breaker needs the relay's database (the audit) and Redis",
            )
        breaker = self.breakers[name]
        audit = self.audit
        loop = asyncio.get_running_loop()
        who = claims.subject or NO_SUBJECT
        before = await loop.run_in_executor(None, lambda: breaker.current_state)
        try:
            await loop.run_in_executor(
                None,
                lambda: audit.record(
                    who=who,
                    action=f"breaker.{action}",
                    target=name,
                    details={"from": before},
                ),
            )
        except Exception as error:
            raise _error(
                web.HTTPServiceUnavailable, "unavailable", f"the audit refused: {error}"
            ) from None
        try:
            await loop.run_in_executor(None, getattr(breaker, action))
        except StateUnavailableError as error:
            raise _error(web.HTTPServiceUnavailable, "unavailable", str(error)) from None
        state = await loop.run_in_executor(None, lambda: breaker.current_state)
        return web.json_response({"name": name, "from": before, "state": state, "by": who})

    async def worker_view(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        queues = None
        if self.broker_namespace is not None:
            queues = await self._queues(self.broker_namespace)
        return web.json_response(
            {
                "workers": await live_workers(self.client, self.keys),
                "broker_namespace": self.broker_namespace,
                "queues": queues,
            }
        )

    async def _queues(self, namespace: str) -> list[dict[str, Any]]:
        """Each queue of a RedisBroker: waiting, delayed and dead-lettered messages."""
        names = set()
        prefix = f"{namespace}:"
        match = f"{_escape(prefix)}*.msgs"
        async for key in self.client.scan_iter(match=match, count=200):
            name = text(key)[len(prefix) : -len(".msgs")]
            names.add(name.removesuffix(".DQ").removesuffix(".XQ"))
        found = []
        for name in sorted(names):
            full = f"{prefix}{name}"
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.llen(full)
                pipe.llen(f"{full}.DQ")
                pipe.zcard(f"{full}.XQ")
                ready, delayed, dead = await pipe.execute()
            found.append({"name": name, "ready": ready, "delayed": delayed, "dead": dead})
        return found

    async def dead_letter_view(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        store = _store_or_503(self.dead_letters)
        query = request.query
        try:
            matching = DeadLetterFilter.parse(
                {k: v for k, v in query.items() if k in FILTER_KEYS},
                include_retried=query.get("retried") == "1",
            )
            limit = min(int(query.get("limit", "100")), 500)
            offset = int(query.get("offset", "0"))
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(
                None, lambda: store.search(matching, limit=limit, offset=offset)
            )
            total = await loop.run_in_executor(None, store.count, matching)
        except (ValueError, ValidationError) as error:
            raise _error(web.HTTPBadRequest, "bad_request", str(error)) from None
        return web.json_response(
            {"total": total, "filter": matching.described(), "items": [_summary(r) for r in found]}
        )

    async def dead_letter(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        store = _store_or_503(self.dead_letters)
        try:
            wanted = int(request.match_info["id"])
            record = await asyncio.get_running_loop().run_in_executor(None, store.get, wanted)
        except (ValueError, ValidationError) as error:
            raise _error(web.HTTPNotFound, "not_found", str(error)) from None
        return web.json_response(
            {
                **_summary(record),
                "error_message": record.error_message,
                "error_history": record.error_history,
                "message": record.message,
            },
            dumps=lambda value: json.dumps(value, default=str),
        )

    async def replay(self, request: web.Request) -> web.Response:
        claims = authorize_request(request, self.secret, ADMIN)
        store = _store_or_503(self.dead_letters)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValidationError("the body must be a JSON object", field="body")
            ids = [int(i) for i in body.get("ids") or []]
            given = body.get("filter")
            matching = None
            if given is not None or not ids:
                matching = DeadLetterFilter.parse({k: str(v) for k, v in (given or {}).items()})
            dry_run = bool(body.get("dry_run", False))
            rate = float(body.get("rate", DEFAULT_RATE))
        except (ValueError, TypeError, ValidationError) as error:
            raise _error(web.HTTPBadRequest, "bad_request", str(error)) from None
        if not dry_run and (self.broker is None or self.audit is None):
            raise _error(
                web.HTTPServiceUnavailable,
                "unavailable",
                "replaying needs the broker and the audit (the relay's database)",
            )
        broker, audit = self.broker, self.audit
        try:
            done = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: store.replay(
                    broker,
                    ids=ids,
                    matching=matching,
                    rate=rate,
                    dry_run=dry_run,
                    audit=audit,
                    who=claims.subject or NO_SUBJECT,
                ),
            )
        except ValidationError as error:
            raise _error(web.HTTPBadRequest, "bad_request", str(error)) from None
        return web.json_response(done.as_dict())

    async def audit_view(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        if self.audit is None:
            return web.json_response({"entries": [], "available": False})
        audit = self.audit
        entries = await asyncio.get_running_loop().run_in_executor(None, audit.list)
        return web.json_response({"entries": [e.as_dict() for e in entries], "available": True})


def _store_or_503(store: DeadLetterStore | None) -> DeadLetterStore:
    if store is None:
        raise _error(
            web.HTTPServiceUnavailable, "unavailable", "this relay has no dead-letters database"
        )
    return store


def _summary(record: DeadLetterRecord) -> dict[str, Any]:
    """A dead letter as the list shows it."""
    return {
        "id": record.id,
        "message_id": record.message_id,
        "actor": record.actor_name,
        "queue": record.queue_name,
        "error_type": record.error_type,
        "error_message": record.error_message[:500],
        "reason": record.reason,
        "errors": len(record.error_history),
        "failed_at": f"{record.failed_at:%Y-%m-%dT%H:%M:%S}Z",
        "retried_at": f"{record.retried_at:%Y-%m-%dT%H:%M:%S}Z" if record.retried_at else None,
    }


def _number(value: str) -> Any:
    """A hash field as a number when it is one."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _error(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    return kind(
        text=json.dumps({"code": code, "message": message}), content_type="application/json"
    )


async def breaker_states(client: aioredis.Redis, keys: Keys) -> dict[str, str]:
    """Each breaker's state, by name."""
    states = {}
    async for key in client.scan_iter(match=keys.breaker_pattern(), count=100):
        state = await client.hget(key, "state")
        states[keys.breaker_name(text(key))] = text(state) if state else "closed"
    return states


async def live_workers(client: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The workers whose heartbeat has not expired (see :mod:`..middleware.heartbeat`)."""
    workers = []
    async for key in client.scan_iter(match=keys.worker_pattern(), count=100):
        raw = await client.get(key)
        if raw:
            workers.append(json.loads(raw))
    return sorted(workers, key=lambda w: (w["host"], w["pid"]))
