"""Running the example's main job, and its nutrition service, for the tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.recipe_import.nutrition import NutritionServer

from ..conftest import environment

__all__ = ["ROOT", "environment", "nutrition", "run_job"]

ROOT = Path(__file__).resolve().parents[2]


def run_job(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m examples.recipe_import ARGS`` from the repository's root, output kept."""
    return subprocess.run(
        [sys.executable, "-m", "examples.recipe_import", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def nutrition() -> Iterator[NutritionServer]:
    """The example's nutrition service on a free port, stopped after the test."""
    server = NutritionServer().start()
    yield server
    server.stop()
