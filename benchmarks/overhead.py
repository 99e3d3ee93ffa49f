"""What the whole suite costs per message, next to bare Dramatiq, measured side by side.

N messages go through a RedisBroker with 8 worker threads, in alternating rounds
(A B A B ...) of

* A -- bare Dramatiq (its default middleware, Retries with short backoffs);
* B -- the full stack of ``setup_broker()``: error handling, retry, a breaker on the
       actor (closed), status lifecycle events for messages with an import id,
       heartbeats, and PostgreSQL as the database;

for these kinds of message:

=========  ========================================================================
plain      a no-op actor
import     every message carries an import id (B publishes PROCESSING, COMPLETED)
retry      10% of the messages fail once and are retried
cpu        the actor burns 2 ms of pure-Python CPU (a worker that does real work)
dead       every message fails for good (A: Dramatiq's DLQ; B: also the dead-letters
           table and the structured log record)
=========  ========================================================================

Each round is measured from the worker's start until the last message is done and,
in B, its status events are persisted. Per variant it prints medians of throughput,
the CPU time of this process per message (getrusage, user + sys, every thread: on an
idle machine a no-op worker waits on Redis and hides the CPU the suite spends, which
a worker that does real work pays in full), and the commands Redis ran per message
(its ``total_commands_processed``, scripts' own commands included), then B/A ratios.

    python benchmarks/overhead.py                       # 4,000 messages, 3 rounds each
    python benchmarks/overhead.py --messages 500 --rounds 1 --variants plain,cpu
    python benchmarks/overhead.py --max-deaths none     # B without DeathLimit's count
    python benchmarks/overhead.py --by-thread           # and the CPU of each kind of thread

``--by-thread`` splits each median's CPU a message by the thread that spent it: Dramatiq's
worker threads, its consumer thread, and each background thread by name (the suite's
broadcaster, heartbeat, death-limit flusher...), read from each thread's own CPU clock.

Redis is a private ``redis-server`` it starts on a free port, so no other client's
commands are counted; ``BENCH_REDIS_URL`` names another (flushed!). PostgreSQL is a
scratch database next to ``TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from typing import Any, NamedTuple

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from scratch import commands_processed, redis_server, scratch_postgres

from dramatiq_shared import configure_logging, get_stack, setup_broker
from dramatiq_shared.db import create_tables, init_database

VARIANTS = ("plain", "import", "retry", "cpu", "dead")
#: Seconds of pure-Python work per message of the ``cpu`` variant.
CPU_BURN = 0.002


class Round(NamedTuple):
    rate: float  # messages per second
    cpu_us: float  # CPU microseconds per message
    commands: float  # Redis commands per message
    threads: dict[str, float]  # CPU microseconds per message, by kind of thread


def median(rounds: list[Round]) -> Round:
    kinds = sorted({kind for measured in rounds for kind in measured.threads})
    return Round(
        *(statistics.median(figures) for figures in zip(*(r[:3] for r in rounds), strict=True)),
        {kind: statistics.median(r.threads.get(kind, 0.0) for r in rounds) for kind in kinds},
    )


def burn(seconds: float) -> None:
    """Spin in Python (holding the GIL, as real actor code does) for ``seconds`` of CPU."""
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_seconds() -> dict[int, tuple[str, float]]:
    """Each live thread's kind (Dramatiq's worker or consumer thread, else its name)
    and the CPU seconds it has spent, by thread id."""
    spent = {}
    for thread in threading.enumerate():
        kind = type(thread).__name__
        if kind not in ("WorkerThread", "ConsumerThread"):
            kind = thread.name.rstrip("0123456789").rstrip("-") or kind
        try:
            clock = time.pthread_getcpuclockid(thread.ident or 0)
            spent[thread.ident or 0] = (kind, time.clock_gettime(clock))
        except OSError:  # ended between enumerate() and the read
            continue
    return spent


def by_kind(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between the two readings, summed by kind of thread."""
    kinds: dict[str, float] = {}
    for ident, (kind, seconds) in after.items():
        kinds[kind] = kinds.get(kind, 0.0) + seconds - before.get(ident, (kind, 0.0))[1]
    return kinds


def wait_for_dead_letters(client: redis.Redis, queue: str, messages: int) -> None:
    while client.zcard(queue) < messages:
        time.sleep(0.005)


def run_round(
    full: bool,
    variant: str,
    messages: int,
    *,
    threads: int,
    redis_url: str,
    database: str,
    max_deaths: int | None,
) -> Round:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    broker = RedisBroker(url=redis_url)
    options: dict[str, Any]
    if full:
        setup_broker(
            broker,
            database=database,
            redis_url=redis_url,
            retry={"maxAttempts": 1 if variant == "dead" else 4, "baseDelay": 1, "maxDelay": 10},
            breakers={"bench": {"failureThreshold": 10 * messages}},
            max_deaths=max_deaths,
        )
        options = {"breaker": "bench"}
    else:
        dramatiq.set_broker(broker)
        retries = 0 if variant == "dead" else 3
        options = {"max_retries": retries, "min_backoff": 1, "max_backoff": 10}
    done = threading.Event()
    lock = threading.Lock()
    finished = [0]
    failed_once: set[int] = set()

    def count() -> None:
        with lock:
            finished[0] += 1
            if finished[0] == messages:
                done.set()

    @dramatiq.actor(broker=broker, actor_name="noop", **options)
    def noop(n: int, import_id: str | None = None) -> None:
        if variant == "cpu":
            burn(CPU_BURN)
        elif variant == "retry" and n % 10 == 0 and n not in failed_once:
            failed_once.add(n)
            raise ConnectionError("fails once")
        elif variant == "dead":
            count()  # before the failure: done once every message has failed
            raise ValueError("fails for good")
        count()

    for n in range(messages):
        noop.send(n, import_id=f"imp-{n % 20}" if variant == "import" else None)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    threads = thread_seconds()
    commands, cpu, started = commands_processed(client), cpu_seconds(), time.perf_counter()
    worker.start()
    if not done.wait(900):
        raise RuntimeError(f"only {finished[0]} of {messages} messages were processed")
    if variant == "dead":  # done counts failures as they start: wait for the dead letters
        wait_for_dead_letters(client, f"{broker.namespace}:default.XQ", messages)
    if full:
        get_stack(broker).broadcaster.flush()
    elapsed = time.perf_counter() - started
    cpu, commands = cpu_seconds() - cpu, commands_processed(client) - commands
    spent = by_kind(threads, thread_seconds())  # before stop(): the threads still live
    worker.stop()
    if full:
        get_stack(broker).broadcaster.close()
    broker.close()
    client.flushdb()
    return Round(
        messages / elapsed,
        cpu / messages * 1e6,
        commands / messages,
        {kind: seconds / messages * 1e6 for kind, seconds in spent.items()},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4_000, help="per round (4000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A and of B (3)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (8)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=",".join(VARIANTS))
    parser.add_argument(
        "--max-deaths",
        type=lambda text: None if text == "none" else int(text),
        default=3,
        help="B's max_deaths: 'none' leaves out DeathLimit's count, a command a message (3)",
    )
    parser.add_argument(
        "--by-thread", action="store_true", help="split each median's CPU by kind of thread"
    )
    args = parser.parse_args(argv)
    # Both sides log the same way, to nowhere: the terminal is not what is measured.
    configure_logging("WARNING", sink=open(os.devnull, "w"))  # noqa: SIM115 - for the run

    summary = []
    with scratch_postgres() as database, redis_server() as redis_url:
        create_tables(init_database(database))
        for variant in args.variants.split(","):
            rounds: dict[bool, list[Round]] = {False: [], True: []}
            for number in range(args.rounds):
                for full in (False, True):
                    measured = run_round(
                        full,
                        variant,
                        args.messages,
                        threads=args.threads,
                        redis_url=redis_url,
                        database=database,
                        max_deaths=args.max_deaths,
                    )
                    rounds[full].append(measured)
                    side = "B suite" if full else "A bare "
                    print(
                        f"{variant:<6} round {number + 1} {side} {measured.rate:7.0f} msg/s"
                        f" {measured.cpu_us:7.0f} us/msg {measured.commands:6.2f} cmd/msg",
                        flush=True,
                    )
            a, b = (median(rounds[side]) for side in (False, True))
            summary.append((variant, a, b))
            print(
                f"{variant:<6} median A {a.rate:7.0f} msg/s, B {b.rate:7.0f} msg/s, B/A"
                f" {b.rate / a.rate:.3f}; CPU A {a.cpu_us:.0f}, B {b.cpu_us:.0f} us/msg, B/A"
                f" {b.cpu_us / a.cpu_us:.3f}; Redis A {a.commands:.2f}, B {b.commands:.2f} cmd/msg",
                flush=True,
            )
            if args.by_thread:
                for kind in sorted(set(a.threads) | set(b.threads)):
                    spent_a, spent_b = a.threads.get(kind, 0.0), b.threads.get(kind, 0.0)
                    if max(spent_a, spent_b) >= 0.5:
                        print(
                            f"{variant:<6}   {kind:<16} CPU A {spent_a:6.1f}, B {spent_b:6.1f}"
                            f" us/msg, B-A {spent_b - spent_a:+6.1f}",
                            flush=True,
                        )
    print("\nvariant  msg/s A   msg/s B   B/A    CPU us A  CPU us B  B/A    cmd/msg A  cmd/msg B")
    for variant, a, b in summary:
        print(
            f"{variant:<7} {a.rate:8.0f}  {b.rate:8.0f}  {b.rate / a.rate:5.3f}  {a.cpu_us:8.0f}"
            f"  {b.cpu_us:8.0f}  {b.cpu_us / a.cpu_us:5.3f}  {a.commands:9.2f}  {b.commands:9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
