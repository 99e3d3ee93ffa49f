"""Fuzzing the library's doors with hypothesis: whatever comes in, out comes a value or the
library's own clear error, never an unhandled exception and never a partial write."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_shared import (
    CircuitBreakerConfig,
    ConfigError,
    DatabaseConfig,
    DatabaseOperations,
    NoteData,
    RetryConfig,
    StatusConfig,
    StatusEvent,
    ValidationError,
    create_action_registration,
    create_tables,
    init_database,
    register_actions,
    setup_broker,
)
from dramatiq_shared.config import _snake_case
from dramatiq_shared.db.models import IngredientLine
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.relay.connections import Connection, Hub
from dramatiq_shared.relay.sources import MemorySource
from dramatiq_shared.status.transport import MemoryTransport

pytestmark = pytest.mark.faults

EXAMPLES = settings(
    max_examples=1_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)


def nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )


# What a JSON frame may hold; and what a Python caller may pass besides (NaN, bytes).
json_values = nested(json_scalars)
values = nested(st.one_of(json_scalars, st.floats(), st.binary(max_size=10)))


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def settings_of(kind: type) -> st.SearchStrategy[dict[Any, Any]]:
    """Mappings with the config's own keys (either spelling), unknown ones, odd values."""
    names = [f.name for f in dataclasses.fields(kind)]
    keys = st.one_of(
        st.sampled_from(names), st.sampled_from([camel(n) for n in names]), st.text(max_size=12)
    )
    return st.dictionaries(keys, values, max_size=6)


@pytest.mark.parametrize("kind", [RetryConfig, CircuitBreakerConfig, DatabaseConfig, StatusConfig])
def test_configs_accept_or_refuse_clearly(kind: type) -> None:
    @EXAMPLES
    @given(settings_of(kind))
    def check(mapping: dict[Any, Any]) -> None:
        refusal = None
        try:
            config = kind.from_mapping(mapping)
        except ConfigError as error:
            refusal = str(error)
        if refusal is not None:
            assert refusal  # refused, with a message that says why
            return
        for key, value in mapping.items():
            name = _snake_case(key)
            if isinstance(value, (bool, int, str)) and name not in (
                "jitter",
                "retryable_errors",
                "excluded_errors",
            ):
                assert getattr(config, name) == value

    check()


events = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "import_id",
                "importId",
                "status",
                "note_id",
                "noteId",
                "message",
                "context",
                "currentCount",
                "total_count",
                "indentLevel",
                "metadata",
            ]
        ),
        st.text(max_size=8),
    ),
    st.one_of(values, st.sampled_from(["PROCESSING", "COMPLETED", "imp-1", 3])),
    max_size=8,
)


@EXAMPLES
@given(events)
def test_status_events_are_valid_or_refused_clearly(fields: dict[str, Any]) -> None:
    try:
        event = StatusEvent.from_mapping(fields)
    except ValidationError:
        return
    wire = event.to_wire(event_id=1, timestamp=0)
    assert StatusEvent.from_wire(json.loads(json.dumps(wire, allow_nan=False))) == event


_names = (f"fuzzed_{n}" for n in itertools.count())
OPTIONS = [
    "max_attempts",
    "max_retries",
    "base_delay",
    "max_delay",
    "retryable_errors",
    "jitter",
    "max_defers",
    "throws",
    "on_retry_exhausted",
    "breaker",
    "status",
    "status_context",
    "on_error",
    "queue_name",
    "priority",
    "time_limit",
    "max_age",
]


@pytest.fixture(scope="module")
def suite_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubBroker]:
    broker = StubBroker()
    setup_broker(broker, database=f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'db'}")
    yield broker
    broker.close()


def test_actor_options_are_accepted_or_refused_clearly(suite_broker: StubBroker) -> None:
    @EXAMPLES
    @given(st.dictionaries(st.sampled_from(OPTIONS), values, min_size=1, max_size=3))
    def check(options: dict[str, Any]) -> None:
        name = next(_names)
        refused = False
        try:
            register_actions(suite_broker, [create_action_registration(name, len, **options)])
        except ConfigError:
            refused = True
        else:
            suite_broker.actors.pop(name)
        assert name not in suite_broker.actors  # declared and removed, or refused whole
        throws = options.get("throws")
        if not refused and throws is not None:  # used in isinstance() after a failure
            assert isinstance(throws, (type, tuple))

    check()


@pytest.fixture
def lines_database(tmp_path: Path) -> Iterator[DatabaseOperations]:
    database = init_database(f"sqlite:///{tmp_path / 'lines.db'}")
    create_tables(database)
    operations = DatabaseOperations(database)
    operations.create_or_update_import("imp-1")
    operations.create_or_update_note("note-1", NoteData(import_id="imp-1"))
    yield operations
    database.close()


line_data = st.fixed_dictionaries(
    {},
    optional={
        "block_index": st.one_of(st.integers(-3, 3), values),
        "line_index": st.one_of(st.integers(-3, 3), values),
        "reference": st.one_of(st.text(max_size=20), values),
        "note_id": st.one_of(st.sampled_from(["note-1", "note-2"]), values),
        "parse_status": st.one_of(st.sampled_from(["CORRECT", "ERROR", "nope"]), values),
    },
)


def test_line_batches_are_written_whole_or_not_at_all(
    lines_database: DatabaseOperations,
) -> None:
    @EXAMPLES
    @given(st.lists(st.tuples(st.text(max_size=6), line_data), max_size=4))
    def check(batch: list[tuple[str, dict[str, Any]]]) -> None:
        before = list(IngredientLine.select().order_by(IngredientLine.id).tuples())
        refused = False
        try:
            lines_database.create_or_update_parsed_ingredient_lines(batch)
        except ValidationError:
            refused = True
        after = list(IngredientLine.select().order_by(IngredientLine.id).tuples())
        if refused:
            assert after == before  # nothing half-written
        else:
            assert len(after) >= len(before)

    check()


frames = st.one_of(
    st.text(max_size=200),
    st.builds(json.dumps, json_values),
    st.builds(
        json.dumps,
        st.fixed_dictionaries(
            {"type": st.sampled_from(["subscribe", "unsubscribe", "hello"])},
            optional={
                "import_id": st.one_of(st.sampled_from(["imp-1", "*", ""]), json_values),
                "token": st.one_of(
                    st.just(sign("imp-1", "fuzz-secret-of-32-bytes-at-least!")), json_values
                ),
                "last_event_id": json_values,
            },
        ),
    ),
)


def test_websocket_frames_get_an_answer_never_an_exception() -> None:
    hub = Hub()
    source = MemorySource(MemoryTransport())

    @EXAMPLES
    @given(st.lists(frames, min_size=1, max_size=5))
    def check(texts: list[str]) -> None:
        connection = Connection(
            web.WebSocketResponse(), hub, source, "fuzz-secret-of-32-bytes-at-least!", 2_000
        )

        async def send_all() -> None:
            for text in texts:
                connection.rate_tokens = 30.0  # the flood limit has its own test
                await connection.receive(text)

        asyncio.run(send_all())
        for item in connection.queue:
            if isinstance(item, str):
                answer = json.loads(item)
                assert answer["type"] in ("error", "subscribed")
                if answer["type"] == "error":
                    assert answer["code"]
                    assert answer["message"]
            else:
                assert item[0] == "catch-up"
        for import_id in list(connection.subscriptions):
            hub.unsubscribe(connection, import_id)

    check()
