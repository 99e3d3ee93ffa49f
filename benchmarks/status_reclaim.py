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
       and each persisted batch is settled with one more round trip;
* C -- with ``--group``: a prototype of the alternative, where nothing is copied and
       the history is fed by a consumer group on the all-imports stream instead
       (XREADGROUP, XACK), which would leave XAUTOCLAIM to reclaim what a dead
       consumer held. Measured only: it is not how the library persists.

It prints the median events/s of each, the B/A ratio, and the Redis commands each
event cost (Redis's own counter, which counts the commands scripts run), all
measured in the same run.

    python benchmarks/status_reclaim.py                # 20,000 events, 3 rounds each
    python benchmarks/status_reclaim.py --events 500 --rounds 1
    python benchmarks/status_reclaim.py --group        # C as well

Uses Redis database 14 of ``BENCH_REDIS_URL`` (default redis://127.0.0.1:6379/14),
which it flushes, and a scratch PostgreSQL database it drops afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

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
from dramatiq_shared.status.transport import batch_entry
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


class Grouped:
    """The C side's history: what it is asked to write, it reads from a consumer group.

    Each write takes as many entries from the all-imports stream as it was given
    records (the broadcaster's own, the only ones in the benchmark), writes those, and
    acknowledges them. A prototype: a write that fails is not read again.
    """

    group = "persisters"

    def __init__(self, history: StatusHistory, transport: RedisTransport) -> None:
        self.history = history
        self.client = transport.client
        self.stream = transport.keys.all_status
        self.client.xgroup_create(self.stream, self.group, id="$", mkstream=True)

    def write(self, published: Sequence[tuple[int, int, StatusEvent]], *, batch_size: int) -> None:
        read = cast(
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
            self.client.xreadgroup(self.group, "c1", {self.stream: ">"}, count=len(published)),
        )
        entries = read[0][1] if read else []
        records = []
        for _, fields in entries:
            for _, event_id, event in batch_entry(fields):
                wire = json.loads(event)
                records.append((event_id, wire["timestamp"], StatusEvent.from_wire(wire)))
        self.history.write(records, batch_size=batch_size)
        self.client.xack(self.stream, self.group, *(entry_id for entry_id, _ in entries))


def run_round(
    side: str, events: int, step: int, history: StatusHistory, name: str
) -> tuple[float, float]:
    """Events per second and Redis commands per event of one round of ``side`` (A, B, C)."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    transport = RedisTransport(client)
    kept = side == "B"
    broadcaster = Broadcaster(
        transport if kept else Unkept(transport),
        Grouped(history, transport) if side == "C" else history,  # type: ignore[arg-type]
        StatusConfig(broadcast_interval=0),
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
    if kept and client.zcard(transport.keys.unpersisted):
        raise RuntimeError("persisted batches were left unsettled")
    client.flushdb()
    return events / elapsed, used / events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="per round (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (3)")
    parser.add_argument("--step", type=int, default=10, help="events a step (10)")
    parser.add_argument("--group", action="store_true", help="measure C, a consumer group, too")
    args = parser.parse_args(argv)
    sides = "ABC" if args.group else "AB"

    with scratch_postgres() as url:
        database = init_database(url)
        create_tables(database)
        history = StatusHistory(database)
        for scenario, step in (("one burst", args.events), (f"steps of {args.step}", args.step)):
            results: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
            for number in range(args.rounds):
                for side in sides:
                    name = f"bench-{step}-{number}-{side.lower()}"
                    rate, commands = run_round(side, args.events, step, history, name)
                    results[side].append((rate, commands))
                    label = LABELS[side]
                    print(
                        f"{scenario}, round {number + 1} {label}  {rate:9.0f} events/s"
                        f"  {commands:5.3f} Redis commands/event"
                    )
            report(scenario, results)
        database.close_all()
    return 0


LABELS = {"A": "A unkept", "B": "B kept  ", "C": "C group "}


def report(scenario: str, results: dict[str, list[tuple[float, float]]]) -> None:
    rates = {side: statistics.median(rate for rate, _ in runs) for side, runs in results.items()}
    commands = {side: statistics.median(c for _, c in runs) for side, runs in results.items()}
    print(f"{scenario}: median A (unkept)       {rates['A']:9.0f} events/s")
    print(f"{scenario}: median B (reclaimable)  {rates['B']:9.0f} events/s")
    if "C" in rates:
        print(f"{scenario}: median C (group)        {rates['C']:9.0f} events/s")
        print(f"{scenario}: C/A throughput ratio    {rates['C'] / rates['A']:9.3f}")
    print(f"{scenario}: B/A throughput ratio    {rates['B'] / rates['A']:9.3f}")
    per_side = ", ".join(f"{side} {number:.3f}" for side, number in commands.items())
    print(f"{scenario}: Redis commands/event    {per_side}")


if __name__ == "__main__":
    sys.exit(main())
