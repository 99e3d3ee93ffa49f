"""Batch database operations against the per-row ORM loop they replace.

Writes N parsed ingredient lines (real lines from ../shared/data/labelled_lines.jsonl)
with 3 segments each (amount, unit, ingredient), on PostgreSQL and on SQLite, three ways:

* per-row      -- ``Model.save()`` in a loop, as naive code does: one autocommitted
                  statement per row;
* per-row, 1 tx -- the same loop inside one transaction, to show how much of the gap
                  is commits and how much is statements;
* batch        -- ``create_or_update_parsed_ingredient_lines`` and
                  ``replace_parsed_segments_many``: a handful of statements per
                  ``batch_size`` rows, all in one transaction each.

It prints the time of each and the speed-up of batch over per-row, measured in the
same run. PostgreSQL runs in a scratch database created and dropped by the benchmark.

    python benchmarks/db_batch.py                   # 10,000 lines, both engines
    python benchmarks/db_batch.py --lines 500 --engines sqlite
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scratch import scratch_postgres, shared_data

from dramatiq_shared import DatabaseConfig
from dramatiq_shared.db import (
    DatabaseOperations,
    NoteData,
    ParsedIngredientLineData,
    ParsedSegment,
    create_tables,
    init_database,
)
from dramatiq_shared.db.models import MODELS, IngredientLine, Segment
from dramatiq_shared.stores import bound_model

DATA = shared_data("labelled_lines.jsonl")
NOTE = "bench-note"

Line = tuple[str, ParsedIngredientLineData, list[ParsedSegment]]


def load_lines(path: Path, count: int) -> list[Line]:
    """``count`` lines of the labelled set (repeated if it is shorter), with 3 segments each."""
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(row) for row in handle if row.strip()]
    lines: list[Line] = []
    for n in range(count):
        record = records[n % len(records)]
        reference = (record["line"].strip() or "?")[:2000]
        data = ParsedIngredientLineData(n // 100, n % 100, reference, NOTE, "CORRECT")
        segments = [
            ParsedSegment(0, "amount", "quantity", record["quantity"][:1000]),
            ParsedSegment(1, "unit", "unit", record["unit"][:1000]),
            ParsedSegment(2, "ingredient", "name", record["name"][:1000]),
        ]
        lines.append((f"line-{n}", data, segments))
    return lines


def per_row(lines: list[Line]) -> None:
    for line_id, data, segments in lines:
        IngredientLine(
            id=line_id,
            note=data.note_id,
            block_index=data.block_index,
            line_index=data.line_index,
            reference=data.reference,
            parse_status=str(data.parse_status.value),  # type: ignore[union-attr]
        ).save(force_insert=True)
        for segment in segments:
            Segment(
                line=line_id,
                position=segment.index,
                rule=segment.rule,
                type=segment.type,
                value=segment.value,
            ).save(force_insert=True)


def batch(ops: DatabaseOperations, lines: list[Line]) -> None:
    ops.create_or_update_parsed_ingredient_lines((line_id, data) for line_id, data, _ in lines)
    ops.replace_parsed_segments_many({line_id: segments for line_id, _, segments in lines})


@contextmanager
def scratch_sqlite() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.db"


def measure(url: str, lines: list[Line]) -> dict[str, float]:
    """Seconds each way takes on the database at ``url``, on emptied tables each time."""
    database = init_database(DatabaseConfig(url=url))
    create_tables(database)
    ops = DatabaseOperations(database)

    def timed(write: Callable[[], None]) -> float:
        with database.connection_context():
            for model in reversed(MODELS):
                bound_model(model, database).delete().execute()
        ops.create_or_update_note(NOTE, NoteData(title="benchmark"))
        with database.connection_context():
            started = time.perf_counter()
            write()
            elapsed = time.perf_counter() - started
        written = Segment.select().count()
        assert written == 3 * len(lines), f"wrote {written} segments, not {3 * len(lines)}"
        return elapsed

    def in_one_transaction() -> None:
        with database.atomic():
            per_row(lines)

    figures = {
        "per-row": timed(lambda: per_row(lines)),
        "per-row, 1 tx": timed(in_one_transaction),
        "batch": timed(lambda: batch(ops, lines)),
    }
    database.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000, help="lines to write (default 10000)")
    parser.add_argument(
        "--engines", default="postgres,sqlite", help="comma-separated: postgres, sqlite"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="labelled_lines.jsonl to read")
    args = parser.parse_args(argv)

    lines = load_lines(args.data, args.lines)
    scratch: dict[str, Callable[[], Any]] = {"postgres": scratch_postgres, "sqlite": scratch_sqlite}
    print(f"{args.lines} lines x 3 segments = {4 * args.lines} rows per run")
    print(f"{'engine':<10} {'way':<14} {'seconds':>8} {'rows/s':>10} {'batch speed-up':>15}")
    for engine in args.engines.split(","):
        with scratch[engine]() as url:
            figures = measure(url, lines)
        for way, seconds in figures.items():
            ratio = seconds / figures["batch"]
            print(
                f"{engine:<10} {way:<14} {seconds:>8.3f} {4 * args.lines / seconds:>10.0f}"
                f" {ratio:>14.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
