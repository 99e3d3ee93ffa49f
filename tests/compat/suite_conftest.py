"""Copied beside Dramatiq's tests as ``tests/conftest.py``: their fixtures, with
``setup_broker()`` applied to every broker fixture.

The fixtures are those Dramatiq's suite expects (the sdist ships its test modules
without them), with two changes: each broker gets the suite, as a Dramatiq user
adopting it would (``setup_broker(broker)``) before it boots, and every service is the
run's own (``DRAMATIQ_SHARED_COMPAT_REDIS_PORT``, ``..._MEMCACHED_PORT``), since
these fixtures flush whole servers. RabbitMQ is the machine's, on 127.0.0.1.
A service that cannot be reached fails the test under ``CI=true`` and skips it
elsewhere, as in the rest of this project's tests.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pylibmc
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits import backends as rl_backends
from dramatiq.results import backends as res_backends

from dramatiq_shared import get_stack, setup_broker

from .common import RABBITMQ_CREDENTIALS

logging.basicConfig(
    level=logging.INFO,
    format="[%(asctime)s] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s",
)
logging.getLogger("pika").setLevel(logging.WARNING)
random.seed(1337)

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_PORT = int(os.environ["DRAMATIQ_SHARED_COMPAT_REDIS_PORT"])
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
MEMCACHED = f"127.0.0.1:{os.environ['DRAMATIQ_SHARED_COMPAT_MEMCACHED_PORT']}"


def _unreachable(name: str, error: BaseException) -> None:
    if CI:
        pytest.fail(f"{name} is not reachable: {error}; CI=true, so this fails", pytrace=False)
    pytest.skip(f"{name} is not reachable: {error}")


def _with_suite(
    broker: dramatiq.Broker, folder: Path, redis_url: str | None = None
) -> Iterator[dramatiq.Broker]:
    setup_broker(broker, database=f"sqlite:///{folder / 'suite.db'}", redis_url=redis_url)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    try:
        yield broker
    finally:
        broker.flush_all()
        broker.close()
        get_stack(broker).broadcaster.close()


@pytest.fixture
def stub_broker(tmp_path: Path) -> Iterator[dramatiq.Broker]:
    yield from _with_suite(StubBroker(), tmp_path)


@pytest.fixture
def rabbitmq_broker(tmp_path: Path) -> Iterator[dramatiq.Broker]:
    broker = RabbitmqBroker(host="127.0.0.1", max_priority=10, credentials=RABBITMQ_CREDENTIALS)
    try:
        broker.connection  # noqa: B018 - connecting is the check
    except Exception as error:
        _unreachable("RabbitMQ", error)
    yield from _with_suite(broker, tmp_path)


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[dramatiq.Broker]:
    broker = RedisBroker(url=REDIS_URL)
    try:
        broker.client.flushall()
    except redis.ConnectionError as error:
        _unreachable("Redis", error)
    # The suite's breakers, status streams and heartbeats share the broker's Redis.
    yield from _with_suite(broker, tmp_path, REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushall()


def _running(broker: dramatiq.Broker, **options: Any) -> Iterator[Worker]:
    worker = Worker(broker, worker_threads=32, **options)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def stub_worker(stub_broker: dramatiq.Broker) -> Iterator[Worker]:
    yield from _running(stub_broker, worker_timeout=100)


@pytest.fixture
def rabbitmq_worker(rabbitmq_broker: dramatiq.Broker) -> Iterator[Worker]:
    yield from _running(rabbitmq_broker)


@pytest.fixture
def redis_worker(redis_broker: dramatiq.Broker) -> Iterator[Worker]:
    yield from _running(redis_broker)


@pytest.fixture
def info_logging() -> Iterator[None]:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    yield
    root.setLevel(logging.DEBUG)


@pytest.fixture
def start_cli() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(
        broker_module: str, *, extra_args: list[str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        kwargs.setdefault("bufsize", 0)
        command = [sys.executable, "-m", "dramatiq", broker_module, *(extra_args or [])]
        started.append(subprocess.Popen(command, **kwargs))
        return started[-1]

    yield run
    for process in started:
        process.terminate()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _memcached_flushed(backend: Any) -> Any:
    with backend.pool.reserve() as client:
        try:
            client.get_stats()
            client.flush_all()
        except pylibmc.SomeErrors as error:
            _unreachable("memcached", error)
    return backend


def _redis_flushed(backend: Any) -> Any:
    try:
        backend.client.flushall()
    except redis.ConnectionError as error:
        _unreachable("Redis", error)
    return backend


@pytest.fixture
def memcached_rate_limiter_backend() -> Any:
    return _memcached_flushed(rl_backends.MemcachedBackend(servers=[MEMCACHED], binary=True))


@pytest.fixture
def redis_rate_limiter_backend() -> Any:
    return _redis_flushed(rl_backends.RedisBackend(url=REDIS_URL))


@pytest.fixture
def stub_rate_limiter_backend() -> Any:
    return rl_backends.StubBackend()


@pytest.fixture
def rate_limiter_backends(
    memcached_rate_limiter_backend: Any,
    redis_rate_limiter_backend: Any,
    stub_rate_limiter_backend: Any,
) -> dict[str, Any]:
    return {
        "memcached": memcached_rate_limiter_backend,
        "redis": redis_rate_limiter_backend,
        "stub": stub_rate_limiter_backend,
    }


@pytest.fixture(params=["memcached", "redis", "stub"])
def rate_limiter_backend(request: pytest.FixtureRequest, rate_limiter_backends: Any) -> Any:
    return rate_limiter_backends[request.param]


@pytest.fixture
def memcached_result_backend() -> Any:
    return _memcached_flushed(res_backends.MemcachedBackend(servers=[MEMCACHED], binary=True))


@pytest.fixture
def redis_result_backend() -> Any:
    return _redis_flushed(res_backends.RedisBackend(url=REDIS_URL))


@pytest.fixture
def stub_result_backend() -> Any:
    return res_backends.StubBackend()


@pytest.fixture
def result_backends(
    memcached_result_backend: Any, redis_result_backend: Any, stub_result_backend: Any
) -> dict[str, Any]:
    return {
        "memcached": memcached_result_backend,
        "redis": redis_result_backend,
        "stub": stub_result_backend,
    }


@pytest.fixture(params=["memcached", "redis", "stub"])
def result_backend(request: pytest.FixtureRequest, result_backends: Any) -> Any:
    return result_backends[request.param]
