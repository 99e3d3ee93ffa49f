"""What a closed circuit breaker costs per message, on RedisBroker with real worker threads.

N no-op messages go through a RedisBroker with 8 worker threads, timed from worker
start until the last message is processed, in alternating rounds (A B C A B C ...):

* A -- Dramatiq's default middleware;
* B -- the same plus the CircuitBreaker middleware, the actor guarded by a breaker
       that stays closed (counting failures in a row);
* C -- the same, the breaker counting failure and slow-call rates over a window
       (its successes sent to Redis in batches).

It prints the median throughput of each, the process's CPU time a message
(getrusage: the worker runs in this process), their ratios to A, and the Redis
commands each message cost (from Redis's own command counter, which also counts the
commands a script runs), all measured in the same run.

    python benchmarks/breaker_overhead.py                # 20,000 messages, 3 rounds each
    python benchmarks/breaker_overhead.py --messages 500 --rounds 1

Uses Redis database 14 of ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/14),
which it flushes.
"""

from __future__ import annotations

import argparse
import os
import resource
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


#: The breaker of each variant; None: no breaker.
VARIANTS: dict[str, CircuitBreakerConfig | None] = {
    "A bare   ": None,
    "B breaker": CircuitBreakerConfig(failure_threshold=5),
    "C rates  ": CircuitBreakerConfig(
        failure_rate_threshold=50, slow_call_duration=1_000, minimum_calls=20
    ),
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_round(
    config: CircuitBreakerConfig | None, messages: int, threads: int
) -> tuple[float, float, float]:
    """Messages per second, CPU µs and Redis commands per message of one round."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    broker = RedisBroker(url=REDIS_URL)
    options: dict[str, Any] = {}
    if config is not None:
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
    cpu = cpu_seconds()
    started = time.perf_counter()
    worker.start()
    if not done.wait(600):
        raise RuntimeError(f"only {processed[0]} of {messages} messages were processed")
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    used = commands_processed(client) - before
    worker.stop()
    broker.close()
    client.flushdb()
    return messages / elapsed, 1e6 * cpu / messages, used / messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per round (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (3)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (8)")
    args = parser.parse_args(argv)

    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in VARIANTS}
    for number in range(args.rounds):
        for label, config in VARIANTS.items():
            rate, cpu, commands = run_round(config, args.messages, args.threads)
            results[label].append((rate, cpu, commands))
            print(
                f"round {number + 1} {label}  {rate:7.0f} msg/s  {cpu:6.0f} CPU us/msg"
                f"  {commands:5.2f} Redis commands/msg"
            )
    medians = {
        label: [statistics.median(row[column] for row in rows) for column in range(3)]
        for label, rows in results.items()
    }
    bare_rate, bare_cpu, bare_commands = medians["A bare   "]
    for label, (rate, cpu, commands) in medians.items():
        print(
            f"median {label}  {rate:7.0f} msg/s ({rate / bare_rate:.3f})"
            f"  {cpu:6.0f} CPU us/msg ({cpu / bare_cpu:.3f})"
            f"  {commands - bare_commands:+5.2f} Redis commands/msg"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
