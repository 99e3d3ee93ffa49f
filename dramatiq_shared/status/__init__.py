"""Status events, their broadcasting, and import completion.

Only the events are imported here: the broadcaster and the trackers need the database
layer, whose models need :class:`NoteStatus`, so importing them here would be circular.
"""

from __future__ import annotations

from .events import TERMINAL, NoteStatus, StatusEvent

__all__ = ["TERMINAL", "NoteStatus", "StatusEvent"]
