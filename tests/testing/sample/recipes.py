"""A user's actor module: the whole suite, a breaker-guarded dependency, status events
and completion, as the README's usage module does it."""

from __future__ import annotations

import dramatiq

from dramatiq_shared import add_status_event_and_broadcast, get_stack, setup_broker

broker = setup_broker(
    retry={"maxAttempts": 3, "baseDelay": 100, "maxDelay": 1000},
    breakers={"nutrition": {"failureThreshold": 2, "resetTimeout": 200}},
)


def fetch_calories(name):
    """The nutrition service (here a stand-in that always answers)."""
    return 10 * len(name)


@dramatiq.actor(breaker="nutrition", status_context="enrich")
def enrich(import_id, note_id, name):
    calories = fetch_calories(name)
    add_status_event_and_broadcast(
        {
            "importId": import_id,
            "noteId": note_id,
            "status": "PROCESSING",
            "message": f"{name}: {calories} kcal",
            "context": "enrich",
        }
    )
    get_stack().completion.mark_done(import_id, note_id)


@dramatiq.actor(max_attempts=1)
def parse_line(import_id, note_id, line):
    if not line.strip():
        raise ValueError("an empty line")
    enrich.send(import_id, note_id, line.split()[-1])
