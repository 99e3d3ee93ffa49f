"""The sample user project (``sample/``: an actor module and its tests, nothing to
enable the kit, which its entry point loads) passes as a project of its own, on a
StubBroker and on a RedisBroker, in a pytest process of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

SAMPLE = Path(__file__).parent / "sample"


def run_sample(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    for name in ("recipes.py", "test_recipes.py"):
        shutil.copy(SAMPLE / name, pytester.path / name)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def test_the_kit_is_loaded_by_its_entry_point_and_named_pytest_p_finds_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_plugin="""
        def test_loaded(request):
            plugin = request.config.pluginmanager.get_plugin("dramatiq_shared.testing")
            assert plugin is not None and "dramatiq_suite" in dir(plugin)
        """
    )
    # Named again with -p, it is the plugin already loaded, not registered twice (which
    # would fail on its option being added twice).
    pytester.runpytest_subprocess("-p", "dramatiq_shared.testing").assert_outcomes(passed=1)
    left_out = pytester.runpytest_subprocess("-p", "no:dramatiq_shared.testing")
    left_out.assert_outcomes(failed=1)


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
