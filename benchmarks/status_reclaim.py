"""What keeping status events reclaimable costs the broadcaster.

N status events (a note each, so none is coalesced) go through a Broadcaster into
Redis streams and a PostgreSQL history, timed from the first ``publish()`` until
``flush()`` returns with everything streamed and persisted. Twice: in one burst (the
broadcaster batches as it likes: big batches) and in steps of ``--step`` events, each
flushed before the next (small batches: each pays its round trips). In alternating
rounds:

* A -- the events are streamed and persisted, and Redis keeps nothing for a reclaim
       (what the broadcaster did before: a process killed between streaming and
       persisting left a gap in the history);
* B -- the events also stay in Redis until persisted (``RedisTransport`` as it is),
       and each persisted batch is settled with one more round trip.

It prints the median events/s of each, the B/A ratio, and the Redis commands each
event cost (Redis's own counter, which counts the commands scripts run), all
measured in the same run.

    python benchmarks/status_reclaim.py                # 20,000 events, 3 rounds each
    python benchmarks/status_reclaim.py --events 500 --rounds 1

Uses Redis database 14 of ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/14),
which it flushes, and a scratch PostgreSQL database it drops afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import redis
from scratch import commands_processed, scratch_postgres

from dramatiq_shared import (
    Broadcaster,
    NoteStatus,
    RedisTransport,
    StatusConfig,
    StatusEvent,
    create_tables,
    init_database,
)
from dramatiq_shared.stores import StatusHistory

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


class Unkept:
    """A RedisTransport that keeps nothing for a reclaim: the A side."""

    def __init__(self, transport: RedisTransport) -> None:
        self.transport = transport

    def append(
        self,
        events: Sequence[StatusEvent],
        timestamp: int,
        *,
        batch: str | None = None,
        persist: bool = False,
    ) -> list[int]:
        return self.transport.append(events, timestamp, batch=batch)

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        return self.transport.read(import_id, after, limit)


def run_round(
    kept: bool, events: int, step: int, history: StatusHistory, name: str
) -> tuple[float, float]:
    """Events per second and Redis commands per event of one round."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    transport = RedisTransport(client)
    broadcaster = Broadcaster(
        transport if kept else Unkept(transport), history, StatusConfig(broadcast_interval=0)
    )
    before = commands_processed(client)
    started = time.perf_counter()
    for first in range(0, events, step):
        for n in range(first, min(first + step, events)):
            broadcaster.publish(StatusEvent(name, NoteStatus.PROCESSING, note_id=f"note-{n}"))
        if not broadcaster.flush(timeout=600):
            raise RuntimeError("the broadcaster did not finish in 600 s")
    elapsed = time.perf_counter() - started
    used = commands_processed(client) - before
    broadcaster.close()
    stored = history.read(name, after=events - 1)
    if [e["id"] for e in stored] != [events]:
        raise RuntimeError(f"the history of {name} is incomplete")
    if kept and client.zcard(transport.unpersisted_key):
        raise RuntimeError("persisted batches were left unsettled")
    client.flushdb()
    return events / elapsed, used / events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="per round (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (3)")
    parser.add_argument("--step", type=int, default=10, help="events a step (10)")
    args = parser.parse_args(argv)

    with scratch_postgres() as url:
        database = init_database(url)
        create_tables(database)
        history = StatusHistory(database)
        for scenario, step in (("one burst", args.events), (f"steps of {args.step}", args.step)):
            results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for number in range(args.rounds):
                for kept in (False, True):
                    name = f"bench-{step}-{number}-{'b' if kept else 'a'}"
                    rate, commands = run_round(kept, args.events, step, history, name)
                    results[kept].append((rate, commands))
                    label = "B kept  " if kept else "A unkept"
                    print(
                        f"{scenario}, round {number + 1} {label}  {rate:9.0f} events/s"
                        f"  {commands:5.3f} Redis commands/event"
                    )
            report(scenario, results)
        database.close_all()
    return 0


def report(scenario: str, results: dict[bool, list[tuple[float, float]]]) -> None:
    unkept = statistics.median(rate for rate, _ in results[False])
    kept = statistics.median(rate for rate, _ in results[True])
    commands = [statistics.median(c for _, c in results[side]) for side in (False, True)]
    print(f"{scenario}: median A (unkept)       {unkept:9.0f} events/s")
    print(f"{scenario}: median B (reclaimable)  {kept:9.0f} events/s")
    print(f"{scenario}: B/A throughput ratio    {kept / unkept:9.3f}")
    print(f"{scenario}: Redis commands/event    A {commands[0]:.3f}, B {commands[1]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
