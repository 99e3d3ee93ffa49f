"""register_actions: all or none, with refusals that name what is wrong."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import (
    ActionRegistration,
    ConfigError,
    create_action_registration,
    register_actions,
)
from dramatiq_shared.middleware import ErrorHandling, Retry

from .middleware.conftest import install


def noop(*args: Any) -> None:
    pass


@pytest.fixture
def broker(stub_broker: StubBroker) -> StubBroker:
    install(stub_broker)
    return stub_broker


def test_a_batch_is_declared_with_its_options(broker: StubBroker) -> None:
    actors = register_actions(
        broker,
        [
            create_action_registration("parse_note", noop, max_attempts=5, queue_name="notes"),
            ActionRegistration("enrich", noop, {"on_error": noop}),
        ],
    )
    assert set(actors) == {"parse_note", "enrich"}
    assert broker.get_actor("parse_note").options["max_attempts"] == 5
    assert actors["parse_note"].queue_name == "notes"


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            [create_action_registration("a", noop), create_action_registration("a", noop)],
            "action 'a' is registered twice",
        ),
        ([create_action_registration("taken", noop)], "action 'taken' is registered twice"),
        ([ActionRegistration("b", "not callable")], "action 'b': fn must be a callable"),  # type: ignore[arg-type]
        ([create_action_registration(" ", noop)], "name must be a non-blank string"),
        (
            [create_action_registration("c", noop, retries_max=3)],
            "unknown option 'retries_max'; known options: .*max_attempts \\(Retry\\)"
            ".*on_error \\(ErrorHandling\\)",
        ),
        (
            [
                create_action_registration("d", noop),
                create_action_registration("e", noop, max_attempts=0),
            ],
            "actor 'e': max_attempts must be an int >= 1, got 0",
        ),
        (
            [create_action_registration("f", noop, queue_name="no spaces")],
            "queue_name must be a valid queue name",
        ),
    ],
)
def test_refusals_leave_the_broker_unchanged(
    broker: StubBroker, batch: list[ActionRegistration], message: str
) -> None:
    register_actions(broker, [create_action_registration("taken", noop)])
    actors, queues = dict(broker.actors), set(broker.get_declared_queues())
    with pytest.raises(ConfigError, match=message):
        register_actions(broker, batch)
    assert broker.actors == actors
    assert broker.get_declared_queues() == queues
    assert any(isinstance(m, Retry) for m in broker.middleware)
    assert any(isinstance(m, ErrorHandling) for m in broker.middleware)


def test_the_actors_run(broker: StubBroker) -> None:
    seen = []
    actors = register_actions(broker, [create_action_registration("remember", seen.append)])
    actors["remember"].send(7)
    worker = dramatiq.Worker(broker, worker_timeout=20)
    worker.start()
    broker.join("default")
    worker.join()
    worker.stop()
    assert seen == [7]
