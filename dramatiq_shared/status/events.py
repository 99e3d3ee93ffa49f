"""Status events: what the pipeline reports about an import, validated, with a stable JSON form.

On the wire (the Redis streams, the websocket relay) an event is a JSON object with the
camelCase keys of the TypeScript system this library replaces, so existing front ends
read it unchanged::

    {"id": 17, "importId": "imp-1", "status": "PROCESSING", "noteId": "n-3",
     "message": "Parsing ingredients", "context": "parse_note", "currentCount": 3,
     "totalCount": 12, "indentLevel": 1, "metadata": {"attempt": 1}, "timestamp": 1764356400123}

``id`` increases by one per event within an import (no gaps; coalesced events get
none) and ``timestamp`` is milliseconds since the epoch; both are given when the event
is published. Absent optional fields are ``null``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._checks import INT32_MAX, check_id, check_int, check_text
from .._wire import WIRE_KEYS, wire_form
from ..errors import ValidationError

__all__ = ["TERMINAL", "NoteStatus", "StatusEvent"]

#: Longest message or context, in characters.
MAX_TEXT = 2_000
#: Largest metadata, encoded as JSON, in bytes.
MAX_METADATA = 16 * 1024
#: Deepest indent level.
MAX_INDENT = 10


class NoteStatus(str, enum.Enum):
    """Where a note, a message or an import stands."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


#: Statuses after which nothing more happens; never coalesced away.
TERMINAL = frozenset((NoteStatus.COMPLETED, NoteStatus.FAILED))

# Field name of each wire (camelCase) key.
_FIELD = {wire: name for name, wire in WIRE_KEYS.items()}


@dataclass(frozen=True)
class StatusEvent:
    """One thing that happened to an import, a note in it, or a step of a note.

    Parameters:
      import_id: The import, a non-blank string of at most 128 characters.
      status: A :class:`NoteStatus` or its name.
      note_id: The note, when the event is about one; same rules as ``import_id``.
      message: Words for people, at most 2,000 characters.
      context: What reports it (an actor name, a step), at most 2,000 characters.
      current_count: Items done so far, an int >= 0.
      total_count: Items in all, an int >= 0, not less than ``current_count``.
      indent_level: How deep to show it (import 0, note 1, line 2...), 0 to 10.
      metadata: More facts: a JSON-serialisable mapping with string keys, at most
        16 KiB encoded.

    Raises:
      ValidationError: Naming the first field that is invalid.
    """

    import_id: str
    status: NoteStatus | str
    note_id: str | None = None
    message: str | None = None
    context: str | None = None
    current_count: int | None = None
    total_count: int | None = None
    indent_level: int = 0
    metadata: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_id("import_id", self.import_id)
        try:
            status = NoteStatus(self.status)
        except ValueError:
            allowed = ", ".join(s.value for s in NoteStatus)
            raise ValidationError.invalid("status", self.status, f"one of {allowed}") from None
        object.__setattr__(self, "status", status)
        if self.note_id is not None:
            check_id("note_id", self.note_id)
        for name in ("message", "context"):
            value = getattr(self, name)
            if value is not None:
                check_text(name, value, max_length=MAX_TEXT, allow_empty=True)
        for name in ("current_count", "total_count"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=0, maximum=INT32_MAX)
        if (
            self.current_count is not None
            and self.total_count is not None
            and self.current_count > self.total_count
        ):
            raise ValidationError.invalid(
                "current_count", self.current_count, f"<= total_count ({self.total_count})"
            )
        check_int("indent_level", self.indent_level, minimum=0, maximum=MAX_INDENT)
        if self.metadata is not None:
            object.__setattr__(self, "metadata", _checked_metadata(self.metadata))

    def with_status(
        self,
        status: NoteStatus,
        message: str | None,
        metadata: Mapping[str, Any] | None = None,
    ) -> StatusEvent:
        """This event's import, note, context and indent level with another status,
        message and metadata.

        Only the new fields are checked: the event after PROCESSING of one delivery is
        built from that one, not validated from scratch.

        Raises:
          ValidationError: When ``message`` or ``metadata`` is invalid.
        """
        if message is not None:
            check_text("message", message, max_length=MAX_TEXT, allow_empty=True)
        event = object.__new__(StatusEvent)
        fields_ = dict(self.__dict__)
        fields_["status"] = NoteStatus(status)
        fields_["message"] = message
        fields_["metadata"] = None if metadata is None else _checked_metadata(metadata)
        object.__setattr__(event, "__dict__", fields_)
        return event

    @classmethod
    def from_mapping(cls, fields_: Mapping[str, Any]) -> StatusEvent:
        """Build an event from snake_case or camelCase (wire) keys.

        Raises:
          ValidationError: When a key is unknown or given twice, or a value is invalid.
        """
        if not isinstance(fields_, Mapping):
            raise ValidationError.invalid(
                "event", fields_, "a StatusEvent or a mapping of its fields"
            )
        values: dict[str, Any] = {}
        for key, value in fields_.items():
            name = _FIELD.get(key, key) if isinstance(key, str) else key
            if name not in WIRE_KEYS:
                allowed = ", ".join(WIRE_KEYS)
                raise ValidationError(
                    f"StatusEvent has no field {key!r}; allowed: {allowed} (or camelCase)",
                    field=str(key),
                )
            if name in values:
                raise ValidationError(f"StatusEvent field {name!r} given twice", field=name)
            values[name] = value
        if "import_id" not in values or "status" not in values:
            missing = "import_id" if "import_id" not in values else "status"
            raise ValidationError(f"{missing} is required", field=missing)
        return cls(**values)

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED and FAILED."""
        return self.status in TERMINAL

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        """What coalescing groups by: (import, note, context)."""
        return (self.import_id, self.note_id, self.context)

    def to_wire(
        self, *, event_id: int | None = None, timestamp: int | None = None
    ) -> dict[str, Any]:
        """The JSON-ready, camelCase form, with the id and time given at publication."""
        return wire_form(self.__dict__, event_id=event_id, timestamp=timestamp)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> StatusEvent:
        """The event of a wire form (its ``id`` and ``timestamp`` are left out)."""
        return cls.from_mapping({k: v for k, v in wire.items() if k not in ("id", "timestamp")})


def _checked_metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ValidationError.invalid("metadata", metadata, "a mapping with string keys")
    try:
        encoded = json.dumps(metadata, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValidationError(
            f"metadata must be JSON-serialisable: {error}", field="metadata"
        ) from None
    if len(encoded.encode()) > MAX_METADATA:
        raise ValidationError.invalid(
            "metadata", f"<{len(encoded.encode())} bytes>", f"at most {MAX_METADATA} bytes as JSON"
        )
    # A private copy, as it will be read back: the caller may go on changing theirs.
    return dict(json.loads(encoded))
