"""An import's current state, folded from its events, for clients that join late.

A late joiner asks ``GET /imports/{id}/snapshot`` for the import's state as of one
event id (counts by status, each note's last status and line counts, the last
messages), then subscribes from that id: it never replays the whole history.

The fold's rules (the dashboard applies the same ones to the live events):

* an event without a note is the import's: its status and its counts;
* a note's title is the last ``title`` its events' metadata gave (the recipe example
  gives it with the note's PROCESSING);
* an event of a note with ``context == "line"`` is one of its lines: it moves the
  note's line counts (never backwards) and makes a PENDING note PROCESSING;
* any other event of a note sets the note's status and message, except that a
  terminal status (COMPLETED, FAILED) is never followed by a non-terminal one: a
  late PROCESSING of a finished note (two last lines finishing at once, a
  redelivery) changes its counts only.

A snapshot also counts the notes that ended in each second of the import's last
:data:`THROUGHPUT_SECONDS` (by their ending event's timestamp), for the page's
throughput chart.

The relay keeps the snapshots of the imports asked for last (:class:`Snapshots`)
and folds only the events published since, so a late joiner costs one read of what
is new.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from ..status.events import TERMINAL
from .sources import EventSource

__all__ = ["ImportState", "NoteSnapshot", "Snapshots", "progress"]

#: Messages a snapshot carries, newest last.
RECENT = 100
#: Events read from the source at a time while folding; the fold yields to the event
#: loop between pages, so a long history does not hold up the live feed.
FOLD_PAGE = 2_000
#: Imports whose snapshot the relay keeps.
KEPT = 32
#: Seconds of notes ended a second a snapshot keeps, up to its newest event.
THROUGHPUT_SECONDS = 300


@dataclass
class NoteSnapshot:
    """What a snapshot says of one note."""

    status: str = "PENDING"
    title: str = ""
    message: str = ""
    lines_done: int = 0
    lines_total: int | None = None
    updated: int = 0  # the id of the event that last changed it

    def apply(self, status: str, event: dict[str, Any]) -> bool:
        """Fold one of the note's events (see the module's rules).

        Returns:
          Whether the note ended with it (reached COMPLETED or FAILED for the first time).
        """
        title = (event.get("metadata") or {}).get("title")
        if isinstance(title, str) and title:
            self.title = title
        current, total = event.get("currentCount"), event.get("totalCount")
        if event.get("context") == "line" or status not in TERMINAL:
            if current is not None:
                self.lines_done = max(self.lines_done, current)
            if total is not None:
                self.lines_total = total
        elif total is not None:  # the note's end: its counts are final
            self.lines_done, self.lines_total = current or 0, total
        if event.get("context") == "line":
            if self.status == "PENDING":
                self.status = "PROCESSING"
            return False
        if self.status in TERMINAL and status not in TERMINAL:
            return False
        ended = status in TERMINAL and self.status not in TERMINAL
        self.status = status
        self.message = event.get("message") or ""
        return ended

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "title": self.title,
            "message": self.message,
            "lines_done": self.lines_done,
            "lines_total": self.lines_total,
            "updated": self.updated,
        }


@dataclass
class ImportState:
    """An import's state folded from its events, in id order (see the module's rules)."""

    import_id: str
    last_event_id: int = 0
    status: str | None = None
    message: str = ""
    current_count: int | None = None
    total_count: int | None = None
    started: int | None = None  # the first event's timestamp, ms
    updated: int | None = None  # the last event's timestamp, ms
    notes: dict[str, NoteSnapshot] = field(default_factory=dict)
    ended_by_second: dict[int, int] = field(default_factory=dict)  # epoch second -> notes
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event (wire form, with its ``id``); one not newer than the last is
        ignored."""
        event_id = int(event["id"])
        if event_id <= self.last_event_id:
            return
        self.last_event_id = event_id
        stamp = event.get("timestamp")
        if stamp is not None:
            self.started = stamp if self.started is None else self.started
            self.updated = stamp
        status = str(event.get("status"))
        if event.get("message"):
            self.recent.append(
                {
                    "id": event_id,
                    "status": status,
                    "noteId": event.get("noteId"),
                    "context": event.get("context"),
                    "message": event["message"],
                    "timestamp": stamp,
                }
            )
        note_id = event.get("noteId")
        if note_id is None:
            self._apply_to_import(status, event)
            return
        note = self.notes.get(note_id)
        if note is None:
            note = self.notes[note_id] = NoteSnapshot()
        note.updated = event_id
        if note.apply(status, event) and stamp is not None:
            self._count_ended(stamp // 1000)

    def _count_ended(self, second: int) -> None:
        self.ended_by_second[second] = self.ended_by_second.get(second, 0) + 1
        if len(self.ended_by_second) > 2 * THROUGHPUT_SECONDS:  # now and then, not each note
            self.ended_by_second = dict(self._last_seconds())

    def _last_seconds(self) -> list[tuple[int, int]]:
        """The seconds of :attr:`ended_by_second` in the newest's last
        :data:`THROUGHPUT_SECONDS`, in order, with their counts."""
        if not self.ended_by_second:
            return []
        oldest = max(self.ended_by_second) - THROUGHPUT_SECONDS
        return sorted((s, n) for s, n in self.ended_by_second.items() if s > oldest)

    def _apply_to_import(self, status: str, event: dict[str, Any]) -> None:
        current, total = event.get("currentCount"), event.get("totalCount")
        if total is not None:
            self.total_count = total
        if current is not None:
            self.current_count = max(self.current_count or 0, current)
        if self.status in TERMINAL and status not in TERMINAL:
            return
        self.status = status
        if event.get("message"):
            self.message = event["message"]

    def counts(self) -> dict[str, int]:
        """How many notes are in each status."""
        found = dict.fromkeys(("PENDING", "PROCESSING", "RETRYING", "COMPLETED", "FAILED"), 0)
        for note in self.notes.values():
            found[note.status] = found.get(note.status, 0) + 1
        return found

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as ``GET /imports/{id}/snapshot`` serves it."""
        return {
            "import_id": self.import_id,
            "last_event_id": self.last_event_id,
            "status": self.status,
            "message": self.message,
            "current_count": self.current_count,
            "total_count": self.total_count,
            "started": self.started,
            "updated": self.updated,
            "counts": self.counts(),
            "notes": {note_id: note.as_dict() for note_id, note in self.notes.items()},
            "ended_by_second": self._last_seconds(),
            "recent": list(self.recent),
        }


def progress(
    snapshot: dict[str, Any], *, now_ms: int, dead_lettered: int | None = None
) -> dict[str, Any]:
    """An import's line in the imports view, from its snapshot.

    Parameters:
      snapshot: The import's snapshot (:meth:`ImportState.as_dict`).
      now_ms: The time now, ms since the epoch: a running import's elapsed time runs to
        it (an ended one's to its last event).
      dead_lettered: How many of the import's messages are dead letters not replayed
        yet, when the relay has the dead-letters table; None otherwise.

    Returns:
      Its state and counts, how long it has run, how many notes and lines a second it
      finished, while it runs the seconds left at that rate (``eta``; None until a
      note finished, or without the import's total), and its notes ended a second.
    """
    counts = snapshot["counts"]
    finished = counts["COMPLETED"] + counts["FAILED"]
    started, updated = snapshot["started"], snapshot["updated"]
    ended = snapshot["status"] in TERMINAL
    total = snapshot["total_count"]
    lines_done = sum(note["lines_done"] for note in snapshot["notes"].values())
    elapsed = None
    if started is not None:
        elapsed = ((updated if ended else max(now_ms, updated or 0)) - started) / 1000
    rate = finished / elapsed if elapsed else None
    eta = None
    if ended:
        eta = 0.0
    elif rate and total is not None:
        eta = round(max(total - finished, 0) / rate, 1)
    return {
        "import_id": snapshot["import_id"],
        "status": snapshot["status"],
        "message": snapshot["message"],
        "current_count": snapshot["current_count"],
        "total_count": total,
        "done": counts["COMPLETED"],
        "failed": counts["FAILED"],
        "retrying": counts["RETRYING"],
        "processing": counts["PROCESSING"],
        "dead_lettered": dead_lettered,
        "notes": len(snapshot["notes"]),
        "lines_done": lines_done,
        "started": started,
        "elapsed": elapsed,
        "rate": round(rate, 2) if rate is not None else None,
        "lines_rate": round(lines_done / elapsed, 2) if elapsed else None,
        "eta": eta,
        "ended_by_second": snapshot["ended_by_second"],
        "last_event_id": snapshot["last_event_id"],
    }


class Snapshots:
    """The snapshots of the imports asked for last, brought up to date on each ask.

    Parameters:
      source: Where the events are read (its ``history``: the stream, and the database
        for what the stream trimmed).
      kept: How many imports' snapshots are kept. Default 32.
    """

    def __init__(self, source: EventSource, *, kept: int = KEPT) -> None:
        self.source = source
        self.kept = kept
        self._states: OrderedDict[str, ImportState] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, import_id: str) -> dict[str, Any]:
        """The import's snapshot as of its newest event."""
        lock = self._locks.setdefault(import_id, asyncio.Lock())
        async with lock:
            state = self._states.pop(import_id, None) or ImportState(import_id)
            while True:
                page = await self.source.history(import_id, state.last_event_id, FOLD_PAGE)
                for event in page:
                    state.apply(event.data())
                if len(page) < FOLD_PAGE:
                    break
                await asyncio.sleep(0)
            self._states[import_id] = state
            while len(self._states) > self.kept:
                forgotten, _ = self._states.popitem(last=False)
                self._locks.pop(forgotten, None)
            return state.as_dict()
