"""Tokens, and what each kind of client gets from the relay."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis

from dramatiq_shared import AuthError, NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.keys import Keys
from dramatiq_shared.relay.auth import sign, verify

from .conftest import SECRET, RunningRelay, collect

OTHER_SECRET = "another-secret-of-32-bytes-long!!"


def test_tokens_sign_and_verify() -> None:
    token = sign("imp-1", SECRET, ttl=60, now=1_000)
    claims = verify(token, SECRET, import_id="imp-1", now=1_030)
    assert (claims.import_id, claims.expires, claims.is_admin) == ("imp-1", 1_060, False)
    cases = [
        (None, "unauthorized"),
        ("", "unauthorized"),
        ("garbage", "unauthorized"),
        (token[:-3] + "abc", "unauthorized"),
        (sign("imp-1", OTHER_SECRET, now=1_000), "unauthorized"),
    ]
    for bad, code in cases:
        with pytest.raises(AuthError) as refused:
            verify(bad, SECRET, now=1_030)
        assert refused.value.code == code
    with pytest.raises(AuthError) as late:
        verify(token, SECRET, now=1_061)
    assert late.value.code == "expired"
    with pytest.raises(AuthError) as other:
        verify(token, SECRET, import_id="imp-2", now=1_030)
    assert other.value.code == "forbidden"
    assert verify(sign("*", SECRET), SECRET, import_id="anything").is_admin
    assert verify(sign("*", SECRET, subject="alice"), SECRET).subject == "alice"
    assert verify(token, SECRET, now=1_030).subject is None


def publish(redis_client: redis.Redis, import_id: str, count: int) -> None:
    RedisTransport(redis_client).append(
        [
            StatusEvent(import_id, NoteStatus.PROCESSING, current_count=n, total_count=count)
            for n in range(count)
        ],
        1_000,
    )


@pytest.mark.parametrize(
    ("token", "import_id", "expected"),
    [
        (None, "imp-1", "unauthorized"),
        (sign("imp-1", OTHER_SECRET), "imp-1", "unauthorized"),
        (sign("imp-1", SECRET, ttl=1, now=0), "imp-1", "expired"),
        (sign("imp-2", SECRET), "imp-1", "forbidden"),
        (sign("imp-1", SECRET), "imp-1", None),
        (sign("*", SECRET), "imp-1", None),
    ],
    ids=["no token", "bad signature", "expired", "other import", "own import", "admin"],
)
def test_the_auth_matrix(
    redis_relay: RunningRelay,
    redis_client: redis.Redis,
    token: str | None,
    import_id: str,
    expected: str | None,
) -> None:
    publish(redis_client, "imp-1", 3)
    publish(redis_client, "imp-2", 2)

    async def scenario() -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{redis_relay.url}/ws") as ws,
        ):
            await ws.send_json({"type": "subscribe", "import_id": import_id, "token": token})
            return await collect(
                ws, until=lambda got: any(f["type"] in ("error", "subscribed") for f in got)
            )

    received = asyncio.run(scenario())
    if expected is None:
        assert [f["id"] for f in received if f["type"] == "event"] == [1, 2, 3]
        assert all(f["import_id"] == "imp-1" for f in received if f["type"] == "event")
    else:
        assert received == [received[0]]
        assert received[0]["type"] == "error"
        assert received[0]["code"] == expected


def test_the_http_history_checks_tokens_too(
    redis_relay: RunningRelay, redis_client: redis.Redis
) -> None:
    publish(redis_client, "imp-1", 5)

    async def scenario() -> list[tuple[int, Any]]:
        results = []
        async with aiohttp.ClientSession() as session:
            for path, token in [
                ("/imports/imp-1/events?after=2", sign("imp-1", SECRET)),
                ("/imports/imp-1/events", None),
                ("/imports/imp-1/events", sign("imp-2", SECRET)),
                ("/imports", sign("imp-1", SECRET)),
                ("/imports", sign("*", SECRET)),
            ]:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with session.get(f"{redis_relay.url}{path}", headers=headers) as response:
                    results.append((response.status, await response.json()))
        return results

    history, anonymous, other, not_admin, admin = asyncio.run(scenario())
    assert history[0] == 200
    assert [e["id"] for e in history[1]] == [3, 4, 5]
    assert history[1][0]["importId"] == "imp-1"
    assert (anonymous[0], anonymous[1]["code"]) == (401, "unauthorized")
    assert (other[0], other[1]["code"]) == (403, "forbidden")
    assert not_admin[0] == 403
    assert admin[0] == 200
    assert admin[1][0]["import_id"] == "imp-1"
    assert (admin[1][0]["current_count"], admin[1][0]["total_count"]) == (4, 5)


def test_repeated_refusals_close_the_socket(redis_relay: RunningRelay) -> None:
    async def scenario() -> int | None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{redis_relay.url}/ws") as ws,
        ):
            for _ in range(5):
                await ws.send_json(
                    {"type": "subscribe", "import_id": "imp-1", "token": "forged.token"}
                )
            while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                pass
            return ws.close_code

    assert asyncio.run(scenario()) == 4003


def test_an_admin_subscription_to_every_import_gets_live_events(
    redis_relay: RunningRelay, redis_client: redis.Redis
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{redis_relay.url}/ws") as ws,
        ):
            await ws.send_json({"type": "subscribe", "import_id": "*", "token": sign("*", SECRET)})
            await collect(ws, until=lambda got: any(f["type"] == "subscribed" for f in got))
            publish(redis_client, "imp-a", 2)
            publish(redis_client, "imp-b", 1)
            return await collect(ws, until=lambda got: len(got) >= 3)

    received = asyncio.run(scenario())
    assert sorted((f["import_id"], f["id"]) for f in received) == [
        ("imp-a", 1),
        ("imp-a", 2),
        ("imp-b", 1),
    ]


def test_malformed_frames_get_an_error_and_foreign_origins_are_refused(
    redis_relay: RunningRelay,
) -> None:
    async def scenario() -> tuple[list[str], int]:
        codes = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{redis_relay.url}/ws") as ws:
                for text in [
                    "not json",
                    "[1, 2]",
                    '{"type": "dance"}',
                    '{"type": "subscribe", "import_id": 5}',
                ]:
                    await ws.send_str(text)
                    (frame,) = await collect(ws, until=bool)
                    codes.append(frame["code"])
            try:
                await session.ws_connect(
                    f"{redis_relay.url}/ws", headers={"Origin": "https://evil.test"}
                )
            except aiohttp.WSServerHandshakeError as error:
                return codes, error.status
        return codes, 0

    codes, refused = asyncio.run(scenario())
    assert codes == ["bad_request"] * 4
    assert refused == 403


def test_limits_frame_size_subscriptions_and_rate(redis_relay: RunningRelay) -> None:
    admin = sign("*", SECRET)

    async def scenario() -> tuple[list[str], int | None, int | None]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{redis_relay.url}/ws") as ws:
                for n in range(100):
                    await ws.send_json({"type": "subscribe", "import_id": f"i-{n}", "token": admin})
                    if n % 20 == 19:
                        await asyncio.sleep(2.1)  # stay under the frame rate
                await ws.send_json(
                    {"type": "subscribe", "import_id": "one-too-many", "token": admin}
                )
                got = await collect(ws, until=lambda f: any(x["type"] == "error" for x in f))
                codes = [f["code"] for f in got if f["type"] == "error"]
            async with session.ws_connect(f"{redis_relay.url}/ws") as ws:
                await ws.send_str("x" * (64 * 1024 + 1))
                await ws.receive()
                too_big = ws.close_code
            async with session.ws_connect(f"{redis_relay.url}/ws") as ws:
                for _ in range(60):
                    try:
                        await ws.send_str("{}")
                    except ConnectionResetError:  # cut before the last: what is tested
                        break
                while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                    pass
                flood = ws.close_code
        return codes, too_big, flood

    codes, too_big, flood = asyncio.run(scenario())
    assert codes == ["too_many_subscriptions"]
    assert too_big == 1009
    assert flood == 4008


def test_health_reports_redis_and_breaker_states(
    redis_relay: RunningRelay, redis_client: redis.Redis
) -> None:
    keys = Keys()
    redis_client.hset(keys.breaker("usda-api"), mapping={"state": "open"})
    redis_client.zadd(keys.breaker_trials("usda-api"), {"lease": 1})  # not a breaker
    redis_client.set(keys.worker("host", 42), '{"host": "host", "pid": 42}', px=5_000)

    async def scenario() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{redis_relay.url}/health") as response,
        ):
            return response.status, await response.json()

    status, body = asyncio.run(scenario())
    assert status == 200
    assert body["redis"] == "ok"
    assert body["status"] == "ok"
    assert body["breakers"] == {"usda-api": "open"}
    assert body["workers"] == [{"host": "host", "pid": 42}]
