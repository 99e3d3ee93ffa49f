"""Fixtures every test module may use: real Redis, real PostgreSQL, SQLite, brokers, workers.

Services are found through ``TEST_REDIS_URL`` and ``TEST_POSTGRES_URL`` (``scripts/test.sh``
sets both and starts the servers). A test that needs a service it cannot reach is skipped
on a developer's machine and fails under ``CI=true``: CI must never pass by skipping.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import dramatiq
import peewee
import psycopg2
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from loguru import logger
from playhouse.pool import PooledDatabase

from dramatiq_shared import DatabaseConfig
from dramatiq_shared.db import create_tables, init_database

from .faults.proxy import Proxy

# The kit this library gives its users (opt-in, as theirs), and pytester to run it as they do.
pytest_plugins = ["pytester"]  # the kit comes by its entry point, as for a user

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://dramatiq_shared:dramatiq_shared@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: The team's shared test data, beside the repository unless DRAMATIQ_SHARED_TEST_DATA
#: names the folder.
DATA_VARIABLE = "DRAMATIQ_SHARED_TEST_DATA"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Markers follow from the fixtures a test uses, so `-m "not postgres"` works without
# anybody remembering to mark tests by hand.
_SERVICE_FIXTURES = {
    "redis": {"redis_client", "redis_broker", "redis_worker", "private_redis", "persistent_redis"},
    "postgres": {"postgres_url", "_postgres_server"},
    "rabbitmq": {"rabbitmq_broker", "rabbitmq_url"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        # Fixtures picked by parameter (request.getfixturevalue) count too.
        callspec = getattr(item, "callspec", None)
        names.update(
            v for v in (callspec.params.values() if callspec else ()) if isinstance(v, str)
        )
        for marker, fixtures in _SERVICE_FIXTURES.items():
            if names & fixtures:
                item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Say outright which services the run exercised, so a green run that quietly
    # skipped Redis or PostgreSQL cannot pass for a full one.
    counts = []
    for marker, name in (("redis", "Redis"), ("postgres", "PostgreSQL"), ("rabbitmq", "RabbitMQ")):
        ran = dict.fromkeys(("passed", "failed", "skipped"), 0)
        for outcome in ran:
            for report in terminalreporter.stats.get(outcome, []):
                if marker in getattr(report, "keywords", {}):
                    ran[outcome] += 1
        counts.append(", ".join(f"{n} {outcome}" for outcome, n in ran.items()) + f" on {name}")
    terminalreporter.write_sep("-", "tests against real services")
    terminalreporter.write_line("; ".join(counts))


def service_missing(name: str, error: BaseException) -> NoReturn:
    """Fail under CI, skip elsewhere: a test that needs ``name`` cannot run."""
    message = f"{name} is not reachable ({type(error).__name__}: {error})"
    if CI:
        pytest.fail(f"{message}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(message)


def assert_one_line(program: str, done: subprocess.CompletedProcess[str], *parts: str) -> None:
    """``program`` exited 2 with one line on stderr, ``PROGRAM: error: ...``, holding every
    one of ``parts``, and nothing else."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"{program}: error: ")
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.endswith("\n")
    for part in parts:
        assert part in done.stderr, done.stderr


def shared_data(name: str) -> Path:
    """The path of a file of the shared test data (``DRAMATIQ_SHARED_TEST_DATA``, else
    ../shared/data); skipped when it is absent, failed under CI."""
    folder = os.environ.get(DATA_VARIABLE)
    path = (Path(folder) if folder else SHARED_DATA) / name
    if not path.exists():
        where = f"{DATA_VARIABLE}={folder}" if folder else f"{SHARED_DATA} (set {DATA_VARIABLE})"
        service_missing(f"shared test data in {where}", FileNotFoundError(str(path)))
    return path


@pytest.fixture
def rabbitmq_url() -> str:
    """RabbitMQ's URL (``TEST_RABBITMQ_URL``), once it answers."""
    import pika  # noqa: PLC0415 - the rabbitmq extra, needed only here

    try:
        pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)).close()
    except Exception as error:
        service_missing(f"RabbitMQ at {RABBITMQ_URL}", error)
    return RABBITMQ_URL


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record logged during the test, as loguru's JSON form gives it."""
    collected: list[dict[str, Any]] = []
    handler = logger.add(
        lambda line: collected.append(json.loads(line)["record"]), serialize=True, level="DEBUG"
    )
    yield collected
    logger.remove(handler)


def environment(**settings: str) -> dict[str, str]:
    """This environment without any server settings, plus ``settings``: for a subprocess."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("REDIS_URL", "DATABASE_URL", "RABBITMQ_URL", "NUTRITION_URL")
        and not name.startswith("DRAMATIQ_SHARED_")
    }
    return {**env, **settings}


# --- Redis -------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test database, flushed before and after each test."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    except redis.RedisError as error:
        service_missing(f"Redis at {redis_url}", error)
    yield client
    client.flushdb()
    client.close()


def redis_commands(client: redis.Redis) -> int:
    """Commands the server has run so far, scripts' own included (the INFO asking is
    counted after it runs)."""
    return int(client.info("stats")["total_commands_processed"])


def wait_until(condition: Callable[[], object], deadline: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``time.monotonic()`` passes ``deadline``.

    Returns:
      Whether it held: the caller asserts, with a message of its own.
    """
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server of a test's own, on 127.0.0.1 and a free port, to stop and start.

    Parameters:
      folder: Its working directory (for an append-only file, say).
      options: More ``redis-server`` options, such as ``"--appendonly", "yes"``.
    """

    def __init__(self, folder: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(folder),
            *options,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def started(self) -> RedisServer:
        """Start it; under any setting, a missing redis-server fails the test."""
        try:
            self.start()
        except FileNotFoundError as error:
            pytest.fail(f"redis-server is not installed: {error}")
        return self


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[redis.Redis, Any, Any]]:
    """A redis-server of the test's own, without persistence, with functions to stop and
    start it."""
    server = RedisServer(tmp_path, "--appendonly", "no").started()
    client = redis.Redis(port=server.port, socket_connect_timeout=0.2, socket_timeout=0.5)
    yield client, server.stop, server.start
    server.stop()


# --- PostgreSQL and SQLite ---------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def _postgres_server() -> Iterator[str]:
    """A database created for this test session and dropped at its end."""
    name = f"dramatiq_shared_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
    except psycopg2.OperationalError as error:
        service_missing(f"PostgreSQL at {POSTGRES_URL}", error)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(POSTGRES_URL, name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_url(_postgres_server: str) -> Iterator[str]:
    """The session's PostgreSQL database, with an empty public schema for each test."""
    yield _postgres_server
    connection = psycopg2.connect(_postgres_server)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    connection.close()


@pytest.fixture
def missing_database_url(_postgres_server: str) -> str:
    """The URL of a database the running PostgreSQL server does not have."""
    return _with_database(_postgres_server, f"dramatiq_shared_missing_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def proxied_postgres(postgres_url: str) -> Iterator[tuple[str, Proxy]]:
    """The URL of the test's PostgreSQL through a proxy the test can cut, and the proxy."""
    parts = urlsplit(postgres_url)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    yield urlunsplit(parts._replace(netloc=netloc)), proxy
    proxy.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite_url", "postgres_url"], ids=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty database, once on SQLite and once on PostgreSQL."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[peewee.Database]:
    """An initialised database with every table, once on SQLite and once on PostgreSQL."""
    db = init_database(DatabaseConfig(url=database_url, connection_limit=16))
    create_tables(db)
    yield db
    if isinstance(db, PooledDatabase):
        db.close_all()
    else:
        db.close()


# --- Brokers and workers (after Dramatiq's own test fixtures) -----------------


_B = TypeVar("_B", bound=dramatiq.Broker)


def _booted(broker: _B) -> Iterator[_B]:
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


def _running(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=8)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    yield from _booted(StubBroker())


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[dramatiq.Worker]:
    yield from _running(stub_broker)


@pytest.fixture
def redis_broker(redis_client: redis.Redis, redis_url: str) -> Iterator[RedisBroker]:
    """A RedisBroker on the flushed test database."""
    yield from _booted(RedisBroker(url=redis_url))


@pytest.fixture
def redis_worker(redis_broker: RedisBroker) -> Iterator[dramatiq.Worker]:
    yield from _running(redis_broker)
