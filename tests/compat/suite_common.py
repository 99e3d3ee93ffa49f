"""Copied beside Dramatiq's tests as ``tests/common.py``: the helpers they import.

The sdist ships Dramatiq's test modules without their ``common.py`` and ``conftest.py``;
these are written after what the modules use of them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from dramatiq import Worker
from dramatiq.threading import is_gevent_active

RABBITMQ_USERNAME = os.getenv("RABBITMQ_USERNAME", "guest")
RABBITMQ_PASSWORD = os.getenv("RABBITMQ_PASSWORD", "guest")
RABBITMQ_CREDENTIALS = pika.credentials.PlainCredentials(RABBITMQ_USERNAME, RABBITMQ_PASSWORD)


@contextmanager
def worker(*args: Any, **kwargs: Any) -> Iterator[Worker]:
    running = Worker(*args, **kwargs)
    try:
        running.start()
        yield running
    finally:
        running.stop()


# Dramatiq skips these on its own CI services; ours runs them.
skip_in_ci = pytest.mark.skipif(
    os.getenv("APPVEYOR") is not None or os.getenv("GITHUB_ACTION") is not None,
    reason="test skipped in CI",
)
skip_on_windows = pytest.mark.skipif(platform.system() == "Windows", reason="not on Windows")
skip_on_pypy = pytest.mark.skipif(
    platform.python_implementation() == "PyPy", reason="Time limits are not supported under PyPy."
)
skip_with_gevent = pytest.mark.skipif(is_gevent_active(), reason="differs under gevent")
skip_without_gevent = pytest.mark.skipif(not is_gevent_active(), reason="needs gevent")


def _rabbitmq_unreachable() -> bool:
    try:
        connection = pika.BlockingConnection(
            pika.ConnectionParameters(host="127.0.0.1", credentials=RABBITMQ_CREDENTIALS)
        )
    except pika.exceptions.AMQPConnectionError:
        return os.environ.get("CI", "").lower() not in {"1", "true", "yes"}  # CI fails, never skips
    connection.close()
    return False


skip_unless_rabbit_mq = pytest.mark.skipif(
    _rabbitmq_unreachable(), reason="RabbitMQ is unreachable"
)
