"""The example's nutrition service: stable figures, told to fail or be slow."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from examples.recipe_import.nutrition import NutritionServer, figures


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
