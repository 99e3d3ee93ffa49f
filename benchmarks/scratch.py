"""What benchmark runs share: a scratch PostgreSQL database next to ``TEST_POSTGRES_URL``,
dropped after, a private Redis server, Redis's own command counter, and where the
shared test data is."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://dramatiq_shared:dramatiq_shared@127.0.0.1:5432/postgres"
)


def shared_data(name: str) -> Path:
    """A file of the team's shared test data: in ``DRAMATIQ_SHARED_TEST_DATA``, else in
    ``../shared/data`` beside the repository, where the tests look too."""
    folder = os.environ.get("DRAMATIQ_SHARED_TEST_DATA")
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    return (Path(folder) if folder else beside) / name


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """Create a database, yield its URL, and drop it (connections and all) afterwards."""
    name = f"dramatiq_shared_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(POSTGRES_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def commands_processed(client: redis.Redis) -> int:
    """Commands Redis has run so far, those run by scripts included."""
    return int(client.info("stats")["total_commands_processed"])


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL of a Redis only this run uses: ``BENCH_REDIS_URL`` when set, else a
    ``redis-server`` started on a free port of 127.0.0.1 and stopped afterwards."""
    if os.environ.get("BENCH_REDIS_URL"):
        yield os.environ["BENCH_REDIS_URL"]
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        server = subprocess.Popen([*command, "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(30)
