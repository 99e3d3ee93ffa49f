"""The sample user project (``sample/``: an actor module, its tests, the one-line
conftest.py enabling the kit) passes as a project of its own, on a StubBroker and on a
RedisBroker, in a pytest process of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

SAMPLE = Path(__file__).parent / "sample"


def run_sample(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    for name in ("recipes.py", "test_recipes.py", "conftest.py"):
        shutil.copy(SAMPLE / name, pytester.path / name)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def test_the_sample_project_passes_on_a_stub_broker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = run_sample(pytester)
    result.assert_outcomes(passed=5)
    assert (pytester.path / "dramatiq_suite.db").exists() is False  # each test's in tmp_path


def test_the_sample_project_passes_on_redis_and_leaves_no_key(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    result = run_sample(pytester)
    result.assert_outcomes(passed=5)
    assert redis_client.keys("*") == []


def test_the_plugin_option_names_the_redis_server_too(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    redis_client.set("someone-else:key", "kept")
    result = run_sample(pytester, "--dramatiq-shared-redis", redis_url, "-k", "retried")
    result.assert_outcomes(passed=1, deselected=4)
    assert redis_client.keys("*") == [b"someone-else:key"]  # only the suite's keys went
