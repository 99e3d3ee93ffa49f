from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import Middleware
from loguru import logger

from dramatiq_shared import (
    ConfigError,
    ValidationError,
    configure_logging,
    message_context,
)
from dramatiq_shared.testing import Suite


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # configure_logging() replaces loguru's handlers and the root logger's; undo both.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logger.remove()
    logger.add(sys.stderr)
    root.handlers[:] = handlers
    root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written must be one JSON object; return their loguru records."""
    return [json.loads(line)["record"] for line in stream.getvalue().splitlines()]


class LogContext(Middleware):
    """Binds message context around processing, as the library's middleware does."""

    def __init__(self) -> None:
        self.scopes: dict[str, Any] = {}

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any]
    ) -> None:
        scope = message_context(message)
        scope.__enter__()
        self.scopes[message.message_id] = scope

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.scopes.pop(message.message_id).__exit__(None, None, None)


def test_json_lines_parse_and_carry_bound_context() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, sink=stream)
    message = dramatiq.Message(
        queue_name="imports",
        actor_name="parse_note",
        args=(),
        kwargs={"import_id": "imp-1", "note_id": 7},
        options={},
    )
    with message_context(message, attempt=2):
        logger.info("parsing {}", "a {brace}")
    logger.info("outside")

    inside, outside = records(stream)
    assert inside["message"] == "parsing a {brace}"
    assert inside["level"]["name"] == "INFO"
    assert inside["extra"] == {
        "message_id": message.message_id,
        "actor": "parse_note",
        "queue": "imports",
        "import_id": "imp-1",
        "note_id": 7,
        "attempt": 2,
    }
    assert outside["extra"] == {}


def test_import_id_may_come_from_message_options() -> None:
    stream = io.StringIO()
    configure_logging(json=True, sink=stream)
    message = dramatiq.Message(
        queue_name="default", actor_name="a", args=(1,), kwargs={}, options={"import_id": "opt"}
    )
    with message_context(message):
        logger.warning("w")
    assert records(stream)[0]["extra"]["import_id"] == "opt"


def test_a_stdlib_record_from_dramatiq_arrives_in_the_loguru_sink() -> None:
    stream = io.StringIO()
    configure_logging("INFO", json=True, sink=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("dramatiq.worker.WorkerThread").exception(
            "Failed to process message %s", "m-1"
        )
    logging.getLogger("dramatiq.broker").debug("below the level, never built")

    (record,) = records(stream)
    assert record["message"] == "Failed to process message m-1"
    assert record["level"]["name"] == "ERROR"
    assert record["exception"]["type"] == "RuntimeError"
    # The caller is reported, not the logging module's internals.
    assert record["function"] == "test_a_stdlib_record_from_dramatiq_arrives_in_the_loguru_sink"


def test_human_lines_show_context_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", sink=stream)
    message = dramatiq.Message(
        queue_name="q", actor_name="act", args=(), kwargs={"import_id": "i-9"}, options={}
    )
    with message_context(message, odd="{not a field}"):
        logger.info("hello")
    line = stream.getvalue()
    assert "hello | message_id=" in line
    assert "actor=act queue=q import_id=i-9 odd={not a field}" in line


def test_an_unknown_level_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="level must be a loguru level name or number, got 'LOUD'"
    ):
        configure_logging("LOUD")


@pytest.mark.parametrize("broker_fixture", ["stub_broker", "redis_broker"])
def test_each_worker_thread_logs_its_own_message_context(
    request: pytest.FixtureRequest, broker_fixture: str
) -> None:
    broker: dramatiq.Broker = request.getfixturevalue(broker_fixture)
    broker.add_middleware(LogContext())
    stream = io.StringIO()
    configure_logging("INFO", json=True, sink=stream)
    both_running = threading.Barrier(2, timeout=10)

    @dramatiq.actor(broker=broker, max_retries=0)
    def work(import_id: str) -> None:
        both_running.wait()  # two threads are inside their contexts at the same time
        logger.info("working on {}", import_id)
        logging.getLogger("user.module").info("stdlib too")

    sent = {work.send(import_id=f"imp-{n}").message_id: f"imp-{n}" for n in range(2)}
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        broker.join(work.queue_name)
        worker.join()
    finally:
        worker.stop()

    lines = [
        r
        for r in records(stream)
        if r["message"] in {"stdlib too"} or r["message"].startswith("working")
    ]
    assert len(lines) == 4
    for record in lines:
        extra = record["extra"]
        assert sent[extra["message_id"]] == extra["import_id"]
        assert extra["actor"] == "work"
        if record["message"].startswith("working"):
            assert record["message"] == f"working on {extra['import_id']}"


def test_ids_passed_by_position_are_found_through_the_actor(stub_broker: Any) -> None:
    stream = io.StringIO()
    configure_logging(json=True, sink=stream)

    @dramatiq.actor(broker=stub_broker)
    def parse_note(import_id: str, note_id: int) -> None:
        pass

    message = parse_note.message("imp-5", 12)
    with message_context(message, parse_note):
        logger.info("positional")
    extra = records(stream)[0]["extra"]
    assert (extra["import_id"], extra["note_id"]) == ("imp-5", 12)


def test_a_handled_failure_is_one_warning_line_and_an_unexpected_one_keeps_its_traceback(
    dramatiq_suite: Suite,
) -> None:
    # The suite as a worker runs it (the testing kit's): Retry and ErrorHandling in place
    # of Retries.
    stream = io.StringIO()
    configure_logging("WARNING", sink=stream)  # the main job's default level

    @dramatiq.actor(max_attempts=1)
    def handled(import_id: str) -> None:
        raise ValidationError.invalid("ingredients", 42, "a list of strings")

    @dramatiq.actor(max_attempts=1)
    def unexpected(import_id: str) -> None:
        raise LookupError("no such row")

    handled.send("imp-1")
    dramatiq_suite.run(fail_fast=False)
    quiet = stream.getvalue()
    unexpected.send("imp-1")
    dramatiq_suite.run(fail_fast=False)
    assert [(f.actor, type(f.error)) for f in dramatiq_suite.failures] == [
        ("handled", ValidationError),
        ("unexpected", LookupError),
    ]
    (line,) = quiet.splitlines()  # one line, nothing from Dramatiq or Retry beside it
    assert "WARNING" in line
    assert "error_message=ingredients must be a list of strings, got 42" in line
    loud = stream.getvalue()[len(quiet) :]
    assert "Traceback" in loud
    assert 'raise LookupError("no such row")' in loud
    assert "ERROR" in loud
