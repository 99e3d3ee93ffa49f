"""The main job refuses bad input and settings before it writes or sends anything."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from examples.recipe_import.job import Progress
from examples.recipe_import.nutrition import NutritionServer

from ..conftest import assert_one_line, free_port
from .conftest import ROOT, environment, run_job


def test_a_file_with_a_line_that_is_not_json_is_refused_whole(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes.jsonl"
    recipes.write_text('{"title": "A", "ingredients": ["1 egg"]}\nnot json\n')
    database = tmp_path / "import.db"
    done = run_job(str(recipes), env=environment(DATABASE_URL=f"sqlite:///{database}"))
    assert done.returncode == 2
    assert "recipes.jsonl, line 2: not JSON" in done.stderr
    assert not database.exists()  # nothing written, nothing sent


def test_redis_without_a_shared_database_is_refused(tmp_path: Path) -> None:
    done = run_job(env=environment(REDIS_URL="redis://127.0.0.1:1/0"))
    assert done.returncode == 2
    assert "set DATABASE_URL too" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_recipe_with_wrong_field_types_is_one_warning_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    recipes = tmp_path / "recipes.jsonl"
    recipes.write_text(
        '{"title": "Eggs", "ingredients": ["2 eggs"]}\n{"title": "Numbered", "ingredients": 42}\n'
    )
    done = run_job(str(recipes), env=environment(DATABASE_URL=f"sqlite:///{tmp_path / 'i.db'}"))
    assert done.returncode == 1  # the import FAILED, as one of its notes did
    assert "Traceback" not in done.stderr
    logged = [line for line in done.stderr.splitlines() if " | " in line]
    assert len(logged) == 1, done.stderr
    assert "WARNING" in logged[0]
    assert "ingredients must be a list of strings or one string, got 42" in logged[0]
    assert "  failures      1 note\n" in done.stdout  # one note, not "1 notes"
    assert "enriched      1 of 1 ingredient\n" in done.stdout


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank-lines"])
def test_a_file_without_recipes_is_refused(tmp_path: Path, content: str) -> None:
    recipes = tmp_path / "recipes.jsonl"
    recipes.write_text(content)
    database = tmp_path / "import.db"
    done = run_job(str(recipes), env=environment(DATABASE_URL=f"sqlite:///{database}"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"recipe_import: error: no recipes in {recipes}"
    assert done.stdout == ""  # no summary of an import that did not happen
    assert not database.exists()


def test_a_rerun_says_so_up_front_and_counts_what_it_did(tmp_path: Path) -> None:
    env = environment(DATABASE_URL=f"sqlite:///{tmp_path / 'import.db'}")
    first = run_job(env=env)
    assert first.returncode == 0, first.stderr
    assert "ran before" not in first.stderr
    assert "  ingredients   80 (80 new with this run, 0 already known)\n" in first.stdout

    again = run_job(env=env)
    assert again.returncode == 0, again.stderr
    said = again.stderr.splitlines()
    assert said[0].startswith("import sample_recipes-")
    assert "ran before (first on " in said[0]
    assert "20 of 20 notes finished, 0 failed): this run parses its 20 recipes again" in said[0]
    # Its progress counts the notes this run finished, from none, not the last run's.
    bars = [line for line in said if line.startswith("notes [")]
    assert bars[0].startswith("notes [..............................] 0/20")
    assert bars[-1].startswith("notes [##############################] 20/20")
    assert "  ingredients   80 (0 new with this run, 80 already known)\n" in again.stdout
    assert re.search(r"  elapsed       [\d.]+ s, [\d,]+ lines/s\n", again.stdout)


def test_progress_off_a_terminal_is_never_silent_for_long() -> None:
    now = [0.0]
    stream = io.StringIO()
    show = Progress(100, stream, quiet=5.0, clock=lambda: now[0])
    for second in range(13):  # nothing finishes for 12 s: work that runs long
        now[0] = float(second)
        show({"PROCESSING": 100}, pending=400 - second)
    now[0] = 13.0
    show({"COMPLETED": 30}, pending=200)  # a quarter passed: said at once
    for second in range(14, 20):
        now[0] = float(second)
        show.finishing(pending=20 - second)
    times = [0, 5, 10, 13, 18]
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(times)
    assert (
        lines[0] == "notes [..............................] 0/100, 0 failed; 400 messages pending"
    )
    assert lines[1].endswith("395 messages pending")
    assert lines[3].startswith("notes [#########.....................] 30/100")
    assert lines[4].endswith("; 2 messages still to do")


def test_redis_that_is_not_there_is_one_line_naming_it(postgres_url: str) -> None:
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    done = run_job(env=environment(REDIS_URL=url, DATABASE_URL=postgres_url))
    assert_one_line(
        "recipe_import",
        done,
        f"REDIS_URL=redis://:***@127.0.0.1:{port}/0: Redis refused or did not answer",
        "(ConnectionError: Error 111 connecting to",
        "Connection refused",
        "start it or correct REDIS_URL",
    )
    assert "s3cret" not in done.stderr


@pytest.mark.parametrize("variable", ["DATABASE_URL", "DRAMATIQ_SHARED_DB_URL"])
def test_a_database_that_does_not_exist_is_one_line_naming_it(
    redis_client: Any, redis_url: str, missing_database_url: str, variable: str
) -> None:
    done = run_job(env=environment(REDIS_URL=redis_url, **{variable: missing_database_url}))
    name = missing_database_url.rsplit("/", 1)[1]
    assert_one_line(
        "recipe_import",
        done,
        f"{variable}=postgresql://dramatiq_shared:***@",
        "the database refused or did not answer (OperationalError: ",
        f'database "{name}" does not exist',
        f"correct {variable}",
    )
    assert redis_client.dbsize() == 0  # nothing was sent


def test_a_malformed_redis_url_is_one_line_naming_it(postgres_url: str) -> None:
    done = run_job(env=environment(REDIS_URL="notaurl", DATABASE_URL=postgres_url))
    assert_one_line(
        "recipe_import",
        done,
        "REDIS_URL must be a redis://, rediss:// or unix:// URL, got 'notaurl'",
    )


def test_rabbitmq_that_is_not_there_is_one_line_naming_it(tmp_path: Path) -> None:
    port = free_port()
    database = tmp_path / "import.db"
    url = f"amqp://guest:s3cret@127.0.0.1:{port}/"
    done = run_job(env=environment(RABBITMQ_URL=url, DATABASE_URL=f"sqlite:///{database}"))
    assert_one_line(
        "recipe_import",
        done,
        f"RABBITMQ_URL=amqp://guest:***@127.0.0.1:{port}/: RabbitMQ refused or did not answer",
        "(ConnectionRefusedError: [Errno 111] Connection refused)",
    )
    assert "s3cret" not in done.stderr
    assert not database.exists()  # nothing written, nothing sent


def test_with_no_worker_it_says_so_and_what_to_run_and_waits_for_one(
    redis_client: Any,
    redis_url: str,
    postgres_url: str,
    nutrition: NutritionServer,
) -> None:
    env = environment(REDIS_URL=redis_url, DATABASE_URL=postgres_url, NUTRITION_URL=nutrition.url)
    job = subprocess.Popen(
        [sys.executable, "-m", "examples.recipe_import", "--no-worker-after", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers = None
    try:
        assert job.stderr is not None
        hints: list[tuple[float, str]] = []
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while len(hints) < 2 and time.monotonic() < deadline:
            line = job.stderr.readline()
            assert line, f"the job ended: {''.join(lines)}"
            lines.append(line)
            if line.startswith("no worker: "):
                hints.append((time.monotonic(), line))
        assert len(hints) == 2, "".join(lines)
        assert hints[0][1] == (
            "no worker: 1 message pending and no worker heartbeat in Redis for 2 s; start"
            " workers with `dramatiq examples.recipe_import.actors -p 2` (still waiting)\n"
        )
        assert "for 4 s;" in hints[1][1]
        assert hints[1][0] - hints[0][0] > 1.5  # said again while still true, not each look
        assert lines[0].startswith("notes [..............................] 0/20")

        workers = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "examples.recipe_import.actors", "-p", "1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
        if workers is not None:
            workers.send_signal(signal.SIGTERM)
            workers.wait(60)
    assert job.returncode == 0, err[-3000:]
    assert ": COMPLETED\n" in out
    said = err.splitlines()
    started = next(n for n, line in enumerate(said) if re.match(r"notes \[#*\.*\] [1-9]", line))
    assert not [line for line in said[started:] if line.startswith("no worker")]
