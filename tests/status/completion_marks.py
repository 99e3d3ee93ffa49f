"""One process of the completion test: ``python completion_marks.py REDIS_URL PROCESS START``.

Marks every item of import "imp-done" whose number is PROCESS modulo 4, plus 10% of
the other processes' items (a redelivery), from 4 threads, all processes starting at
wall-clock time START. Publishes through a RedisTransport without coalescing.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time

import redis

from dramatiq_shared import Broadcaster, CompletionTracker, RedisTransport, StatusConfig

ITEMS = 1_000
PROCESSES = 4


def main(url: str, process: str, start: str) -> None:
    client = redis.Redis.from_url(url)
    broadcaster = Broadcaster(RedisTransport(client), config=StatusConfig(broadcast_interval=0))
    tracker = CompletionTracker(broadcaster, redis_client=client)
    number = int(process)
    rng = random.Random(number)
    mine = [n for n in range(ITEMS) if n % PROCESSES == number]
    again = rng.sample([n for n in range(ITEMS) if n % PROCESSES != number], ITEMS // 10)
    work = mine + again
    rng.shuffle(work)
    finished = []
    time.sleep(max(0.0, float(start) - time.time()))

    def mark(items: list[int]) -> None:
        for item in items:
            progress = tracker.mark_done("imp-done", f"item-{item}", ok=item % 100 != 7)
            if progress.finished:
                finished.append(item)

    threads = [threading.Thread(target=mark, args=(work[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    broadcaster.close()
    json.dump({"finished": finished}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
