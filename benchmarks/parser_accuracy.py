"""How well the example's ingredient parser reads real lines, and how fast.

Scores :func:`examples.recipe_import.parser.parse_line` on the labelled lines of
../shared/data/labelled_lines.jsonl (36,000 lines from four datasets) with tolerant
matching, as that folder's README asks, since labels are cleaned-up words:

* quantity: the first number of the label ("10 1/2" → 10, "0.25" → 0.25; a mixed
  number "1 1/2" may also mean 1.5) equals the parsed amount, or both are absent;
* unit: the first unit word of the label and the parsed unit are the same unit
  (canonical names: "tbsp" is "tablespoon", "g" is "gram"), or both are absent;
* name: at least half of the label's name words appear in the parsed ingredient
  (lower-cased, plurals folded), or both are empty.

Prints per-field and all-three accuracy, per dataset and overall, and lines/s.

    python benchmarks/parser_accuracy.py              # every line
    python benchmarks/parser_accuracy.py --limit 2000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the examples package, when run as a script

from scratch import shared_data  # noqa: E402

from examples.recipe_import.parser import canonical_unit, parse_line  # noqa: E402

DATA = shared_data("labelled_lines.jsonl")
FIELDS = ("quantity", "unit", "name")


def _numbers(label: str) -> set[float]:
    """The values the label's quantity may mean."""
    tokens = label.replace("-", " ").split()
    values: set[float] = set()
    try:
        if tokens:
            values.add(float(Fraction(tokens[0])))
        if len(tokens) > 1 and "/" in tokens[1]:
            values.add(float(Fraction(tokens[0]) + Fraction(tokens[1])))
    except (ValueError, ZeroDivisionError):
        pass
    return values


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"\w+", text.lower()) if len(w) > 1 or w.isalpha()}


def score(record: dict[str, Any], parsed: Any) -> dict[str, bool]:
    """Which of quantity, unit and name the parse got right, tolerantly."""
    label_quantity = record["quantity"].strip()
    if not label_quantity:
        quantity_ok = parsed.quantity is None
    else:
        quantity_ok = parsed.quantity is not None and any(
            abs(parsed.quantity - v) < 1e-6 for v in _numbers(label_quantity)
        )
    label_units = record["unit"].split()
    if not label_units:
        unit_ok = parsed.unit is None
    else:
        first = (
            " ".join(label_units[:2])
            if canonical_unit(" ".join(label_units[:2]))
            else label_units[0]
        )
        unit_ok = parsed.unit is not None and canonical_unit(first) == parsed.unit
    label_name = _words(record["name"])
    if not label_name:
        name_ok = not parsed.name
    else:
        name_ok = len(label_name & _words(parsed.name)) >= len(label_name) / 2
    return {"quantity": quantity_ok, "unit": unit_ok, "name": name_ok}


def evaluate(records: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], float]:
    """Accuracy per dataset (and "all") and field (and "all three"), and lines a second."""
    hits: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    started = time.perf_counter()
    count = 0
    for record in records:
        result = score(record, parse_line(record["line"]))
        count += 1
        for dataset in (record["dataset"], "all"):
            hits[dataset]["lines"] += 1
            for field in FIELDS:
                hits[dataset][field] += result[field]
            hits[dataset]["all three"] += all(result.values())
    elapsed = time.perf_counter() - started
    accuracy = {
        dataset: {k: v / counts["lines"] for k, v in counts.items() if k != "lines"}
        for dataset, counts in hits.items()
    }
    return accuracy, count / elapsed if elapsed else 0.0


def load(path: Path, limit: int | None) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return records[:limit] if limit else records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="labelled_lines.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N lines")
    args = parser.parse_args(argv)
    accuracy, rate = evaluate(load(args.data, args.limit))
    print(f"{'dataset':<12} {'quantity':>9} {'unit':>9} {'name':>9} {'all three':>10}")
    for dataset in sorted(accuracy, key=lambda d: (d == "all", d)):
        row = accuracy[dataset]
        print(
            f"{dataset:<12} {row['quantity']:>9.1%} {row['unit']:>9.1%} {row['name']:>9.1%}"
            f" {row['all three']:>10.1%}"
        )
    print(f"{rate:,.0f} lines/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
