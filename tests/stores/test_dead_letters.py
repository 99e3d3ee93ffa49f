"""DeadLetterStore on SQLite and PostgreSQL, and the dead-letters command against PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import peewee
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import ConfigError, RetryConfig, ValidationError, close_workers, create_worker
from dramatiq_shared.cli import main
from dramatiq_shared.middleware import ErrorHandling
from dramatiq_shared.stores import AuditLog, DeadLetterStore, bound_model
from dramatiq_shared.stores.dead_letters import DeadLetter, DeadLetterFilter, Replay
from tests.conftest import wait_until
from tests.middleware.conftest import install


def message(number: int = 1, **options: Any) -> dict[str, Any]:
    return dramatiq.Message(
        queue_name="default",
        actor_name="parse_note",
        args=(),
        kwargs={"note_id": f"n-{number}"},
        options={"retries": 3, "error_count": 3, "error_history": [{"attempt": 3}], **options},
        message_id=f"m-{number}",
    ).asdict()


def test_a_message_dead_lettered_twice_has_one_row(database: peewee.Database) -> None:
    store = DeadLetterStore(database)
    store.record(message(), error_type="KeyError", error_message="a", reason="exhausted")
    store.record(message(), error_type="ValueError", error_message="b", reason="not retryable")
    (row,) = store.list()
    assert (row.message_id, row.error_type, row.error_message) == ("m-1", "ValueError", "b")
    assert row.error_history == [{"attempt": 3}]
    assert store.get(row.id) == row


def test_a_record_written_again_or_late_leaves_one_row_and_the_newest_failure(
    database: peewee.Database,
) -> None:
    store = DeadLetterStore(database)
    failed_at = datetime(2024, 5, 1, 12, 0, 0, 250_000)
    later = failed_at + timedelta(seconds=30)

    def record(error_message: str, at: datetime) -> None:
        store.record(
            message(), error_type="KeyError", error_message=error_message, reason="x", failed_at=at
        )

    record("first", failed_at)
    record("first", failed_at)  # a kept record written twice
    (row,) = store.list()
    assert (row.error_message, row.failed_at) == ("first", failed_at)
    record("second", later)  # failed again after a retry
    record("first", failed_at)  # the first failure, kept through an outage, written late
    (row,) = store.list()
    assert (row.error_message, row.failed_at) == ("second", later)


def test_ensure_table_makes_sqlites_and_refuses_a_postgres_without_it(
    sqlite_url: str, postgres_url: str
) -> None:
    store = DeadLetterStore(sqlite_url)
    store.ensure_table()
    store.ensure_table()  # safe again
    assert store.list() == []
    with pytest.raises(ConfigError, match=r"^the dead-letters table ds_dead_letters does not"):
        DeadLetterStore(postgres_url).ensure_table()


def test_retry_enqueues_once_with_a_fresh_attempt_count(
    database: peewee.Database, stub_broker: StubBroker
) -> None:
    store = DeadLetterStore(database)
    store.record(
        message(retry_delay=400, retry_decision={"action": "exhausted"}),
        error_type="KeyError",
        error_message="a",
        reason="exhausted",
    )
    (row,) = store.list()
    stub_broker.declare_queue("default")
    assert store.retry(row.id, stub_broker) is True
    assert store.retry(row.id, stub_broker) is False
    assert stub_broker.queues["default"].qsize() == 1
    again = dramatiq.Message.decode(stub_broker.queues["default"].get())
    assert again.message_id == "m-1"
    assert again.kwargs == {"note_id": "n-1"}
    assert "retries" not in again.options
    assert "retry_decision" not in again.options
    assert again.options["error_history"] == [{"attempt": 3}]  # the story is kept
    assert store.list() == []
    assert [r.id for r in store.list(include_retried=True)] == [row.id]


def test_a_failed_enqueue_leaves_the_dead_letter_unclaimed(database: peewee.Database) -> None:
    class DownBroker(StubBroker):
        def enqueue(self, message: Any, *, delay: Any = None) -> Any:
            raise redis.ConnectionError("down")

    store = DeadLetterStore(database)
    store.record(message(), error_type="E", error_message="", reason="r")
    (row,) = store.list()
    with pytest.raises(redis.ConnectionError):
        store.retry(row.id, DownBroker())
    assert store.get(row.id).retried_at is None


def test_an_undecodable_dead_letter_is_refused_a_retry(
    database: peewee.Database, redis_broker: RedisBroker, redis_client: redis.Redis
) -> None:
    redis_broker.add_middleware(ErrorHandling(database=database))
    redis_broker.declare_queue("default")
    redis_client.hset("dramatiq:default.msgs", "m-garbled", b"\xff\x00{garbage")
    redis_client.rpush("dramatiq:default", "m-garbled")
    store = DeadLetterStore(database)
    worker = create_worker(redis_broker, worker_threads=1)
    try:
        wait_until(store.list, time.monotonic() + 10)
    finally:
        close_workers([worker])
    (row,) = store.list()
    assert row.reason == "its body could not be decoded as a message"
    with pytest.raises(ValidationError, match=f"id: dead letter {row.id} cannot be retried"):
        store.retry(row.id, redis_broker)
    assert store.get(row.id).retried_at is None
    assert redis_client.llen("dramatiq:default") == 0


def test_purge(database: peewee.Database, stub_broker: StubBroker) -> None:
    store = DeadLetterStore(database)
    for n in range(1, 5):
        store.record(message(n), error_type="E", error_message="", reason="r")
    ids = sorted(r.id for r in store.list())
    stub_broker.declare_queue("default")
    store.retry(ids[0], stub_broker)
    assert store.purge(retried=True) == 1
    assert store.purge(ids=[ids[1]]) == 1
    assert store.purge(everything=True) == 2
    assert bound_model(DeadLetter, database).select().count() == 0
    with pytest.raises(ValidationError, match="purge needs ids"):
        store.purge()
    with pytest.raises(ValidationError, match="id: no dead letter 999"):
        store.get(999)


def test_the_dead_letters_command_against_postgres_and_redis(
    postgres_url: str,
    redis_broker: RedisBroker,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["init-db", "--database", postgres_url]) == 0
    install(redis_broker, config=RetryConfig(base_delay=1, max_delay=5), database=postgres_url)
    healed = threading.Event()
    runs: list[str] = []

    @dramatiq.actor(broker=redis_broker, max_attempts=2)
    def import_recipe(url: str) -> None:
        runs.append(url)
        if not healed.is_set():
            raise ConnectionError(f"cannot fetch {url}")

    import_recipe.send("https://example.test/soup")
    worker = dramatiq.Worker(redis_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        redis_broker.join("default", timeout=10_000)
        worker.join()
        assert len(runs) == 2
        capsys.readouterr()

        assert main(["dead-letters", "list", "--database", postgres_url]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert len(listing) == 2
        assert "import_recipe" in listing[1]
        assert "ConnectionError: cannot fetch https://example.test/soup" in listing[1]
        dead_id = listing[1].split()[0]

        assert main(["dead-letters", "show", dead_id, "--database", postgres_url]) == 0
        assert '"error_type": "ConnectionError"' in capsys.readouterr().out

        healed.set()
        retry = ["dead-letters", "retry", dead_id, "--database", postgres_url]
        assert main([*retry, "--redis-url", redis_url]) == 0
        assert main([*retry, "--redis-url", redis_url]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "1 enqueued again with a fresh attempt count",
            "0 enqueued again with a fresh attempt count; 1 already retried, not enqueued again",
        ]
        redis_broker.join("default", timeout=10_000)
        worker.join()
        assert len(runs) == 3  # enqueued once, and it succeeded
    finally:
        worker.stop()

    assert main(["dead-letters", "list", "--database", postgres_url]) == 0
    assert "no dead letters waiting" in capsys.readouterr().out
    assert main(["dead-letters", "purge", "--retried", "--database", postgres_url]) == 0
    assert capsys.readouterr().out == "purged 1 dead letter\n"


def test_the_dead_letters_command_refuses_mistakes_in_one_line(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main(["init-db", "--database", sqlite_url])
    capsys.readouterr()
    monkeypatch.delenv("REDIS_URL", raising=False)
    cases = [
        (["show", "7"], "id: no dead letter 7"),
        (["retry", "7"], "retrying needs the broker: pass --redis-url or set REDIS_URL"),
        (["purge"], "purge what? give ids, --retried, --filter, --older-than or --all"),
        (["retry"], "retry what? give ids or --filter KEY=VALUE (not both)"),
        (
            ["retry", "--filter", "colour=red", "--dry-run"],
            "filter: no key 'colour'; allowed: actor, queue, error_type, import_id, since,"
            " until, text",
        ),
    ]
    for args, expected in cases:
        assert main(["dead-letters", *args, "--database", sqlite_url]) == 2
        assert capsys.readouterr().err == f"dramatiq-shared: error: {expected}\n"


def some_dead_letters(store: DeadLetterStore) -> dict[str, int]:
    """Five dead letters of two actors, two queues, three errors and two imports, failed a
    day apart; their ids by message id."""
    day = datetime(2026, 11, 20, 12, 0)
    cases = [
        ("m-1", "parse_note", "default", "builtins.KeyError", "no title", "imp-1"),
        ("m-2", "parse_note", "default", "builtins.ValueError", "bad amount 2 cups", "imp-1"),
        ("m-3", "parse_note", "slow", "builtins.ValueError", "bad unit", "imp-2"),
        ("m-4", "enrich", "default", "requests.HTTPError", "503 from usda", "imp-2"),
        ("m-5", "enrich", "default", "requests.HTTPError", "timeout from usda", "imp-10"),
    ]
    for n, (message_id, actor, queue, error_type, text, import_id) in enumerate(cases):
        body = dramatiq.Message(
            queue_name=queue,
            actor_name=actor,
            args=(),
            kwargs={"import_id": import_id},
            options={"error_history": [{"attempt": 1, "error_type": error_type}]},
            message_id=message_id,
        ).asdict()
        store.record(
            body,
            error_type=error_type,
            error_message=text,
            reason="exhausted",
            failed_at=day + timedelta(days=n),
        )
    return {row.message_id: row.id for row in store.list()}


def test_dead_letters_are_found_by_each_filter(database: peewee.Database) -> None:
    store = DeadLetterStore(database)
    ids = some_dead_letters(store)

    def found(**given: str) -> list[str]:
        matching = DeadLetterFilter.parse(given)
        by_id = {v: k for k, v in ids.items()}
        rows = store.search(matching)
        assert store.count(matching) == len(rows)
        return sorted(by_id[row.id] for row in rows)

    assert found() == ["m-1", "m-2", "m-3", "m-4", "m-5"]
    assert found(actor="enrich") == ["m-4", "m-5"]
    assert found(queue="slow") == ["m-3"]
    assert found(error_type="ValueError") == ["m-2", "m-3"]
    assert found(error_type="requests.HTTPError") == ["m-4", "m-5"]
    assert found(import_id="imp-1") == ["m-1", "m-2"]  # not imp-10
    assert found(since="2026-11-22T00:00", until="2026-11-24T00:00Z") == ["m-3", "m-4"]
    assert found(text="usda") == ["m-4", "m-5"]
    assert found(text="2 cups") == ["m-2"]
    assert found(actor="parse_note", error_type="ValueError", queue="default") == ["m-2"]
    with pytest.raises(ValidationError, match="since"):
        DeadLetterFilter.parse({"since": "yesterday"})


def test_a_filtered_replay_counts_first_keeps_its_rate_is_audited_and_runs_once(
    database: peewee.Database, stub_broker: StubBroker
) -> None:
    store = DeadLetterStore(database)
    audit = AuditLog(database)
    some_dead_letters(store)
    usda = DeadLetterFilter.parse({"text": "usda"})
    assert store.replay(None, matching=usda, dry_run=True) == Replay(2, 0, dry_run=True)
    assert "enrich" not in stub_broker.queues
    waits: list[float] = []
    done = store.replay(
        stub_broker, matching=usda, rate=4, audit=audit, who="alice", sleep=waits.append
    )
    assert done == Replay(2, 2, dry_run=False)
    assert stub_broker.queues["default"].qsize() == 2
    assert len(waits) == 1
    assert 0.2 < waits[0] <= 0.25  # the second a quarter second after the first
    assert store.replay(stub_broker, matching=usda) == Replay(0, 0, dry_run=False)  # once
    (entry,) = audit.list()
    assert (entry.who, entry.action, entry.target, entry.count) == (
        "alice",
        "dead_letters.retry",
        "text=usda",
        2,
    )
    assert entry.details == {"filter": {"text": "usda"}, "rate": 4}
    with pytest.raises(ValidationError, match="needs a broker"):
        store.replay(None, matching=usda)
    with pytest.raises(ValidationError, match="not both"):
        store.replay(stub_broker, ids=[1], matching=usda)


def test_purge_takes_a_filter_and_an_age(database: peewee.Database) -> None:
    store = DeadLetterStore(database)
    some_dead_letters(store)
    parse_note = DeadLetterFilter.parse({"actor": "parse_note"})
    assert store.purge(matching=parse_note, older_than=timedelta(days=10_000)) == 0
    assert store.purge(matching=parse_note, older_than=timedelta(days=1)) == 3
    assert sorted(row.message_id for row in store.list()) == ["m-4", "m-5"]
    assert store.purge(older_than=timedelta(days=1)) == 2


def test_the_retry_command_takes_filters_a_dry_run_and_a_rate(
    sqlite_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["init-db", "--database", sqlite_url]) == 0
    store = DeadLetterStore(sqlite_url)
    some_dead_letters(store)
    capsys.readouterr()
    command = ["dead-letters", "retry", "--database", sqlite_url, "--filter", "actor=enrich"]
    assert main([*command, "--filter", "import_id=imp-2", "--dry-run"]) == 0
    assert capsys.readouterr().out == "1 dead letter would be retried\n"
    started = time.monotonic()
    assert main([*command, "--rate", "5", "--redis-url", redis_url]) == 0
    took = time.monotonic() - started
    assert capsys.readouterr().out == "2 enqueued again with a fresh attempt count\n"
    assert took >= 0.2  # two at 5 a second
    assert redis_client.llen("dramatiq:default") == 2
    (entry,) = AuditLog(sqlite_url).list()
    assert (entry.action, entry.target, entry.count) == ("dead_letters.retry", "actor=enrich", 2)
    assert entry.who.startswith("cli:")
    purge = ["dead-letters", "purge", "--database", sqlite_url, "--filter", "queue=slow"]
    assert main([*purge, "--older-than", "1d"]) == 0
    assert capsys.readouterr().out == "purged 1 dead letter\n"
