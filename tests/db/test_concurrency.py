"""Race safety with real processes: 4 processes of 16 threads call the same operations at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import peewee
import pytest

from dramatiq_shared.db import DatabaseOperations, NoteData
from dramatiq_shared.db.models import Ingredient, LinePattern, PatternLine, Segment

from .concurrent_calls import LINES_PER_PATTERN, NAMES, PATTERNS, SEGMENT_LINES

PROCESSES = 4
THREADS = 16
SCRIPT = Path(__file__).with_name("concurrent_calls.py")


def run_everywhere(url: str, mode: str) -> list[Any]:
    """Run ``mode`` in PROCESSES processes of THREADS threads, all starting together."""
    start = time.time() + 2.0  # long enough for every interpreter to be up
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), url, mode, str(seed), str(start), str(THREADS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(PROCESSES)
    ]
    results: list[Any] = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        report = json.loads(out)
        assert report["errors"] == []
        results.extend(report["results"])
    return results


@pytest.fixture
def url(database: peewee.Database, database_url: str) -> str:
    return database_url  # the `database` fixture has created the tables


def test_find_or_create_ingredient_from_64_threads_makes_each_row_once(url: str) -> None:
    results = run_everywhere(url, "ingredients")
    assert len(results) == PROCESSES * THREADS * len(NAMES)
    assert Ingredient.select().count() == len(NAMES)
    new = Counter(name for name, _, _, is_new in results if is_new)
    assert new == Counter(NAMES)  # exactly one caller per name saw is_new=True
    ids = defaultdict(set)
    for name, ingredient_id, stored_name, _ in results:
        ids[name].add(ingredient_id)
        assert stored_name == name
    assert all(len(found) == 1 for found in ids.values())


def test_pattern_counts_equal_distinct_lines_under_64_threads(url: str) -> None:
    results = run_everywhere(url, "patterns")
    assert len(results) == PROCESSES * THREADS * len(PATTERNS) * LINES_PER_PATTERN
    assert LinePattern.select().count() == len(PATTERNS)
    assert all(p.occurrences == LINES_PER_PATTERN for p in LinePattern.select())
    assert PatternLine.select().count() == len(PATTERNS) * LINES_PER_PATTERN
    assert Counter(pattern for pattern, *_, is_new in results if is_new) == Counter(
        range(len(PATTERNS))
    )
    assert max(occurrences for *_, occurrences, _ in results) == LINES_PER_PATTERN


def test_concurrent_replacements_of_one_line_leave_one_whole_list(url: str) -> None:
    ops = DatabaseOperations(url)
    ops.create_or_update_note("n", NoteData())
    ops.create_or_update_parsed_ingredient_lines(
        {
            line_id: {"block_index": 0, "line_index": n, "reference": "r", "note_id": "n"}
            for n, line_id in enumerate(SEGMENT_LINES)
        }
    )
    results = run_everywhere(url, "segments")
    written = {(line_id, writer): count for line_id, writer, count in results}
    for line_id in SEGMENT_LINES:
        stored = list(Segment.select().where(Segment.line == line_id).order_by(Segment.position))
        writers = {s.value for s in stored}
        assert len(writers) == 1, f"{line_id} mixes the segments of {len(writers)} writers"
        (writer,) = writers
        assert [s.position for s in stored] == list(range(written[(line_id, writer)]))
