"""The operations routes: breakers, workers and queues, the audit; admin tokens only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import dramatiq
import peewee
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import CircuitBreakerConfig
from dramatiq_shared.breakers import Breakers
from dramatiq_shared.keys import Keys
from dramatiq_shared.middleware.heartbeat import Heartbeat
from dramatiq_shared.relay import RedisSource, create_app
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.stores import AuditLog, DeadLetterStore

from ..conftest import wait_until
from .conftest import SECRET, RunningRelay

ADMIN = sign("*", SECRET, subject="alice")
#: Every operations route: method and path.
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/ops/breakers", None),
    ("POST", "/ops/breakers/usda-api/open", None),
    ("POST", "/ops/breakers/usda-api/close", None),
    ("POST", "/ops/breakers/usda-api/half-open", None),
    ("GET", "/ops/workers", None),
    ("GET", "/ops/dead-letters?actor=parse_note", None),
    ("GET", "/ops/dead-letters/1", None),
    ("POST", "/ops/dead-letters/replay", {"filter": {"actor": "parse_note"}, "dry_run": True}),
    ("POST", "/ops/dead-letters/replay", {"ids": [1], "rate": 100}),
    ("GET", "/ops/audit", None),
]
RATES = CircuitBreakerConfig(failure_rate_threshold=50, window_size=10, minimum_calls=10)


@pytest.fixture
def ops_relay(
    redis_client: redis.Redis, redis_url: str, database: peewee.Database
) -> Iterator[tuple[RunningRelay, Breakers, AuditLog]]:
    """A relay whose admin tokens may force breakers and replay dead letters (onto a
    StubBroker), audited in ``database``."""
    audit = AuditLog(database)
    breakers = Breakers(redis_client, configs={"rate-api": RATES}, default=CircuitBreakerConfig())
    broker = StubBroker()

    def make() -> web.Application:
        client = aioredis.from_url(redis_url)
        return create_app(
            RedisSource(client),
            secret=SECRET,
            breaker_client=client,
            breakers=breakers,
            audit=audit,
            dead_letters=DeadLetterStore(database),
            broker=broker,
        )

    with RunningRelay(make) as relay:
        yield relay, breakers, audit
    breakers.close()


async def call(
    url: str, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{url}{path}", headers=headers, json=body) as response,
    ):
        return response.status, await response.json()


def test_every_operations_route_is_refused_to_tokens_that_are_not_admin(
    ops_relay: tuple[RunningRelay, Breakers, AuditLog],
) -> None:
    relay, breakers, audit = ops_relay
    breakers["usda-api"].close()  # the breaker exists
    store = DeadLetterStore(audit.database)
    store.record(dead_message(), error_type="builtins.KeyError", error_message="x", reason="r")

    async def scenario() -> list[tuple[int, int, int]]:
        found = []
        for method, path, body in ROUTES:
            anonymous, _ = await call(relay.url, method, path, None, body)
            one_import, refused = await call(relay.url, method, path, sign("imp-1", SECRET), body)
            assert refused["code"] == "forbidden"
            admin, _ = await call(relay.url, method, path, ADMIN, body)
            found.append((anonymous, one_import, admin))
        return found

    assert asyncio.run(scenario()) == [(401, 403, 200)] * len(ROUTES)
    # Only the admin's three forces and one replay were made, and recorded.
    assert [(e.who, e.action, e.target) for e in reversed(audit.list())] == [
        ("alice", "breaker.open", "usda-api"),
        ("alice", "breaker.close", "usda-api"),
        ("alice", "breaker.half_open", "usda-api"),
        ("alice", "dead_letters.retry", "ids=[1]"),
    ]
    assert store.get(1).retried_at is not None


def dead_message(number: int = 1) -> dict[str, Any]:
    return dramatiq.Message(
        queue_name="default",
        actor_name="parse_note",
        args=(),
        kwargs={"import_id": "imp-1"},
        options={"error_history": [{"attempt": 1, "error_type": "builtins.KeyError"}]},
        message_id=f"m-{number}",
    ).asdict()


def test_the_dead_letters_view_searches_shows_one_and_replays_by_filter(
    ops_relay: tuple[RunningRelay, Breakers, AuditLog],
) -> None:
    relay, _, audit = ops_relay
    store = DeadLetterStore(audit.database)
    for n in (1, 2, 3):
        store.record(
            dead_message(n),
            error_type="builtins.KeyError" if n < 3 else "builtins.ValueError",
            error_message=f"error {n}",
            reason="exhausted",
        )

    async def scenario() -> tuple[Any, ...]:
        listed = await call(relay.url, "GET", "/ops/dead-letters?error_type=KeyError", ADMIN)
        one = await call(relay.url, "GET", "/ops/dead-letters/3", ADMIN)
        counted = await call(
            relay.url,
            "POST",
            "/ops/dead-letters/replay",
            ADMIN,
            {"filter": {"error_type": "KeyError"}, "dry_run": True},
        )
        done = await call(
            relay.url,
            "POST",
            "/ops/dead-letters/replay",
            ADMIN,
            {"filter": {"error_type": "KeyError"}, "rate": 50},
        )
        again = await call(
            relay.url,
            "POST",
            "/ops/dead-letters/replay",
            ADMIN,
            {"filter": {"error_type": "KeyError"}},
        )
        after = await call(relay.url, "GET", "/ops/dead-letters", ADMIN)
        bad = await call(relay.url, "GET", "/ops/dead-letters?since=yesterday", ADMIN)
        return listed, one, counted, done, again, after, bad

    listed, one, counted, done, again, after, bad = asyncio.run(scenario())
    assert listed[1]["total"] == 2
    assert [d["error_message"] for d in listed[1]["items"]] == ["error 2", "error 1"]
    assert one[1]["error_history"] == [{"attempt": 1, "error_type": "builtins.KeyError"}]
    assert (one[1]["message_id"], one[1]["message"]["message_id"]) == ("m-3", "m-3")
    assert counted[1] == {"matched": 2, "enqueued": 0, "dry_run": True}
    assert done[1] == {"matched": 2, "enqueued": 2, "dry_run": False}
    assert again[1] == {"matched": 0, "enqueued": 0, "dry_run": False}  # once each
    assert [d["error_message"] for d in after[1]["items"]] == ["error 3"]
    assert bad[0] == 400
    again_entry, entry = audit.list()  # each replay, even of nothing, is audited
    assert (entry.who, entry.target, entry.count, entry.details) == (
        "alice",
        "error_type=KeyError",
        2,
        {"filter": {"error_type": "KeyError"}, "rate": 50.0},
    )
    assert (again_entry.count, again_entry.details["rate"]) == (0, 10.0)  # the default rate


def test_the_breakers_view_shows_states_windows_and_transitions_and_forcing_is_audited(
    ops_relay: tuple[RunningRelay, Breakers, AuditLog], redis_client: redis.Redis
) -> None:
    relay, breakers, audit = ops_relay
    rate = breakers["rate-api"]
    for _ in range(3):  # failures are sent at once: the window holds 3 calls
        with pytest.raises(ConnectionError), rate.calling():
            raise ConnectionError("down")
    breakers["usda-api"].close()

    async def scenario() -> tuple[Any, Any, Any]:
        forced = await call(relay.url, "POST", "/ops/breakers/usda-api/open", ADMIN)
        view = await call(relay.url, "GET", "/ops/breakers", ADMIN)
        listed = await call(relay.url, "GET", "/ops/audit", ADMIN)
        return forced, view, listed

    (status, forced), (_, view), (_, listed) = asyncio.run(scenario())
    assert status == 200
    assert forced == {"name": "usda-api", "from": "closed", "state": "open", "by": "alice"}
    assert breakers["usda-api"].current_state == "open"  # for every process
    rows = {b["name"]: b for b in view["breakers"]}
    assert rows["usda-api"]["state"] == "open"
    assert rows["usda-api"]["open_until"] > time.time() * 1000
    assert rows["usda-api"]["last_transition"]["state"] == "open"
    assert rows["rate-api"]["state"] == "closed"
    assert (rows["rate-api"]["failures"], rows["rate-api"]["calls"]) == (3, 3)
    assert rows["rate-api"]["slow"] == 0
    assert view["transitions"][0]["breaker"] == "usda-api"
    assert view["can_force"] is True
    entry = listed["entries"][0]
    assert (entry["who"], entry["action"], entry["target"]) == ("alice", "breaker.open", "usda-api")
    assert entry["details"] == {"from": "closed"}
    assert len(audit.list()) == 1  # the close above was the library's, not the relay's


def test_forcing_needs_the_audit(redis_client: redis.Redis, redis_url: str) -> None:
    def make() -> web.Application:
        client = aioredis.from_url(redis_url)
        return create_app(RedisSource(client), secret=SECRET, breaker_client=client)

    with RunningRelay(make) as relay:
        status, body = asyncio.run(call(relay.url, "POST", "/ops/breakers/usda-api/open", ADMIN))
        _, view = asyncio.run(call(relay.url, "GET", "/ops/breakers", ADMIN))
    assert (status, body["code"]) == (503, "unavailable")
    assert view["can_force"] is False
    assert redis_client.hget(Keys().breaker("usda-api"), "state") is None  # not forced


def test_the_workers_view_shows_live_workers_and_a_redis_brokers_queues(
    ops_relay: tuple[RunningRelay, Breakers, AuditLog],
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    relay, _, _ = ops_relay
    broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    broker.add_middleware(Heartbeat(client=redis_client, interval=50, ttl=2_000))

    @dramatiq.actor(broker=broker, queue_name="ops-waiting")
    def waits() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="ops-dead", max_retries=0)
    def fails() -> None:
        raise RuntimeError("fails for good")

    for _ in range(3):
        waits.send()
    waits.send_with_options(delay=60_000)
    fails.send()
    worker = dramatiq.Worker(broker, queues={"ops-dead"}, worker_timeout=50)
    worker.start()
    try:
        dead = f"{broker.namespace}:ops-dead.XQ"
        assert wait_until(lambda: redis_client.zcard(dead) == 1, time.monotonic() + 10)
        status, view = asyncio.run(call(relay.url, "GET", "/ops/workers", ADMIN))
    finally:
        worker.stop()
        broker.close()
    assert status == 200
    assert len(view["workers"]) == 1
    queues = {q["name"]: q for q in view["queues"]}
    assert queues["ops-waiting"] == {"name": "ops-waiting", "ready": 3, "delayed": 1, "dead": 0}
    assert queues["ops-dead"]["dead"] == 1
