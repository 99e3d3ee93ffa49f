"""StatusEvent: every field validated, a stable camelCase wire form, and property tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dramatiq_shared import NoteStatus, StatusEvent, ValidationError


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"import_id": ""}, "import_id must be a non-blank string of at most 128"),
        ({"import_id": "x" * 129}, "import_id must be a non-blank string of at most 128"),
        ({"import_id": 7}, "import_id must be"),
        (
            {"status": "DONE"},
            "status must be one of PENDING, PROCESSING, RETRYING, COMPLETED, FAILED",
        ),
        ({"note_id": ""}, "note_id must be a non-blank string"),
        ({"message": "m" * 2001}, "message must be a string of at most 2000"),
        ({"context": 5}, "context must be a string"),
        ({"current_count": -1}, "current_count must be an int >= 0"),
        ({"total_count": "3"}, "total_count must be an int >= 0"),
        (
            {"current_count": 4, "total_count": 3},
            r"current_count must be <= total_count \(3\), got 4",
        ),
        ({"indent_level": 11}, "indent_level must be an int >= 0 and <= 10"),
        ({"indent_level": -1}, "indent_level must be an int >= 0 and <= 10"),
        ({"metadata": [1, 2]}, "metadata must be a mapping with string keys"),
        ({"metadata": {1: "a"}}, "metadata must be a mapping with string keys"),
        ({"metadata": {"f": {1, 2}}}, "metadata must be JSON-serialisable"),
        ({"metadata": {"nan": float("nan")}}, "metadata must be JSON-serialisable"),
        ({"metadata": {"big": "x" * 17_000}}, "metadata must be at most 16384 bytes as JSON"),
    ],
)
def test_each_bad_field_is_refused_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StatusEvent(**{"import_id": "imp-1", "status": "PROCESSING", **fields})


def test_the_wire_form_is_camel_case_and_round_trips() -> None:
    event = StatusEvent(
        "imp-1",
        "PROCESSING",
        note_id="n-3",
        message="Parsing",
        context="parse_note",
        current_count=3,
        total_count=12,
        indent_level=1,
        metadata={"attempt": 1},
    )
    wire = event.to_wire(event_id=17, timestamp=1_764_356_400_123)
    assert wire == {
        "id": 17,
        "importId": "imp-1",
        "status": "PROCESSING",
        "noteId": "n-3",
        "message": "Parsing",
        "context": "parse_note",
        "currentCount": 3,
        "totalCount": 12,
        "indentLevel": 1,
        "metadata": {"attempt": 1},
        "timestamp": 1_764_356_400_123,
    }
    assert StatusEvent.from_wire(json.loads(json.dumps(wire))) == event
    assert event.status is NoteStatus.PROCESSING


def test_from_mapping_takes_both_spellings_and_refuses_unknown_keys() -> None:
    assert StatusEvent.from_mapping({"importId": "i", "status": "FAILED", "noteId": "n"}) == (
        StatusEvent("i", NoteStatus.FAILED, note_id="n")
    )
    with pytest.raises(ValidationError, match="StatusEvent has no field 'colour'"):
        StatusEvent.from_mapping({"import_id": "i", "status": "FAILED", "colour": "red"})
    with pytest.raises(ValidationError, match="'import_id' given twice"):
        StatusEvent.from_mapping({"import_id": "i", "importId": "j", "status": "FAILED"})
    with pytest.raises(ValidationError, match="status is required"):
        StatusEvent.from_mapping({"import_id": "i"})


def test_metadata_is_a_private_copy() -> None:
    metadata = {"nested": {"n": 1}}
    event = StatusEvent("i", "PENDING", metadata=metadata)
    metadata["nested"]["n"] = 2
    assert event.metadata == {"nested": {"n": 1}}


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True),
    st.text(max_size=300),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=1_000, deadline=None)
@given(
    import_id=st.one_of(st.text(max_size=140), anything),
    status=st.one_of(st.sampled_from([s.value for s in NoteStatus]), anything),
    note_id=st.one_of(st.none(), st.text(max_size=140), anything),
    message=st.one_of(st.none(), st.text(max_size=2100), anything),
    current=st.one_of(st.none(), st.integers(min_value=-2, max_value=2**32), anything),
    total=st.one_of(st.none(), st.integers(min_value=-2, max_value=2**32), anything),
    indent=st.one_of(st.integers(min_value=-2, max_value=12), anything),
    metadata=st.one_of(
        st.none(),
        st.dictionaries(st.text(max_size=10), anything, max_size=5),
        anything,
    ),
)
def test_any_input_is_a_valid_event_or_a_validation_error(**fields: Any) -> None:
    try:
        event = StatusEvent(
            import_id=fields["import_id"],
            status=fields["status"],
            note_id=fields["note_id"],
            message=fields["message"],
            current_count=fields["current"],
            total_count=fields["total"],
            indent_level=fields["indent"],
            metadata=fields["metadata"],
        )
    except ValidationError:
        return
    # A valid event survives its wire form unchanged.
    wire = json.loads(json.dumps(event.to_wire(event_id=1, timestamp=0), allow_nan=False))
    assert StatusEvent.from_wire(wire) == event


def test_an_event_with_another_status_equals_one_built_in_full_and_checks_what_changed() -> None:
    started = StatusEvent(
        import_id="imp-1",
        status="PROCESSING",
        note_id="n-1",
        message="parse started",
        context="parse",
        indent_level=1,
    )
    done = started.with_status(NoteStatus.COMPLETED, "parse completed", {"attempt": 1})
    assert done == StatusEvent(
        import_id="imp-1",
        status="COMPLETED",
        note_id="n-1",
        message="parse completed",
        context="parse",
        indent_level=1,
        metadata={"attempt": 1},
    )
    assert started.status is NoteStatus.PROCESSING  # the first is left as it was
    with pytest.raises(ValidationError, match="metadata must be JSON-serialisable"):
        started.with_status(NoteStatus.FAILED, "x", {"error": object()})
    with pytest.raises(ValidationError, match=r"^message must be a string"):
        started.with_status(NoteStatus.FAILED, "x" * 2_001)
