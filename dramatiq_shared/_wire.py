"""The wire form of a status event: the camelCase keys existing front ends read.

Shared by :class:`~dramatiq_shared.status.events.StatusEvent`, which is streamed in
this form, and the stored history (:mod:`dramatiq_shared.stores.status_history`),
which gives back what was streamed; neither layer imports the other.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["WIRE_KEYS", "wire_form"]

#: The wire key of each field of an event, in the order the wire form lists them.
WIRE_KEYS = {
    "import_id": "importId",
    "status": "status",
    "note_id": "noteId",
    "message": "message",
    "context": "context",
    "current_count": "currentCount",
    "total_count": "totalCount",
    "indent_level": "indentLevel",
    "metadata": "metadata",
}


def wire_form(
    fields: Mapping[str, Any], *, event_id: int | None, timestamp: int | None
) -> dict[str, Any]:
    """``{"id", every field under its wire key, "timestamp"}``, a status by its name."""
    wire: dict[str, Any] = {"id": event_id}
    for name, key in WIRE_KEYS.items():
        value = fields[name]
        wire[key] = value.value if isinstance(value, enum.Enum) else value
    wire["timestamp"] = timestamp
    return wire
