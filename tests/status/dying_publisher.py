"""A publisher that dies before persisting: ``python dying_publisher.py REDIS_URL DB_URL N``.

Streams N events of import "imp-dead" through Redis for a history it would persist a
minute later, prints "streamed" once Redis has them all, and waits to be SIGKILLed.
"""

from __future__ import annotations

import sys
import time

import redis

from dramatiq_shared import (
    Broadcaster,
    NoteStatus,
    RedisTransport,
    StatusConfig,
    StatusEvent,
    init_database,
)
from dramatiq_shared.stores import StatusHistory


def main(redis_url: str, database_url: str, count: str) -> None:
    transport = RedisTransport(redis.Redis.from_url(redis_url))
    history = StatusHistory(init_database(database_url))
    broadcaster = Broadcaster(
        transport, history, StatusConfig(broadcast_interval=60_000, batch_size=10_000)
    )
    for n in range(int(count)):  # a note each: nothing is coalesced, all go out at once
        broadcaster.publish(
            StatusEvent("imp-dead", NoteStatus.PROCESSING, note_id=f"note-{n}", metadata={"n": n})
        )
    while len(transport.read("imp-dead", limit=100_000)) < int(count):
        time.sleep(0.01)
    print("streamed", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(*sys.argv[1:])
