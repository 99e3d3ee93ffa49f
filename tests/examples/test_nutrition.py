"""The example's nutrition service: stable figures, told to fail or be slow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from examples.recipe_import.nutrition import NutritionServer, figures

from ..conftest import free_port
from .conftest import ROOT, environment


def call(url: str, body: Any = None) -> tuple[int, Any]:
    """GET ``url``, or POST ``body`` as JSON to it: the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_figures_are_stable_per_name(nutrition: NutritionServer) -> None:
    assert call(f"{nutrition.url}/nutrition?name=salt") == (200, figures("salt"))
    assert figures("salt") == figures("salt") != figures("sugar")
    assert call(f"{nutrition.url}/nutrition?name=%20")[0] == 400


def test_it_fails_and_slows_down_when_told(nutrition: NutritionServer) -> None:
    assert call(f"{nutrition.url}/control", {"fail": True})[0] == 200
    assert call(f"{nutrition.url}/nutrition?name=salt")[0] == 503
    assert call(f"{nutrition.url}/control", {"fail": False, "delay": 200})[0] == 200
    started = time.monotonic()
    assert call(f"{nutrition.url}/nutrition?name=salt")[0] == 200
    assert time.monotonic() - started >= 0.2
    assert call(f"{nutrition.url}/stats")[1] == {
        "requests": 2,
        "failed": 1,
        "fail": False,
        "delay": 200,
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"fail": "yes"}, "fail must be true or false, got 'yes'"),
        ({"delay": -1}, "delay must be an int from 0 to 60000 (ms), got -1"),
        ({"slow": True}, "the body must be an object with the keys fail and delay"),
    ],
)
def test_a_bad_control_request_is_refused(
    nutrition: NutritionServer, body: dict[str, Any], reason: str
) -> None:
    assert call(f"{nutrition.url}/control", body) == (400, {"error": reason})
    assert call(f"{nutrition.url}/stats")[1]["fail"] is False


# Run in a process of its own: importing the actors sets up a broker, as an app would.
_KEPT_CONNECTION = """
import os, sys
from examples.recipe_import import actors
from examples.recipe_import.nutrition import NutritionServer, figures

port = int(sys.argv[1])
first = NutritionServer(port=port).start()
os.environ["NUTRITION_URL"] = first.url
assert actors.fetch_nutrition("salt") == figures("salt")
kept = actors._KEPT.by_base[first.url]
assert actors.fetch_nutrition("sugar") == figures("sugar")
assert actors._KEPT.by_base[first.url] is kept, "a second call opened a new connection"
first.stop()  # closes the kept connection from the server's side
second = NutritionServer(port=port).start()
assert actors.fetch_nutrition("salt") == figures("salt")
print(first.state.requests, second.state.requests)
"""


def test_the_client_keeps_its_connection_and_reconnects_once_it_was_closed(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KEPT_CONNECTION, str(free_port())],
        cwd=ROOT,
        env=environment(DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1"]
