"""The recipe-import main job end to end, as README.rst runs it: embedded, and on
Redis + PostgreSQL with two ``dramatiq`` worker processes; a poisoned recipe; the
nutrition service failing mid-run; the dashboard."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from dramatiq_shared.keys import Keys
from examples.recipe_import.job import DEFAULT_RECIPES
from examples.recipe_import.nutrition import NutritionServer

from ..conftest import free_port, shared_data
from .conftest import ROOT, environment, run_job

# What the summaries of two runs of one input must agree on, wherever they ran.
SAME = ("outcome", "recipes", "notes", "lines", "ingredients", "enriched", "top_patterns")


def import_job(*args: str, env: dict[str, str], timeout: float = 300) -> tuple[int, dict[str, Any]]:
    """Run ``python -m examples.recipe_import ... --json``: its exit status and summary."""
    done = run_job(*args, "--json", env=env, timeout=timeout)
    assert done.stdout.strip(), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def row_counts(path: Path) -> dict[str, int]:
    """Rows per table of a SQLite database, the status event log left out."""
    with sqlite3.connect(path) as connection:
        tables = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if name != "ds_status_events"
        ]
        return {t: connection.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


def first_recipes(path: Path, count: int, into: Path) -> Path:
    with path.open(encoding="utf-8") as lines:
        into.write_text("".join(line for _, line in zip(range(count), lines, strict=False)))
    return into


def test_every_shared_recipe_imports_embedded_and_a_rerun_adds_no_rows(tmp_path: Path) -> None:
    recipes = shared_data("recipes.jsonl")
    database = tmp_path / "import.db"
    env = environment(DATABASE_URL=f"sqlite:///{database}")

    status, summary = import_job(str(recipes), env=env)
    assert status == 0, summary
    assert summary["outcome"] == "COMPLETED"
    assert summary["notes"] == {"COMPLETED": 1110}  # every recipe imported
    assert summary["endings"] == 1  # one COMPLETED/FAILED event for the import
    lines = summary["lines"]
    assert lines["PENDING"] == 0
    assert lines["ERROR"] == 0  # the parser did not crash on any line
    assert lines["CORRECT"] >= 0.95 * sum(lines.values())
    assert summary["enriched"] == summary["ingredients"] > 4_000
    before = row_counts(database)
    assert before["ds_parsed_ingredient_lines"] == sum(lines.values())

    status, again = import_job(str(recipes), env=env)
    assert status == 0
    assert row_counts(database) == before
    assert {k: again[k] for k in SAME} == {k: summary[k] for k in SAME}
    assert again["endings"] == 1  # the import had ended; running it again ends nothing new
    assert again["new_ingredients"] == 0  # this run found every ingredient known
    assert summary["new_ingredients"] == summary["ingredients"]


def test_redis_and_postgres_with_two_worker_processes_count_what_embedded_counts(
    redis_client: redis.Redis,
    redis_url: str,
    postgres_url: str,
    nutrition: NutritionServer,
    tmp_path: Path,
) -> None:
    recipes = first_recipes(shared_data("recipes.jsonl"), 300, tmp_path / "recipes.jsonl")
    settings = {"NUTRITION_URL": nutrition.url}
    env = environment(REDIS_URL=redis_url, DATABASE_URL=postgres_url, **settings)
    # To a file, not a pipe nobody reads until the end: a full pipe would block the
    # workers' logging, and with it the workers.
    log = tmp_path / "workers.log"
    with log.open("w") as output:
        workers = subprocess.Popen(
            [
                *(sys.executable, "-m", "dramatiq", "examples.recipe_import.actors"),
                *("-p", "2", "-t", "4"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=output,
            start_new_session=True,
        )
    try:
        status, distributed = import_job(str(recipes), env=env)
        assert workers.poll() is None, log.read_text()[-3000:]
    finally:
        workers.send_signal(signal.SIGTERM)  # as a process manager stops dramatiq
        try:
            workers.communicate(timeout=60)
        finally:
            if workers.poll() is None:
                os.killpg(workers.pid, signal.SIGKILL)
    assert status == 0, distributed

    embedded_env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'embedded.db'}", **settings)
    status, embedded = import_job(str(recipes), env=embedded_env)
    assert status == 0
    assert {k: distributed[k] for k in SAME} == {k: embedded[k] for k in SAME}
    assert distributed["notes"] == {"COMPLETED": 300}
    assert distributed["endings"] == embedded["endings"] == 1
    # Both worker processes stopped cleanly: their heartbeats went with them.
    assert not list(redis_client.scan_iter(match=Keys().worker_pattern()))


def test_a_poisoned_recipe_fails_its_note_with_a_clear_message_and_no_other(
    tmp_path: Path,
) -> None:
    poisoned = [
        {"title": "Numbered", "ingredients": 42},
        {"title": ["not", "a", "title"], "ingredients": ["1 egg"]},
        "a recipe that is a string",
        {"title": "Odd group", "ingredient_groups": [{"header": "Sauce", "items": ["1 cup", 7]}]},
    ]
    recipes = tmp_path / "recipes.jsonl"
    recipes.write_text(
        DEFAULT_RECIPES.read_text(encoding="utf-8")
        + "".join(json.dumps(recipe) + "\n" for recipe in poisoned)
    )
    env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'import.db'}")
    status, summary = import_job(str(recipes), env=env)
    assert status == 1  # the import FAILED: some of its notes did
    assert summary["outcome"] == "FAILED"
    assert summary["endings"] == 1
    assert summary["notes"] == {"COMPLETED": 20, "FAILED": 4}
    reasons = dict(summary["failures"])
    prefix = summary["import_id"]
    assert reasons == {
        f"{prefix}:20": "ValidationError: ingredients must be a list of strings or one string,"
        " got 42",
        f"{prefix}:21": "ValidationError: title must be a string, got ['not', 'a', 'title']",
        f"{prefix}:22": "ValidationError: recipe must be a JSON object,"
        " got 'a recipe that is a string'",
        f"{prefix}:23": "ValidationError: ingredient_groups[0].items[1] must be a string, got 7",
    }


def test_the_nutrition_service_failing_mid_run_opens_the_breaker_and_loses_nothing(
    nutrition: NutritionServer, tmp_path: Path
) -> None:
    recipes = first_recipes(shared_data("recipes.jsonl"), 150, tmp_path / "recipes.jsonl")
    env = environment(
        DATABASE_URL=f"sqlite:///{tmp_path / 'import.db'}", NUTRITION_URL=nutrition.url
    )
    outage: dict[str, float] = {}

    def break_it_for_a_while() -> None:
        while nutrition.state.requests < 100:
            time.sleep(0.01)
        nutrition.control(fail=True)
        outage["requests"] = nutrition.state.requests
        time.sleep(4)
        nutrition.control(fail=False)
        outage["recovered"] = time.monotonic()

    saboteur = threading.Thread(target=break_it_for_a_while, daemon=True)
    saboteur.start()
    status, summary = import_job(str(recipes), env=env)
    saboteur.join(10)
    assert "recovered" in outage, "the run ended before the outage did"
    assert status == 0, summary
    assert summary["breaker_trips"] >= 1
    assert summary["retries"] >= 1
    assert summary["enriched"] == summary["ingredients"]  # none left unenriched
    assert summary["enrichments_resent"] == 0  # the messages themselves got through
    # While it failed, the breaker kept the calls to a trickle: the threshold, the calls
    # of the 8 worker threads already on their way, and a few half-open trials.
    assert nutrition.state.failed <= 5 + 8 + 6


def test_the_dashboard_serves_the_import_live_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    # Should the job hang at Ctrl-C, SIGABRT makes it print every thread's stack
    # (faulthandler) for the failure.
    env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'import.db'}", PYTHONFAULTHANDLER="1")
    # Ctrl-C as a terminal sends it: a test run that is a shell's background job (as
    # CI's is) ignores SIGINT, and a child inherits an ignored signal, so the job would
    # sleep through it. A handled one is reset to the default when the child starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "examples.recipe_import",
                "--dashboard",
                "--dashboard-port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert job.stderr is not None
        assert job.stdout is not None
        link = next(line for line in job.stderr if line.startswith("dashboard: "))
        # Read the rest of its stderr as it comes: a pipe nobody reads fills up, and the
        # job would block on its next log line instead of ending at Ctrl-C.
        rest: list[str] = []
        drain = threading.Thread(target=lambda: rest.extend(job.stderr or ()), daemon=True)
        drain.start()
        url = link.removeprefix("dashboard: ").strip()
        assert url.startswith(f"http://127.0.0.1:{port}/?import=sample_recipes-")
        summary = [job.stdout.readline() for _ in range(2)]
        assert "COMPLETED" in summary[0]
        with urllib.request.urlopen(url) as page:
            assert b"<html" in page.read().lower()
        query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
        events_url = (
            f"http://127.0.0.1:{port}/imports/{query['import']}/events?token={query['token']}"
        )
        with urllib.request.urlopen(events_url) as answer:
            events = json.load(answer)
        endings = [e for e in events if e["context"] == "import" and e["status"] == "COMPLETED"]
        assert len(endings) == 1
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        with urllib.request.urlopen(events_url.replace("/events?", "/snapshot?")) as answer:
            notes = json.load(answer)["notes"]
        with DEFAULT_RECIPES.open(encoding="utf-8") as lines:
            titles = sorted(json.loads(line)["title"] for line in lines if line.strip())
        # Each note's title came with its PROCESSING event, for the page to list it by.
        assert sorted(note["title"] for note in notes.values()) == titles
        job.send_signal(signal.SIGINT)
        try:
            assert job.wait(30) == 0
        except subprocess.TimeoutExpired:
            job.send_signal(signal.SIGABRT)
            job.wait(10)
            drain.join(5)
            raise AssertionError(
                "the job did not end within 30 s of Ctrl-C; its threads:\n" + "".join(rest)[-8000:]
            ) from None
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
