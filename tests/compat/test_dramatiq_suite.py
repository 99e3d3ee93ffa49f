"""Dramatiq's own test suite, for the installed Dramatiq, with ``setup_broker()`` applied
to its broker fixtures: a Dramatiq user adopting the suite keeps Dramatiq's behaviour.

The sdist's tests are fetched from the package index once and cached in the
environment (``<sys.prefix>/share/dramatiq-shared-compat``). They run in a process of
their own against a redis-server and a memcached this test starts on free ports and
stops: their fixtures flush every database of the servers they use, so nothing of the
run may reach the machine's Redis (``site/sitecustomize.py`` turns even a connection
to the default port towards the private server). The fixtures are ours
(``suite_conftest.py``, ``suite_common.py``), since the sdist ships none.
``exclusions.txt`` lists the tests left out, each with its reason; every other
test must pass.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest

import dramatiq_shared

from ..conftest import RedisServer, free_port, service_missing, wait_until

HERE = Path(__file__).resolve().parent
CACHE = Path(sys.prefix) / "share" / "dramatiq-shared-compat"


#: Skips Dramatiq's own tests make for what a backend cannot do (its memcached rate
#: limiter backend cannot wait on a barrier), not for a missing service.
DRAMATIQS_OWN_SKIPS = ("Waiting is not supported under this backend",)


def exclusions() -> dict[str, str]:
    """Node id -> reason, from ``exclusions.txt`` (``node id  # reason`` a line)."""
    found = {}
    for line in (HERE / "exclusions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            node, _, reason = line.partition("#")
            assert reason.strip(), f"exclusion without a reason: {line!r}"
            found[node.strip()] = reason.strip()
    return found


def dramatiq_tests(version: str) -> Path:
    """The ``tests`` folder of Dramatiq's sdist for ``version``, fetched once."""
    target = CACHE / f"dramatiq-{version}"
    if (target / "tests").is_dir():
        return target / "tests"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-binary", ":all:", "--no-deps", f"dramatiq=={version}", "-d", scratch],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if fetched.returncode != 0:
            service_missing("the package index", RuntimeError(fetched.stderr.strip()[-500:]))
        (archive,) = Path(scratch).glob("dramatiq-*.tar.gz")
        with tarfile.open(archive) as sdist:
            members = [
                m for m in sdist.getmembers() if m.name.startswith(f"dramatiq-{version}/tests/")
            ]
            sdist.extractall(scratch, members=members, filter="data")
        unpacked = Path(scratch) / f"dramatiq-{version}"
        try:
            unpacked.rename(target)  # whole or not at all, should two runs race
        except OSError:
            if not (target / "tests").is_dir():
                raise
    return target / "tests"


@pytest.fixture
def memcached_port(tmp_path: Path) -> Iterator[int]:
    """A memcached of this test's own, on a free port."""
    if shutil.which("memcached") is None:
        service_missing("memcached", FileNotFoundError("memcached is not installed"))
    port = free_port()
    process = subprocess.Popen(
        ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-u", "nobody", "-m", "64"],
    )
    yield port
    process.terminate()
    process.wait(30)


@pytest.mark.timeout(1800)
def test_dramatiqs_own_suite_passes_under_setup_broker(
    tmp_path: Path, memcached_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    version = dramatiq.__version__
    excluded = exclusions()
    source = dramatiq_tests(version)
    for node in excluded:  # a stale exclusion would hide nothing and mean nothing
        module, _, name = node.partition("::")
        assert f"def {name.split('[')[0]}(" in (source.parent / module).read_text(), node

    run = tmp_path / "run"
    shutil.copytree(source, run / "tests")
    (run / "tests" / "__init__.py").touch()
    shutil.copy(HERE / "suite_conftest.py", run / "tests" / "conftest.py")
    shutil.copy(HERE / "suite_common.py", run / "tests" / "common.py")

    redis_server = RedisServer(tmp_path).started()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DRAMATIQ_SHARED_", "PYTEST_"))
        and k not in {"REDIS_URL", "RABBITMQ_URL", "DATABASE_URL"}
    }
    root = Path(dramatiq_shared.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE / "site"), str(root), env.get("PYTHONPATH", "")) if p
    )
    # As in an activated environment: the dramatiq CLI reloads itself as "python".
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["DRAMATIQ_SHARED_COMPAT_REDIS_PORT"] = str(redis_server.port)
    env["DRAMATIQ_SHARED_COMPAT_MEMCACHED_PORT"] = str(memcached_port)
    report = tmp_path / "report.xml"
    command = [
        sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
        "-o", "timeout=120", "-rfEs", "--durations=10", f"--junitxml={report}",
        *(f"--deselect={node}" for node in excluded),
    ]  # fmt: skip
    try:
        assert wait_until(lambda: _listening(memcached_port), time.monotonic() + 10), "memcached"
        finished = subprocess.run(
            command, cwd=run, env=env, capture_output=True, text=True, timeout=1700, check=False
        )
    finally:
        redis_server.stop()

    cases = ET.parse(report).getroot().iter("testcase")
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    unexpected_skips = []
    for case in cases:
        node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        for skipped in case.iter("skipped"):
            if not any(reason in skipped.get("message", "") for reason in DRAMATIQS_OWN_SKIPS):
                unexpected_skips.append(f"{node}: {skipped.get('message')}")
        kind = (
            "failed"
            if kinds & {"failure", "error"}
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
        outcomes[kind].append(node)
    summary = [
        f"Dramatiq {version}'s own suite under setup_broker(): {len(outcomes['passed'])} passed,"
        f" {len(outcomes['failed'])} failed, {len(outcomes['skipped'])} skipped,"
        f" {len(excluded)} excluded:",
        *(f"  excluded {node}: {reason}" for node, reason in excluded.items()),
        *(f"  FAILED {node}" for node in outcomes["failed"]),
    ]
    durations = finished.stdout.partition("slowest 10 durations")[2].partition("\n\n")[0]
    with capsys.disabled():
        print("\n" + "\n".join(summary) + "\n  slowest:" + durations.replace("\n", "\n    "))
    assert outcomes["passed"], finished.stdout[-5_000:] + finished.stderr[-5_000:]
    assert not outcomes["failed"], "\n".join(summary) + "\n" + finished.stdout[-20_000:]
    # A skip for any other reason (a service not reachable) would hide a test that
    # did not run: it fails here, whatever CI says.
    assert not unexpected_skips, "\n".join(unexpected_skips)
    assert finished.returncode == 0, finished.stdout[-5_000:] + finished.stderr[-5_000:]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
