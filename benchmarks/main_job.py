"""The main job on embedded defaults, this tree against an earlier revision, in one run.

Runs ``python -m examples.recipe_import RECIPES --json`` (8 worker threads, a fresh
SQLite file each run) from this checkout and from ``git archive REV`` of it, in
alternating rounds (baseline, this, baseline, this ...), and prints per version the
medians of the job's own elapsed time and lines/s, the CPU time of the job's process
(getrusage of the child: user + sys, every thread) and its wall time, then this/baseline
ratios, pair by pair, with their median. The recipes, the lines and the outcome must be
the same on both sides, or the benchmark says so and exits 1.

    python benchmarks/main_job.py --against db8cff8            # the 1,110 shared recipes
    python benchmarks/main_job.py --against HEAD~3 --limit 200 --rounds 5

RECIPES defaults to ``recipes.jsonl`` of the shared test data (``../shared/data``, or
where ``DRAMATIQ_SHARED_TEST_DATA`` points).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from scratch import shared_data

ROOT = Path(__file__).resolve().parents[1]


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` of this repository, unpacked into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    archive_path = into / "tree.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def run_job(tree: Path, recipes: Path, limit: int | None, scratch: Path) -> dict[str, Any]:
    """One run of the job from ``tree``: its JSON summary, with its CPU and wall time."""
    database = scratch / "job.db"
    for leftover in scratch.glob("job.db*"):
        leftover.unlink()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "PYTHONPATH": str(tree)}
    for name in ("REDIS_URL", "RABBITMQ_URL", "NUTRITION_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "examples.recipe_import", str(recipes), "--json"]
    if limit is not None:
        command += ["--limit", str(limit)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the job from {tree} exited {done.returncode}: {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    summary["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary["wall"] = wall
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="?", type=Path, default=shared_data("recipes.jsonl"))
    parser.add_argument("--against", required=True, metavar="REV", help="the baseline revision")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each version (3)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N recipes")
    args = parser.parse_args()
    if not args.recipes.is_file():
        parser.error(f"no recipes at {args.recipes}; give RECIPES or DRAMATIQ_SHARED_TEST_DATA")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory(prefix="main-job-") as folder:
        scratch = Path(folder)
        trees = {"baseline": export(args.against, scratch), "this": ROOT}
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_job(tree, args.recipes, args.limit, scratch))
    return report(runs, args)


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> int:
    same = {"recipes", "lines", "outcome", "ingredients"}
    first = {key: runs["baseline"][0][key] for key in same}
    if any({key: run[key] for key in same} != first for side in runs.values() for run in side):
        print("the versions did not import the same: " + json.dumps(first), file=sys.stderr)
        return 1
    lines = sum(first["lines"].values())
    print(
        f"{first['recipes']} recipes, {lines} lines, {first['ingredients']} ingredients,"
        f" {first['outcome']}; baseline {args.against}, {args.rounds} rounds, load average"
        f" {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"{'version':<10} {'elapsed s':>10} {'lines/s':>9} {'CPU s':>8} {'wall s':>8}")
    for name, side in runs.items():
        print(
            f"{name:<10} {median(side, 'elapsed'):>10.1f} {median(side, 'lines_per_second'):>9.0f}"
            f" {median(side, 'cpu'):>8.1f} {median(side, 'wall'):>8.1f}"
        )
    for key in ("elapsed", "cpu", "wall"):
        ratios = [a[key] / b[key] for a, b in zip(runs["this"], runs["baseline"], strict=True)]
        print(
            f"this/baseline {key}: median {statistics.median(ratios):.3f}"
            f" ({', '.join(f'{r:.3f}' for r in ratios)})"
        )
    return 0


def median(side: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in side)


if __name__ == "__main__":
    sys.exit(main())
