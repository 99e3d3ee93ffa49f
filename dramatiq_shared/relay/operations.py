"""The relay's operations views, for admin tokens only: breakers, workers and queues, audit.

Every route answers 401 without a valid token and 403 to a token for one import. A
forced breaker moves through :class:`~dramatiq_shared.breakers.SharedCircuitBreaker`'s
``open()``, ``close()`` and ``half_open()``, so the breakers' Lua scripts stay the only
writers of their state, and each force is recorded in the audit table (who: the
token's subject) before it is made: an action the audit cannot record is refused.

Queue depths are read from a ``RedisBroker``'s keys (its namespace, ``dramatiq`` by
default): messages waiting, delayed (``{queue}.DQ``) and dead-lettered
(``{queue}.XQ``). On RabbitMQ the relay reads no queue (``queues`` is null): its
management API has them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import redis.asyncio as aioredis
from aiohttp import web

from .._redis import text
from ..breakers import Breakers, StateUnavailableError, check_breaker_name
from ..errors import ConfigError
from ..keys import Keys, _escape
from ..stores.audit import AuditLog
from .auth import ADMIN, authorize_request

__all__ = ["Operations", "breaker_states", "live_workers"]

#: Breaker transitions the view shows, newest first.
TRANSITIONS = 50
#: Force actions, by the name in the route.
ACTIONS = {"open": "open", "close": "close", "half-open": "half_open"}
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
    ) -> None:
        self.secret = secret
        self.client = client
        self.keys = keys
        self.breakers = breakers
        self.audit = audit
        self.broker_namespace = broker_namespace

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ops/breakers", self.breaker_view)
        app.router.add_post("/ops/breakers/{name}/{action}", self.force)
        app.router.add_get("/ops/workers", self.worker_view)
        app.router.add_get("/ops/audit", self.audit_view)

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

    async def audit_view(self, request: web.Request) -> web.Response:
        authorize_request(request, self.secret, ADMIN)
        if self.audit is None:
            return web.json_response({"entries": [], "available": False})
        audit = self.audit
        entries = await asyncio.get_running_loop().run_in_executor(None, audit.list)
        return web.json_response({"entries": [e.as_dict() for e in entries], "available": True})


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
