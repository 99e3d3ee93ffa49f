"""What a closed circuit breaker costs per message, on RedisBroker with real worker threads.

N no-op messages go through a RedisBroker with 8 worker threads, timed from worker
start until the last message is processed, in alternating rounds (A B A B ...):

* A -- Dramatiq's default middleware;
* B -- the same plus the CircuitBreaker middleware, the actor guarded by a breaker
       that stays closed.

It prints the median throughput of each, the B/A ratio, and the Redis commands each
message cost (from Redis's own command counter, which also counts the commands a
script runs: the breaker's check is one round trip, EVALSHA, running HMGET inside),
all measured in the same run.

    python benchmarks/breaker_overhead.py                # 20,000 messages, 3 rounds each
    python benchmarks/breaker_overhead.py --messages 500 --rounds 1

Uses Redis database 14 of ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/14),
which it flushes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from scratch import commands_processed

from dramatiq_shared import CircuitBreakerConfig
from dramatiq_shared.middleware import CircuitBreaker

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def run_round(with_breaker: bool, messages: int, threads: int) -> tuple[float, float]:
    """Messages per second and Redis commands per message of one round."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    broker = RedisBroker(url=REDIS_URL)
    options: dict[str, Any] = {}
    if with_breaker:
        config = CircuitBreakerConfig(failure_threshold=5)
        broker.add_middleware(CircuitBreaker(redis_client=client, breakers={"bench": config}))
        options["breaker"] = "bench"
    done = threading.Event()
    processed = [0]
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, actor_name="noop", **options)
    def noop() -> None:
        with lock:
            processed[0] += 1
            if processed[0] == messages:
                done.set()

    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    before = commands_processed(client)
    started = time.perf_counter()
    worker.start()
    if not done.wait(600):
        raise RuntimeError(f"only {processed[0]} of {messages} messages were processed")
    elapsed = time.perf_counter() - started
    used = commands_processed(client) - before
    worker.stop()
    broker.close()
    client.flushdb()
    return messages / elapsed, used / messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per round (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (3)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (8)")
    args = parser.parse_args(argv)

    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for number in range(args.rounds):
        for with_breaker in (False, True):
            rate, commands = run_round(with_breaker, args.messages, args.threads)
            results[with_breaker].append((rate, commands))
            label = "B breaker" if with_breaker else "A bare   "
            print(
                f"round {number + 1} {label}  {rate:9.0f} msg/s  {commands:5.2f} Redis commands/msg"
            )
    bare = statistics.median(rate for rate, _ in results[False])
    guarded = statistics.median(rate for rate, _ in results[True])
    extra = statistics.median(c for _, c in results[True]) - statistics.median(
        c for _, c in results[False]
    )
    print(f"median A (bare):           {bare:9.0f} msg/s")
    print(f"median B (closed breaker): {guarded:9.0f} msg/s")
    print(f"B/A throughput ratio:      {guarded / bare:9.3f}")
    print(f"extra Redis commands/msg:  {extra:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
