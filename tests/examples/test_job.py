"""The main job refuses bad input and settings before it writes or sends anything."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from examples.recipe_import.job import Progress

from .conftest import environment, run_job


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
