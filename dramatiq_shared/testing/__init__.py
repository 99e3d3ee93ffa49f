"""A testing kit for code built on the suite, and the pytest plugin that serves it.

Registered through pytest's ``pytest11`` entry point, so installing the library is
enough: pytest loads it into every run, which imports the library (about 0.3 s, and
nothing else: no broker is set, no log handler added). Its fixtures do nothing until a
test asks for them. ``-p no:dramatiq_shared.testing`` leaves it out of a run.

Fixtures:

* ``dramatiq_suite`` — a :class:`Suite`: the whole suite on a StubBroker with SQLite in
  ``tmp_path`` and status events in memory, a worker, and the recorders; on a
  RedisBroker when ``--dramatiq-shared-redis URL`` or ``REDIS_URL`` is set. Closed after
  the test.
* ``dramatiq_suite_options`` — more :func:`~dramatiq_shared.setup_broker` arguments for
  it; override it in a ``conftest.py``. Default none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .recorders import ErrorRecord, Event, Failure, RecordedDecision, Transition
from .suite import Fault, Suite

__all__ = ["ErrorRecord", "Event", "Failure", "Fault", "RecordedDecision", "Suite", "Transition"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("dramatiq_shared").addoption(
        "--dramatiq-shared-redis",
        metavar="URL",
        default=None,
        help="run the dramatiq_suite fixture on a RedisBroker at URL (default: REDIS_URL;"
        " neither set: a StubBroker). Its keys go under prefixes of each test's own.",
    )


@pytest.fixture
def dramatiq_suite_options() -> dict[str, Any]:
    """More ``setup_broker()`` arguments for ``dramatiq_suite``, over those the actors'
    module gave its own call; override this fixture to set them."""
    return {}


@pytest.fixture
def dramatiq_suite(
    request: pytest.FixtureRequest, tmp_path: Path, dramatiq_suite_options: dict[str, Any]
) -> Iterator[Suite]:
    """The whole suite on a broker of this test's own, with a worker (see :class:`Suite`)."""
    redis_url = request.config.getoption("dramatiq_shared_redis") or os.environ.get("REDIS_URL")
    with Suite(
        database=f"sqlite:///{tmp_path / 'dramatiq_suite.db'}",
        redis_url=redis_url,
        options=dramatiq_suite_options,
    ) as suite:
        yield suite
