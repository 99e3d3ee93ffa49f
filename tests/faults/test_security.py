"""Attacks on the relay while an honest client watches: each refused and counted, and
the honest client receives every event, in order, without a gap."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from dramatiq_shared.metrics import REGISTRY
from dramatiq_shared.relay.auth import sign

from ..relay.conftest import SECRET, RunningRelay, collect
from ..relay.test_replay import publisher, watch

pytestmark = pytest.mark.faults

TOTAL = 3_000
REASONS = (
    "unauthorized",
    "expired",
    "forbidden",
    "bad_request",
    "rate_limited",
    "frame_too_large",
    "origin",
)


def refusals() -> dict[str, float]:
    return {
        reason: REGISTRY.get_sample_value(
            "dramatiq_shared_relay_refusals_total", {"reason": reason}
        )
        or 0.0
        for reason in REASONS
    }


async def attacks(url: str) -> list[str]:
    """Every attack once; what the relay answered to each."""
    answers: list[str] = []
    tokens = {
        "forged": sign("imp-s", "not-the-relay-secret-at-all!!"),
        "expired": sign("imp-s", SECRET, ttl=1, now=0),
        "other import": sign("imp-other", SECRET),
    }
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws") as ws:
            for token in tokens.values():
                await ws.send_json({"type": "subscribe", "import_id": "imp-s", "token": token})
                got = await collect(ws, until=lambda f: any(x["type"] == "error" for x in f))
                answers += [x["code"] for x in got if x["type"] == "error"]
        async with session.ws_connect(f"{url}/ws") as ws:
            for frame in ("not json", "[1, 2]", '{"type": "subscribe"}', '{"type": "drop"}'):
                await ws.send_str(frame)
            got = await collect(
                ws, until=lambda f: sum(x["type"] == "error" for x in f) >= 4, timeout=10
            )
            answers += [x["code"] for x in got if x["type"] == "error"]
        async with session.ws_connect(f"{url}/ws") as ws:
            await ws.send_str("x" * (64 * 1024 + 1))
            await ws.receive()
            answers.append(f"closed {ws.close_code}")
        async with session.ws_connect(f"{url}/ws") as ws:
            for _ in range(100):
                try:
                    await ws.send_str("{}")
                except ConnectionResetError:  # closed by the relay mid-flood, as it should
                    break
            while (await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                pass
            answers.append(f"closed {ws.close_code}")
        try:
            async with session.ws_connect(f"{url}/ws", headers={"Origin": "https://evil.example"}):
                answers.append("origin accepted")
        except aiohttp.WSServerHandshakeError as error:
            answers.append(f"origin {error.status}")
        async with session.get(
            f"{url}/imports/imp-s/events", params={"token": tokens["other import"]}
        ) as response:
            answers.append(f"history {response.status}")
    return answers


def test_attacks_are_refused_counted_and_the_honest_client_misses_nothing(
    redis_relay: RunningRelay, redis_url: str
) -> None:
    before = refusals()
    feed = publisher(redis_url, "imp-s", total=TOTAL, pause=0.01)

    async def scenario() -> tuple[list[int], list[str]]:
        honest = watch(redis_relay.url, "imp-s", until=lambda ids: bool(ids) and ids[-1] >= TOTAL)
        watching = asyncio.ensure_future(honest)
        await asyncio.sleep(0.3)
        feed.start()
        answers = await attacks(redis_relay.url)
        return await watching, answers

    ids, answers = asyncio.run(scenario())
    feed.join()
    assert ids == list(range(1, TOTAL + 1))
    assert answers == [
        "unauthorized",
        "expired",
        "forbidden",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "closed 1009",
        "closed 4008",
        "origin 403",
        "history 403",
    ]
    after = refusals()
    counted = {reason: after[reason] - before[reason] for reason in REASONS}
    assert counted["unauthorized"] == 1
    assert counted["expired"] == 1
    assert counted["forbidden"] == 2  # over the websocket and over HTTP
    assert counted["bad_request"] >= 4  # and the flood's frames the rate let through
    assert counted["rate_limited"] >= 1
    assert counted["frame_too_large"] == 1
    assert counted["origin"] == 1
    print(f"\nsecurity: {len(answers)} attacks refused and counted {counted}; honest client whole")
