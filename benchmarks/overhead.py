"""What the whole suite costs per message, next to bare Dramatiq, measured side by side.

N no-op messages go through a RedisBroker with 8 worker threads, timed from worker start
until the last message is processed, in alternating rounds (A B A B ...) of

* A -- bare Dramatiq (its default middleware);
* B -- the full stack of ``setup_broker()``: error handling, retry, a breaker on the
       actor (closed), status lifecycle events for messages with an import id,
       heartbeats, and PostgreSQL as the database;

for three kinds of message: plain; 10% failing once and retried; every one carrying
an import id (so B publishes PROCESSING and COMPLETED for each). It prints the medians
and the B/A throughput ratio of each.

    python benchmarks/overhead.py                       # 20,000 messages, 5 rounds each
    python benchmarks/overhead.py --messages 500 --rounds 1 --variants plain

Uses Redis database 14 of ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/14),
which it flushes, and a scratch PostgreSQL database next to ``TEST_POSTGRES_URL``.
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
from scratch import scratch_postgres

from dramatiq_shared import configure_logging, get_stack, setup_broker
from dramatiq_shared.db import create_tables, init_database

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
VARIANTS = ("plain", "retry", "import")


def run_round(full: bool, variant: str, messages: int, threads: int, database: str) -> float:
    """Messages per second of one round."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    broker = RedisBroker(url=REDIS_URL)
    options: dict[str, Any]
    if full:
        setup_broker(
            broker,
            database=database,
            redis_url=REDIS_URL,
            retry={"maxAttempts": 4, "baseDelay": 1, "maxDelay": 10},
            breakers={"bench": {"failureThreshold": messages}},
        )
        options = {"breaker": "bench"}
    else:
        dramatiq.set_broker(broker)
        options = {"max_retries": 3, "min_backoff": 1, "max_backoff": 10}
    done = threading.Event()
    lock = threading.Lock()
    processed = [0]
    failed_once: set[int] = set()

    @dramatiq.actor(broker=broker, actor_name="noop", **options)
    def noop(n: int, import_id: str | None = None) -> None:
        if variant == "retry" and n % 10 == 0 and n not in failed_once:
            failed_once.add(n)
            raise ConnectionError("fails once")
        with lock:
            processed[0] += 1
            if processed[0] == messages:
                done.set()

    for n in range(messages):
        if variant == "import":
            noop.send(n, import_id=f"imp-{n % 20}")
        else:
            noop.send(n)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    if not done.wait(900):
        raise RuntimeError(f"only {processed[0]} of {messages} messages were processed")
    elapsed = time.perf_counter() - started
    worker.stop()
    if full:
        get_stack(broker).broadcaster.close()
    broker.close()
    client.flushdb()
    return messages / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per round (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of A and of B (5)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (8)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="plain,retry,import")
    args = parser.parse_args(argv)
    # Both sides log the same way, to nowhere: the terminal is not what is measured.
    configure_logging("WARNING", sink=open(os.devnull, "w"))  # noqa: SIM115 - for the run

    with scratch_postgres() as database:
        create_tables(init_database(database))
        for variant in args.variants.split(","):
            rates: dict[bool, list[float]] = {False: [], True: []}
            for number in range(args.rounds):
                for full in (False, True):
                    rate = run_round(full, variant, args.messages, args.threads, database)
                    rates[full].append(rate)
                    side = "B suite" if full else "A bare "
                    print(f"{variant:<7} round {number + 1} {side} {rate:9.0f} msg/s", flush=True)
            bare, suite = statistics.median(rates[False]), statistics.median(rates[True])
            print(
                f"{variant:<7} median A {bare:9.0f} msg/s, median B {suite:9.0f} msg/s,"
                f" B/A {suite / bare:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
