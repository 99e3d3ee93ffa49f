"""Relay fan-out: status events from Redis to many websocket clients, against a bare subscriber.

A publisher process appends events at a target rate through ``RedisTransport``, spread
over many imports. A relay process (``python -m dramatiq_shared.relay``) serves them to
websocket clients: one per import, each subscribed to its import, plus admin clients
subscribed to every import. In the same run a bare Redis subscriber reads the same
all-imports stream with XREAD. It prints what each received, events/s, publish→receive
latency (p50, p99; a frame may carry several events) and the relay's memory and CPU.

    python benchmarks/relay_fanout.py                       # 20,000 events/s, 200+5 clients
    python benchmarks/relay_fanout.py --rate 500 --imports 5 --admins 1 --seconds 2

Uses Redis database 14 of ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/14),
which it flushes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.keys import Keys
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.status.transport import batch_entry

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SECRET = "benchmark-secret-32-bytes-long!!"
KEYS = Keys()


def publish(rate: int, imports: int, seconds: float, start: float) -> None:
    """Append ``rate`` events a second for ``seconds``, in 10 ms batches, round-robin."""
    transport = RedisTransport(redis.Redis.from_url(REDIS_URL), maxlen=200_000)
    per_tick = max(1, rate // 100)
    time.sleep(max(0.0, start - time.time()))
    sent, tick = 0, time.time()
    while time.time() - start < seconds:
        events = [
            StatusEvent(
                f"imp-{(sent + n) % imports}",
                NoteStatus.PROCESSING,
                current_count=sent + n,
                metadata={"t": time.time()},
            )
            for n in range(per_tick)
        ]
        transport.append(events, int(time.time() * 1000))
        sent += per_tick
        tick += 0.01
        time.sleep(max(0.0, tick - time.time()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_figures(pid: int) -> tuple[int, float]:
    """RSS in KiB and CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver:
    """Counts events and their latencies for one kind of receiver."""

    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []

    def take(self, event: dict[str, Any], now: float) -> None:
        self.count += 1
        self.latencies.append(now - event["metadata"]["t"])

    def take_message(self, text: str, now: float) -> None:
        """Count a websocket message's events; time its newest, without parsing it all.

        Parsing every event here would make the clients, not the relay, the bottleneck.
        """
        self.count += text.count('"type":"event"')
        mark = text.rfind('"t":')
        if mark >= 0:
            end = mark + 4
            while end < len(text) and text[end] in "0123456789.e-":
                end += 1
            self.latencies.append(now - float(text[mark + 4 : end]))

    def summary(self, seconds: float) -> str:
        if not self.latencies:
            return "nothing received"
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[int(len(ordered) * 0.99)] * 1000
        rate = self.count / seconds
        return f"{self.count:>9,} events {rate:>9,.0f}/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"


async def websocket_client(
    url: str, import_id: str, receiver: Receiver, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/ws", max_msg_size=0) as ws,
    ):
        await ws.send_json(
            {"type": "subscribe", "import_id": import_id, "token": sign(import_id, SECRET)}
        )
        while '"subscribed"' not in (await ws.receive()).data:
            pass  # ready once the relay has registered the subscription
        ready.set()
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"client {import_id} was closed: {message.data} {message.extra}")
            receiver.take_message(message.data, time.time())


async def bare_subscriber(receiver: Receiver, stop: asyncio.Event) -> None:
    client = aioredis.from_url(REDIS_URL)
    last = "$"
    while not stop.is_set():
        replies = await client.xread({KEYS.all_status: last}, count=1_000, block=200)
        now = time.time()
        for _, entries in replies or []:
            for entry_id, fields in entries:
                last = entry_id
                for _, _, event in batch_entry(fields):
                    receiver.take(json.loads(event), now)
    await client.aclose()


async def run_clients(args: argparse.Namespace, url: str, relay_pid: int) -> int:
    per_import, admins, bare = Receiver(), Receiver(), Receiver()
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(args.imports + args.admins)]
    tasks = [
        asyncio.ensure_future(websocket_client(url, f"imp-{n}", per_import, readies[n], stop))
        for n in range(args.imports)
    ] + [
        asyncio.ensure_future(websocket_client(url, "*", admins, readies[args.imports + n], stop))
        for n in range(args.admins)
    ]
    tasks.append(asyncio.ensure_future(bare_subscriber(bare, stop)))
    for ready in readies:
        await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.5)
    rss_before, cpu_before = process_figures(relay_pid)
    start = time.time() + 0.5
    publisher = multiprocessing.get_context("fork").Process(
        target=publish, args=(args.rate, args.imports, args.seconds, start)
    )
    publisher.start()
    rss_peak = rss_before
    while publisher.is_alive():
        await asyncio.sleep(0.2)
        rss_peak = max(rss_peak, process_figures(relay_pid)[0])
    entries = redis.Redis.from_url(REDIS_URL).xrange(KEYS.all_status)
    published = sum(len(batch_entry(fields)) for _, fields in entries)
    expected = published * (1 + args.admins)
    drained = time.time() + 30  # let the backlog arrive, if there is one
    while per_import.count + admins.count < expected and time.time() < drained:
        await asyncio.sleep(0.2)
    rss_after, cpu_after = process_figures(relay_pid)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    seconds = args.seconds
    print(
        f"published {published:,} events in {seconds:.0f} s ({published / seconds:,.0f}/s)"
        f" over {args.imports} imports"
    )
    print(f"bare Redis subscriber:        {bare.summary(seconds)}")
    print(f"relay, {args.imports} import clients:  {per_import.summary(seconds)}")
    print(f"relay, {args.admins} admin clients:    {admins.summary(seconds)}")
    delivered = per_import.count + admins.count
    print(
        f"relay delivered {delivered:,} of {expected:,} expected"
        f" ({'all' if delivered == expected else 'MISSING SOME'})"
    )
    if bare.count:
        print(
            f"ratio relay/bare events/s per subscriber: {per_import.count / bare.count:.3f}"
            " (import clients, summed, against the one bare reader)"
        )
    print(
        f"relay memory: {rss_before / 1024:.0f} MiB before, {rss_peak / 1024:.0f} MiB peak,"
        f" {rss_after / 1024:.0f} MiB after; relay CPU {cpu_after - cpu_before:.1f} s"
        f" in {seconds + 1:.0f} s"
    )
    return 0 if delivered == expected else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20_000, help="events a second (20000)")
    parser.add_argument("--imports", type=int, default=200, help="imports, one client each (200)")
    parser.add_argument("--admins", type=int, default=5, help="clients of every import (5)")
    parser.add_argument("--seconds", type=float, default=10, help="publishing time (10)")
    args = parser.parse_args(argv)

    redis.Redis.from_url(REDIS_URL).flushdb()
    port = free_port()
    env = {**os.environ, "REDIS_URL": REDIS_URL, "DRAMATIQ_SHARED_SECRET": SECRET}
    env.pop("DATABASE_URL", None)
    env.pop("DRAMATIQ_SHARED_DB_URL", None)
    relay = subprocess.Popen(
        [sys.executable, "-m", "dramatiq_shared.relay", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except OSError:
                if relay.poll() is not None:
                    raise SystemExit("the relay did not start") from None
                time.sleep(0.1)
        return asyncio.run(run_clients(args, url, relay.pid))
    finally:
        relay.terminate()
        relay.wait(10)
        redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    sys.exit(main())
