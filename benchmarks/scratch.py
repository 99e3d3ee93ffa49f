"""What benchmark runs share: a scratch PostgreSQL database next to ``TEST_POSTGRES_URL``,
dropped after, and Redis's own command counter."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://dramatiq_shared:dramatiq_shared@127.0.0.1:5432/postgres"
)


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
