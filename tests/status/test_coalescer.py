"""The coalescer, on sequences of events and times: no threads, no clock."""

from __future__ import annotations

from dramatiq_shared import NoteStatus, StatusEvent
from dramatiq_shared.status.coalescer import Coalescer


def progress(n: int, *, context: str = "parse", import_id: str = "imp-1") -> StatusEvent:
    return StatusEvent(import_id, NoteStatus.PROCESSING, current_count=n, context=context)


def counts(events: list[StatusEvent]) -> list[int | None]:
    return [event.current_count for event in events]


def test_the_newest_of_a_key_wins_and_goes_out_when_its_interval_has_passed() -> None:
    coalescer = Coalescer(1.0)
    assert counts(coalescer.take([progress(1)], 0.0).events) == [1]
    held = coalescer.take([progress(2), progress(3), progress(4)], 0.1)
    assert held.events == []
    assert held.coalesced == 2  # 2 and 3 were replaced
    assert len(coalescer) == 1
    assert coalescer.next_due() == 1.0
    assert coalescer.take([], 0.9).events == []
    assert counts(coalescer.take([], 1.0).events) == [4]
    assert len(coalescer) == 0
    assert coalescer.next_due() is None


def test_terminal_events_are_never_held_the_waiting_ones_of_other_keys_go_first() -> None:
    coalescer = Coalescer(60.0)
    coalescer.take([progress(1), progress(1, context="load")], 0.0)
    done = StatusEvent("imp-1", NoteStatus.COMPLETED, context="parse")
    released = coalescer.take([progress(2, context="load"), progress(2), done], 0.1)
    assert [(e.context, e.status, e.current_count) for e in released.events] == [
        ("load", "PROCESSING", 2),
        ("parse", "COMPLETED", None),
    ]
    assert released.coalesced == 1  # parse's waiting PROCESSING, superseded by COMPLETED
    assert len(coalescer) == 0


def test_a_terminal_event_is_never_replaced() -> None:
    coalescer = Coalescer(60.0)
    done = StatusEvent("imp-1", NoteStatus.COMPLETED, context="parse")
    released = coalescer.take([progress(1), done, progress(2)], 0.0)
    assert [(e.status, e.current_count) for e in released.events] == [
        ("PROCESSING", 1),
        ("COMPLETED", None),
    ]
    assert len(coalescer) == 1  # the later progress waits behind the COMPLETED


def test_an_imports_order_is_kept_across_keys() -> None:
    coalescer = Coalescer(60.0)
    sent = coalescer.take([progress(1, context="a"), progress(2, context="a")], 0.0).events
    assert counts(sent) == [1]  # a's second waits
    sent = coalescer.take([progress(3, context="b")], 0.1).events
    assert counts(sent) == [2, 3]  # a's waiting one goes out before b's first


def test_a_replaced_event_takes_its_place_after_the_others_waiting() -> None:
    coalescer = Coalescer(60.0)
    coalescer.take([progress(1, context="a"), progress(1, context="b")], 0.0)
    coalescer.take([progress(2, context="a"), progress(2, context="b")], 0.1)
    coalescer.take([progress(3, context="a")], 0.2)  # published after b's 2
    released = coalescer.take([], 0.3, flush=True)
    assert [(e.context, e.current_count) for e in released.events] == [("b", 2), ("a", 3)]


def test_imports_do_not_hold_each_other_back() -> None:
    coalescer = Coalescer(60.0)
    coalescer.take([progress(1), progress(1, import_id="imp-2")], 0.0)
    coalescer.take([progress(2)], 0.1)  # waits
    released = coalescer.take([progress(2, context="other", import_id="imp-2")], 0.2)
    assert [(e.import_id, e.current_count) for e in released.events] == [("imp-2", 2)]
    assert len(coalescer) == 1


def test_an_interval_of_zero_holds_nothing_and_remembers_nothing() -> None:
    coalescer = Coalescer(0.0)
    released = coalescer.take([progress(n) for n in range(5)], 0.0)
    assert counts(released.events) == [0, 1, 2, 3, 4]
    assert released.coalesced == 0
    assert not coalescer._sent


def test_keys_sent_longer_than_an_interval_ago_are_forgotten() -> None:
    coalescer = Coalescer(1.0)
    for n in range(100):  # a note each, as a big import reports them
        coalescer.take([StatusEvent("imp-1", NoteStatus.PROCESSING, note_id=f"n{n}")], n * 0.1)
    assert len(coalescer._sent) <= 11
