"""One process of the concurrency tests: many threads calling one operation at once.

Run by test_concurrency.py as ``python concurrent_calls.py URL MODE SEED START THREADS``;
it waits until the wall-clock time START so that all processes begin together, and
prints what every call returned as one JSON list.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dramatiq_shared import DatabaseConfig
from dramatiq_shared.db import DatabaseOperations, ParsedSegment, PatternTracker, init_database

NAMES = [f"ingredient {n}" for n in range(50)]
PATTERNS = [[f"rule-{p}-{r}" for r in range(p + 1)] for p in range(5)]
LINES_PER_PATTERN = 8
SEGMENT_LINES = [f"seg-line-{n}" for n in range(5)]


def spelled(name: str, rng: random.Random) -> str:
    """The same ingredient as a careless writer spells it; normalises back to ``name``."""
    cased = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
    gap = rng.choice([" ", "  ", "\u00a0"])
    return " " * rng.randint(0, 2) + cased.replace(" ", gap) + "\t"


def calls(mode: str, url: str, threads: int) -> tuple[list[Any], Callable[[Any], Any]]:
    database = init_database(DatabaseConfig(url=url, connection_limit=threads))
    if mode == "ingredients":
        ops = DatabaseOperations(database)
        return NAMES, lambda name: _ingredient(ops, name)
    if mode == "patterns":
        tracker = PatternTracker(database)
        work = [
            (p, f"line-{p}-{n}") for p in range(len(PATTERNS)) for n in range(LINES_PER_PATTERN)
        ]
        return work, lambda item: _pattern(tracker, *item)
    if mode == "segments":
        ops = DatabaseOperations(database)
        return SEGMENT_LINES * 4, lambda line_id: _segments(ops, line_id)
    raise SystemExit(f"unknown mode {mode!r}")


def _ingredient(ops: DatabaseOperations, name: str) -> list[Any]:
    ref = ops.find_or_create_ingredient(spelled(name, random.Random()), "reference")
    return [name, ref.id, ref.name, ref.is_new]


def _pattern(tracker: PatternTracker, pattern: int, line_id: str) -> list[Any]:
    ref = tracker.track(PATTERNS[pattern], line_id)
    return [pattern, line_id, ref.id, ref.occurrences, ref.is_new]


def _segments(ops: DatabaseOperations, line_id: str) -> list[Any]:
    # Each writer writes a list of its own length, every value naming the writer.
    writer = f"{threading.get_ident()}-{random.random()}"
    count = random.randint(1, 6)
    ops.replace_parsed_segments(line_id, [ParsedSegment(n, "r", "t", writer) for n in range(count)])
    return [line_id, writer, count]


def main(url: str, mode: str, seed: str, start: str, threads: str) -> None:
    work, call = calls(mode, url, int(threads))
    results: list[Any] = []
    errors: list[str] = []
    ready = threading.Barrier(int(threads))

    def run(number: int) -> None:
        mine = list(work)
        random.Random(f"{seed}-{number}").shuffle(mine)
        ready.wait()
        for item in mine:
            try:
                results.append(call(item))
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")

    time.sleep(max(0.0, float(start) - time.time()))
    pool = [threading.Thread(target=run, args=(n,)) for n in range(int(threads))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    json.dump({"results": results, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
