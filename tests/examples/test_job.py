"""The main job refuses bad input and settings before it writes or sends anything."""

from __future__ import annotations

from pathlib import Path

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
