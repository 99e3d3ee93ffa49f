"""A user's tests of recipes.py: nothing imported but the kit and the module."""

from __future__ import annotations

import recipes

from dramatiq_shared.testing import Suite


def test_an_import_completes_once_every_note_is_enriched(dramatiq_suite: Suite):
    dramatiq_suite.stack.completion.expect("imp-1", 2)
    recipes.parse_line.send("imp-1", "note-1", "2 cups flour")
    recipes.parse_line.send("imp-1", "note-2", "1 egg")
    dramatiq_suite.run()

    progress = [e for e in dramatiq_suite.events("imp-1") if e.context == "import"]
    # Two workers' progress events may arrive in either order (a reader folds them by
    # count); the import ends exactly once, counting both notes.
    assert [(e.status, e.current_count) for e in progress if e.status == "COMPLETED"] == [
        ("COMPLETED", 2)
    ]
    enriched = [e for e in dramatiq_suite.events("imp-1") if e.message and "kcal" in e.message]
    assert sorted(e.message for e in enriched) == ["egg: 30 kcal", "flour: 50 kcal"]
    assert dramatiq_suite.errors == []


def test_a_service_failing_once_is_retried_after_the_base_delay(dramatiq_suite: Suite):
    fault = dramatiq_suite.fail("recipes.fetch_calories", times=1, error=TimeoutError)
    recipes.enrich.send("imp-1", "note-1", "flour")
    dramatiq_suite.run()

    assert [(d.action, d.attempt) for d in dramatiq_suite.decisions] == [
        ("retry", 1),
        ("succeeded", 2),
    ]
    assert dramatiq_suite.decisions[0].delay >= 100
    assert (fault.calls, fault.failures) == (2, 1)
    (record,) = dramatiq_suite.errors
    assert (record.error_type, record.will_retry) == ("TimeoutError", True)
    assert record.context["note_id"] == "note-1"


def test_a_failing_service_trips_its_breaker_and_the_message_waits(dramatiq_suite: Suite):
    dramatiq_suite.fail("recipes.fetch_calories", times=2, error=ConnectionError)
    recipes.enrich.send("imp-1", "note-1", "flour")
    dramatiq_suite.run()

    actions = [d.action for d in dramatiq_suite.decisions]
    assert actions[:2] == ["retry", "deferred"]  # the second failure opened the breaker
    assert actions[-1] == "succeeded"
    assert dramatiq_suite.decisions[-1].attempt == 2  # the deferrals used no attempt
    assert [(t.breaker, t.new) for t in dramatiq_suite.transitions] == [
        ("nutrition", "open"),
        ("nutrition", "half-open"),
        ("nutrition", "closed"),
    ]


def test_an_empty_line_fails_for_good_and_is_a_dead_letter(dramatiq_suite: Suite):
    recipes.parse_line.send("imp-1", "note-1", "  ")
    dramatiq_suite.run(fail_fast=False)

    (failure,) = dramatiq_suite.failures
    assert (failure.actor, str(failure.error)) == ("parse_line", "an empty line")
    (letter,) = dramatiq_suite.dead_letters
    assert (letter.actor_name, letter.error_type) == ("parse_line", "ValueError")


def test_a_forced_open_breaker_holds_messages_back_until_closed(dramatiq_suite: Suite):
    dramatiq_suite.open_breaker("nutrition")
    dramatiq_suite.close_breaker("nutrition")
    recipes.enrich.send("imp-1", "note-1", "egg")
    dramatiq_suite.run()

    assert [d.action for d in dramatiq_suite.decisions] == ["succeeded"]
    assert [t.new for t in dramatiq_suite.transitions] == ["open", "closed"]
