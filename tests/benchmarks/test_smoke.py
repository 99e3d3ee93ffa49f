"""Each benchmark runs end to end on a tiny input, so none of them rots. No timing is asserted."""

from __future__ import annotations

import logging
import re
import runpy
import sys
from pathlib import Path

import pytest
import redis
from loguru import logger

from tests.conftest import POSTGRES_URL, shared_data

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_benchmark(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: its siblings import
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:  # a benchmark may configure logging for its run
        logger.remove()
        logger.add(sys.stderr)
        root.handlers[:] = handlers
        root.setLevel(level)
    assert done.value.code == 0


@pytest.fixture
def bench_redis(redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the benchmarks' BENCH_REDIS_URL at the flushed test database."""
    monkeypatch.setenv("BENCH_REDIS_URL", redis_url)


@pytest.fixture
def bench_postgres(_postgres_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the benchmarks' TEST_POSTGRES_URL at the test server (missing: fails under CI)."""
    monkeypatch.setenv("TEST_POSTGRES_URL", POSTGRES_URL)


@pytest.mark.usefixtures("bench_postgres")
def test_db_batch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = shared_data("labelled_lines.jsonl")
    run_benchmark("db_batch.py", "--lines", "40", "--data", str(data), monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    for engine in ("postgres", "sqlite"):
        for way in ("per-row ", "per-row, 1 tx", "batch "):
            assert f"{engine:<10} {way}" in out


def test_breaker_overhead(
    bench_redis: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_benchmark(
        "breaker_overhead.py", "--messages", "200", "--rounds", "1", monkeypatch=monkeypatch
    )
    out = capsys.readouterr().out
    for variant in ("A bare", "B breaker", "C rates"):
        assert re.search(rf"median {variant} +\d+ msg/s \([\d.]+\) +\d+ CPU us/msg", out), out


def test_relay_fanout(
    bench_redis: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_benchmark(
        "relay_fanout.py",
        *("--rates", "300,600", "--imports", "3", "--admins", "1", "--seconds", "1"),
        monkeypatch=monkeypatch,
    )
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split() for line in lines if line.startswith("this ")]
    assert [step[1] for step in steps] == ["300", "600"]
    assert all("all" in step for step in steps)  # every event reached every client
    assert any(line.startswith("this: highest rate with import and admin p99") for line in lines)


@pytest.mark.usefixtures("bench_redis", "bench_postgres")
def test_overhead(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run_benchmark(
        "overhead.py", "--messages", "60", "--rounds", "1", "--by-thread", monkeypatch=monkeypatch
    )
    out = capsys.readouterr().out
    for variant in ("plain", "import", "retry", "cpu", "dead"):
        assert f"{variant:<6} median A" in out
        # Dramatiq's worker threads spend CPU on both sides; only B has the suite's threads.
        assert re.search(rf"^{variant} +WorkerThread +CPU A +\d", out, re.MULTILINE)
    assert re.search(r"^import +status-broadcaster +CPU A +0\.0, B +\d", out, re.MULTILINE)


def test_parser_accuracy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shared_data("labelled_lines.jsonl")
    run_benchmark(
        "parser_accuracy.py", "--limit", "300", "--data", str(data), monkeypatch=monkeypatch
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["dataset", "quantity", "unit", "name", "all", "three"]
    assert "lines/s" in out


@pytest.mark.usefixtures("bench_redis", "bench_postgres")
def test_status_reclaim(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_benchmark("status_reclaim.py", "--events", "60", "--rounds", "1", monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    for scenario in ("one burst", "steps of 10"):
        assert f"{scenario}: B/A throughput ratio" in out
        assert f"{scenario}: Redis commands/event" in out


@pytest.mark.usefixtures("bench_redis")
def test_hook_cost(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run_benchmark(
        "hook_cost.py",
        *("--messages", "300", "--rounds", "1", "--variant", "import"),
        monkeypatch=monkeypatch,
    )
    out = capsys.readouterr().out
    assert "import: hooks CPU a message, median: A " in out
    assert "the suite adds" in out


def test_retry_budget(
    bench_redis: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_benchmark(
        "retry_budget.py",
        *("--messages", "150", "--rate", "100", "--outage", "0.5", "--drain", "1"),
        monkeypatch=monkeypatch,
    )
    out = capsys.readouterr().out
    for label in ("A no budget", "B budget"):
        assert f"{label} " in out
    assert "B/A retries in the outage:" in out
    assert "B retries within the bound:" in out


def test_main_job(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    recipes = shared_data("recipes.jsonl")
    run_benchmark(
        "main_job.py",
        *(str(recipes), "--against", "HEAD", "--limit", "3", "--rounds", "1"),
        monkeypatch=monkeypatch,
    )
    out = capsys.readouterr().out
    assert out.startswith("3 recipes, ")
    assert "this/baseline elapsed: median " in out
