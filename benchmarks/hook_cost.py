"""What the middleware's hooks cost a message, on one thread, next to bare Dramatiq's.

Messages go through the hooks the way Dramatiq's worker calls them (before and after
``process_message``, around the ack) with a no-op actor, one thread, no worker, no
consumer: only the Python each middleware runs a message, which ``overhead.py``'s
worker then pays about 1.7 times over in GIL hand-offs. Alternating rounds of

* A -- bare Dramatiq's default middleware;
* B -- ``setup_broker()`` on a RedisBroker, a closed breaker on the actor, SQLite
       for the history (``--variant import``: every message carries an import id);

print CPU µs a message (``time.thread_time``) and their difference. Because it is one
thread and deterministic, it also runs under callgrind, whose instruction counts do
not depend on what else the machine is doing::

    python benchmarks/hook_cost.py                       # 20,000 messages, 3 rounds
    python benchmarks/hook_cost.py --drop ErrorHandling  # B without one middleware
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/hook_cost.py --only B --messages 3000

(the last twice, with 1,000 and 3,000 messages: the difference of the two totals over
2,000 is the instructions a message). Redis is a private ``redis-server`` it starts
on a free port; ``BENCH_REDIS_URL`` names another (flushed!).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from scratch import redis_server

from dramatiq_shared import configure_logging, get_stack, setup_broker

#: Messages run before measuring: the breaker's view learns the breaker meanwhile.
WARM_UP = 200


def build(
    full: bool, variant: str, messages: int, *, redis_url: str, database: str, drop: list[str]
) -> tuple[RedisBroker, dramatiq.Actor[..., Any], list[dramatiq.Message[Any]]]:
    redis.Redis.from_url(redis_url).flushdb()
    broker = RedisBroker(url=redis_url)
    options: dict[str, Any] = {}
    if full:
        setup_broker(
            broker,
            database=database,
            redis_url=redis_url,
            breakers={"bench": {"failureThreshold": 10**9}},
        )
        broker.middleware[:] = [m for m in broker.middleware if type(m).__name__ not in drop]
        options = {"breaker": "bench"}

    @dramatiq.actor(broker=broker, actor_name="noop", **options)
    def noop(n: int, import_id: str | None = None) -> None:
        pass

    sent = [
        noop.message(n, import_id=f"imp-{n % 20}" if variant == "import" else None)
        for n in range(messages)
    ]
    return broker, noop, sent


def deliver(broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any], proxy: MessageProxy) -> None:
    """One message through the hooks, as Dramatiq's worker and consumer threads call them."""
    broker.emit_before("process_message", proxy)
    result = actor.fn(*proxy.args, **proxy.kwargs)
    broker.emit_after("process_message", proxy, result=result)
    broker.emit_before("ack", proxy)
    broker.emit_after("ack", proxy)


def run_round(full: bool, variant: str, messages: int, **where: Any) -> float:
    """CPU µs a message of this thread, after the warm-up."""
    broker, actor, sent = build(full, variant, messages + WARM_UP, **where)
    try:
        for message in sent[:WARM_UP]:
            deliver(broker, actor, MessageProxy(message))
        time.sleep(0.3)  # the breaker's view subscribes and learns the breaker
        started = time.thread_time()
        for message in sent[WARM_UP:]:
            deliver(broker, actor, MessageProxy(message))
        return (time.thread_time() - started) / messages * 1e6
    finally:
        if full:
            get_stack(broker).broadcaster.close()
        broker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per round (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A and of B (3)")
    parser.add_argument("--variant", choices=("plain", "import"), default="plain")
    parser.add_argument("--drop", action="append", default=[], help="a middleware B leaves out")
    parser.add_argument("--only", choices=("A", "B"), help="one round of one side, unmeasured")
    args = parser.parse_args(argv)
    configure_logging("WARNING", sink=open(os.devnull, "w"))  # noqa: SIM115 - for the run

    with tempfile.TemporaryDirectory() as folder, redis_server() as redis_url:
        where = {
            "redis_url": redis_url,
            "database": f"sqlite:///{Path(folder) / 'history.db'}",
            "drop": args.drop,
        }
        if args.only:
            run_round(args.only == "B", args.variant, args.messages, **where)
            return 0
        rounds: dict[bool, list[float]] = {False: [], True: []}
        for number in range(args.rounds):
            for full in (False, True):
                rounds[full].append(run_round(full, args.variant, args.messages, **where))
                side = "B suite" if full else "A bare "
                print(f"round {number + 1} {side} {rounds[full][-1]:6.1f} us/msg", flush=True)
    bare, suite = (statistics.median(rounds[side]) for side in (False, True))
    print(
        f"{args.variant}: hooks CPU a message, median: A {bare:.1f} us, B {suite:.1f} us,"
        f" the suite adds {suite - bare:.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
