"""ErrorHandling: context-rich failure records, on_error hooks, dead letters."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import peewee
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries
from loguru import logger

from dramatiq_shared import (
    ConfigError,
    Defer,
    MessageTooLargeError,
    RetryConfig,
    configure_logging,
    setup_broker,
)
from dramatiq_shared.middleware import ErrorHandling
from dramatiq_shared.stores import DeadLetterStore

from .conftest import drain, install


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """configure_logging(json=True) into a buffer; the loguru default restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("INFO", json=True, sink=stream)
    yield stream
    logger.remove()
    logger.add(sys.stderr)
    root.handlers[:] = handlers
    root.setLevel(level)


def failures(stream: io.StringIO) -> list[dict[str, Any]]:
    """The failure records, each with the text loguru wrote (the traceback included)."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [
        {**line["record"], "text": line["text"]}
        for line in lines
        if line["record"]["message"] == "Action execution failed"
    ]


def test_every_failed_attempt_is_one_json_record_with_its_context(
    broker: dramatiq.Broker, run_worker: Callable[..., None], json_lines: io.StringIO
) -> None:
    install(broker, config=RetryConfig(base_delay=5, max_delay=20))

    @dramatiq.actor(broker=broker, max_attempts=2, queue_name="imports")
    def parse_note(import_id: str, note_id: str) -> None:
        raise LookupError(f"note {note_id} has no title")

    message = parse_note.send(import_id="imp-1", note_id="n-9")
    run_worker("imports")

    first, second = failures(json_lines)
    for record, attempt, will_retry in ((first, 1, True), (second, 2, False)):
        assert record["level"]["name"] == "ERROR"
        extra = record["extra"]
        assert extra["message_id"] == message.message_id
        assert (extra["actor"], extra["queue"]) == ("parse_note", "imports")
        assert (extra["import_id"], extra["note_id"]) == ("imp-1", "n-9")
        assert (extra["attempt"], extra["max_attempts"], extra["will_retry"]) == (
            attempt,
            2,
            will_retry,
        )
        assert extra["error_type"] == "LookupError"
        assert extra["error_message"] == "note n-9 has no title"
        assert extra["duration_ms"] >= 0
        assert record["exception"]["type"] == "LookupError"
        assert (
            "raise LookupError" in json.loads(json_lines.getvalue().splitlines()[0])["text"]
            or record["exception"]["traceback"]
        )


def test_each_failure_has_its_traceback_logged_once(
    broker: dramatiq.Broker, run_worker: Callable[..., None], json_lines: io.StringIO
) -> None:
    install(broker, config=RetryConfig(base_delay=5, max_delay=20))

    @dramatiq.actor(broker=broker, max_attempts=2)
    def breaks() -> None:
        raise LookupError("gone")

    breaks.send()
    run_worker()

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    with_traceback = [line for line in lines if "Traceback (most recent call last)" in line["text"]]
    assert [line["record"]["message"] for line in with_traceback] == ["Action execution failed"] * 2
    # Dramatiq's own line stays, without a second copy of the traceback.
    dramatiq_lines = [
        line for line in lines if line["record"]["message"].startswith("Failed to process message")
    ]
    assert len(dramatiq_lines) == 2
    assert all(line["record"]["exception"] is None for line in dramatiq_lines)


def test_a_deferral_is_not_logged_as_a_failure(
    stub_broker: StubBroker, json_lines: io.StringIO
) -> None:
    install(stub_broker, max_defers=1)
    runs = []

    @dramatiq.actor(broker=stub_broker)
    def waits() -> None:
        runs.append(1)
        raise Defer(1, reason="busy")

    waits.send()
    drain(stub_broker)
    records = [json.loads(line)["record"] for line in json_lines.getvalue().splitlines()]
    infos = [r for r in records if r["message"].startswith("Action deferred")]
    assert [(r["level"]["name"], r["extra"]["will_retry"]) for r in infos] == [("INFO", True)]
    (failure,) = failures(json_lines)  # the second deferral passed max_defers
    assert failure["extra"]["will_retry"] is False


def test_on_error_runs_after_each_failed_attempt(
    broker: dramatiq.Broker, run_worker: Callable[..., None]
) -> None:
    install(broker)
    cleaned: list[tuple[str, str]] = []

    def clean_up(message: dramatiq.Message[Any], error: BaseException) -> None:
        cleaned.append((message.message_id, str(error)))

    @dramatiq.actor(broker=broker, max_attempts=3, on_error=clean_up)
    def fails() -> None:
        raise RuntimeError("half-done")

    message = fails.send()
    run_worker()
    assert cleaned == [(message.message_id, "half-done")] * 3


def test_an_on_error_hook_that_raises_is_logged_and_changes_nothing(
    broker: dramatiq.Broker, run_worker: Callable[..., None], json_lines: io.StringIO
) -> None:
    install(broker)
    runs = []

    def broken_hook(message: dramatiq.Message[Any], error: BaseException) -> None:
        raise OSError("disk full during clean-up")

    @dramatiq.actor(broker=broker, max_attempts=2, on_error=broken_hook)
    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first time")

    flaky.send()
    run_worker()
    assert len(runs) == 2  # the retry still happened, and the second run succeeded
    records = [json.loads(line)["record"] for line in json_lines.getvalue().splitlines()]
    (hook_error,) = [r for r in records if "on_error hook" in r["message"]]
    assert hook_error["level"]["name"] == "ERROR"
    assert hook_error["exception"]["type"] == "OSError"
    (failure,) = failures(json_lines)
    assert failure["extra"]["will_retry"] is True


def test_alone_it_keeps_the_history_and_judges_by_the_broker(
    stub_broker: StubBroker, json_lines: io.StringIO, database: peewee.Database
) -> None:
    # Dramatiq's own Retries in place: ErrorHandling still logs and dead-letters.
    stub_broker.add_middleware(ErrorHandling(database=database))
    assert any(isinstance(m, Retries) for m in stub_broker.middleware)

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def fails() -> None:
        raise ValueError("no retries here")

    fails.send()
    drain(stub_broker)
    (failure,) = failures(json_lines)
    assert (failure["extra"]["will_retry"], failure["extra"]["max_attempts"]) == (False, 1)
    (row,) = DeadLetterStore(database).list()
    assert [h["error_type"] for h in row.error_history] == ["ValueError"]


def test_a_fresh_sqlite_database_gets_its_dead_letters_table_once(
    stub_broker: StubBroker, tmp_path: Path
) -> None:
    # No tables, as a hand-built ErrorHandling meets a new database.
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    install(stub_broker, database=url)
    statements: list[str] = []
    handler = _Collect(statements)
    logging.getLogger("peewee").addHandler(handler)
    logging.getLogger("peewee").setLevel(logging.DEBUG)

    @dramatiq.actor(broker=stub_broker, max_attempts=1)
    def fails(number: int) -> None:
        raise RuntimeError(f"broken {number}")

    try:
        sent = {fails.send(n).message_id for n in range(3)}
        drain(stub_broker)
    finally:
        logging.getLogger("peewee").removeHandler(handler)
        logging.getLogger("peewee").setLevel(logging.NOTSET)
    rows = DeadLetterStore(url).list()
    assert {row.message_id for row in rows} == sent
    assert sorted(row.error_message for row in rows) == [f"broken {n}" for n in range(3)]
    assert len(stub_broker.dead_letters) == 3  # the broker's dead-letter queue has them too
    # Checked (and made) once, as the worker booted, not once a message.
    made = [s for s in statements if s.startswith('CREATE TABLE IF NOT EXISTS "ds_dead_letters"')]
    assert len(made) == 1
    assert len([s for s in statements if s.startswith('INSERT INTO "ds_dead_letters"')]) == 3


class _Collect(logging.Handler):
    """Keeps the SQL peewee logs (at DEBUG, as the statement and its parameters)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        sql = record.msg[0] if isinstance(record.msg, tuple) else str(record.msg)
        self.into.append(str(sql))


def test_postgres_without_the_table_refuses_the_worker_boot_in_one_line(
    stub_broker: StubBroker, postgres_url: str
) -> None:
    install(stub_broker, database=postgres_url)  # no dramatiq-shared init-db run
    worker = dramatiq.Worker(stub_broker, worker_timeout=20)
    with pytest.raises(ConfigError) as refused:
        worker.start()
    message = str(refused.value)
    assert "\n" not in message
    assert "ds_dead_letters does not exist" in message
    assert "`dramatiq-shared init-db --database URL`" in message
    assert worker.workers == []  # no thread took a message
    assert ":dramatiq_shared@" not in message  # the URL's password is not shown


def test_a_message_over_max_message_size_is_refused_at_send(stub_broker: StubBroker) -> None:
    stub_broker.add_middleware(ErrorHandling(max_message_size=1_024))

    @dramatiq.actor(broker=stub_broker)
    def store(text: str) -> None:
        pass

    with pytest.raises(MessageTooLargeError, match=r"more than max_message_size \(1,024\)"):
        store.send("y" * 2_000)
    store.send("fits")
    assert stub_broker.queues["default"].qsize() == 1  # only the one that fits


@pytest.mark.parametrize("size", [0, -1, 1.5, "64k"])
def test_a_bad_max_message_size_is_refused_at_construction(size: Any) -> None:
    with pytest.raises(ConfigError, match="max_message_size must be an int >= 1"):
        ErrorHandling(max_message_size=size)
    with pytest.raises(ConfigError, match="max_message_size must be an int >= 1"):
        setup_broker(StubBroker(), database="sqlite://", max_message_size=size)
