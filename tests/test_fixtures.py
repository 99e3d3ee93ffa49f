"""The shared fixtures keep the promises later tests rely on: real services, clean state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from playhouse.db_url import connect

from .conftest import DATA_VARIABLE, shared_data


@pytest.mark.parametrize("run", [1, 2])
def test_redis_is_empty_at_the_start_of_every_test(redis_client: redis.Redis, run: int) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", run)


@pytest.mark.parametrize("run", [1, 2])
def test_every_database_starts_empty(database_url: str, run: int) -> None:
    database = connect(database_url)
    try:
        assert database.get_tables() == []
        database.execute_sql("CREATE TABLE left_behind (n INTEGER)")
        database.execute_sql(f"INSERT INTO left_behind VALUES ({run})")
        assert database.execute_sql("SELECT n FROM left_behind").fetchall() == [(run,)]
    finally:
        database.close()


def test_postgres_runs_in_a_database_of_the_test_session(postgres_url: str) -> None:
    database = connect(postgres_url)
    try:
        (name,) = database.execute_sql("SELECT current_database()").fetchone()
        assert name.startswith("dramatiq_shared_test_")
    finally:
        database.close()


@pytest.mark.parametrize(
    ("broker_fixture", "worker_fixture"),
    [
        ("stub_broker", "stub_worker"),
        ("redis_broker", "redis_worker"),
    ],
)
def test_workers_process_messages_on_their_broker(
    request: pytest.FixtureRequest, broker_fixture: str, worker_fixture: str
) -> None:
    broker: dramatiq.Broker = request.getfixturevalue(broker_fixture)
    seen: list[Any] = []

    @dramatiq.actor(broker=broker)
    def remember(value: int) -> None:
        seen.append(value)

    worker: dramatiq.Worker = request.getfixturevalue(worker_fixture)
    for value in range(20):
        remember.send(value)
    broker.join(remember.queue_name)
    worker.join()
    assert sorted(seen) == list(range(20))


def test_the_shared_data_folder_is_the_variables_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "recipes.jsonl").write_text('{"title": "A"}\n')
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path))
    assert shared_data("recipes.jsonl") == tmp_path / "recipes.jsonl"
    absent = (pytest.skip.Exception, pytest.fail.Exception)  # skipped, or failed under CI
    with pytest.raises(absent, match=f"{DATA_VARIABLE}={tmp_path}"):
        shared_data("labelled_lines.jsonl")  # it says where it looked
