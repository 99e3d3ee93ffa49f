"""The main job refuses bad input and settings before it writes or sends anything."""

from __future__ import annotations

from pathlib import Path

import pytest

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
