"""DatabaseOperations on SQLite and PostgreSQL: idempotent writes, whole refusals of bad input."""

from __future__ import annotations

import sqlite3
from typing import Any

import peewee
import pytest

from dramatiq_shared import DatabaseConfig, NoteStatus, ValidationError
from dramatiq_shared.db import (
    DatabaseOperations,
    NoteData,
    ParsedIngredientLineData,
    ParsedSegment,
    ParseStatus,
    PatternTracker,
    normalize_ingredient_name,
)
from dramatiq_shared.db.models import (
    Import,
    Ingredient,
    IngredientLine,
    LineIngredient,
    Note,
    Segment,
)


@pytest.fixture
def ops(database: peewee.Database) -> DatabaseOperations:
    operations = DatabaseOperations(database)
    operations.create_or_update_import("imp-1", total_notes=2)
    operations.create_or_update_note("note-1", NoteData(import_id="imp-1", title="Soup"))
    operations.create_or_update_note("note-2", {"import_id": "imp-1", "title": "Bread"})
    return operations


def rows(model: type[peewee.Model]) -> list[dict[str, Any]]:
    """Every row of a table, in a stable order, as plain dicts."""
    return list(model.select().order_by(*model._meta.sorted_fields[:2]).dicts())


def line(block: int = 0, index: int = 0, **changes: Any) -> ParsedIngredientLineData:
    fields: dict[str, Any] = {
        "block_index": block,
        "line_index": index,
        "reference": f"{index + 1} cup flour",
        "note_id": "note-1",
        "parse_status": "CORRECT",
        **changes,
    }
    return ParsedIngredientLineData(**fields)


def segments(*values: str) -> list[ParsedSegment]:
    return [ParsedSegment(n, f"rule{n}", "amount", v) for n, v in enumerate(values)]


# --- imports and notes ---------------------------------------------------------


def test_imports_and_notes_upsert_idempotently(ops: DatabaseOperations) -> None:
    before = rows(Note), rows(Import)
    ops.create_or_update_import("imp-1", total_notes=2)
    ops.create_or_update_note("note-1", NoteData(import_id="imp-1", title="Soup"))
    assert (rows(Note), rows(Import)) == before

    ops.create_or_update_note("note-1", NoteData(import_id="imp-1", title="Soup", status="FAILED"))
    note = Note.get_by_id("note-1")
    assert note.status == "FAILED"
    assert note.updated_at > note.created_at


def test_a_note_of_an_unknown_import_is_refused(ops: DatabaseOperations) -> None:
    with pytest.raises(ValidationError, match="import_id: no import 'nope'"):
        ops.create_or_update_note("note-9", NoteData(import_id="nope"))
    assert Note.select().count() == 2


def test_a_note_status_is_set_idempotently(ops: DatabaseOperations) -> None:
    assert ops.set_note_status("note-1", "PROCESSING")
    once = rows(Note)
    assert ops.set_note_status("note-1", NoteStatus.PROCESSING)
    assert rows(Note) == once  # updated_at included: the same status is no write
    assert [n["status"] for n in once] == ["PROCESSING", "PENDING"]
    assert not ops.set_note_status("note-9", "COMPLETED")
    with pytest.raises(ValidationError, match="status must be one of PENDING, PROCESSING"):
        ops.set_note_status("note-1", "DONE")


def test_a_line_status_is_set_idempotently_and_nothing_else_changes(
    ops: DatabaseOperations,
) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line(0, 0, parse_status="PENDING"))
    (before,) = rows(IngredientLine)
    assert ops.set_line_status("l-1", "ERROR")
    (after,) = rows(IngredientLine)
    assert after["parse_status"] == "ERROR"
    changed = {key for key in before if before[key] != after[key]}
    assert changed <= {"parse_status", "updated_at"}
    assert ops.set_line_status("l-1", ParseStatus.ERROR)
    assert rows(IngredientLine) == [after]  # the same status is no write
    assert not ops.set_line_status("l-9", "CORRECT")
    with pytest.raises(ValidationError, match="status must be one of PENDING, CORRECT"):
        ops.set_line_status("l-1", "DONE")


def test_a_line_is_read_back_as_it_was_written(ops: DatabaseOperations) -> None:
    written = line(2, 3, reference="1 cup rice", parse_status="CORRECT")
    ops.create_or_update_parsed_ingredient_line("l-1", written)
    assert ops.parsed_ingredient_line("l-1") == written
    assert ops.parsed_ingredient_line("l-9") is None
    with pytest.raises(ValidationError, match="line_id"):
        ops.parsed_ingredient_line("")


def test_line_counts_count_each_parse_status(ops: DatabaseOperations) -> None:
    assert ops.line_counts("note-1") == dict.fromkeys(ParseStatus, 0)
    ops.create_or_update_parsed_ingredient_lines(
        [
            ("l-1", line(0, 0)),
            ("l-2", line(0, 1, parse_status="PENDING")),
            ("l-3", line(1, 0, parse_status="ERROR")),
            ("l-4", line(1, 1)),
        ]
    )
    assert ops.line_counts("note-1") == {
        ParseStatus.PENDING: 1,
        ParseStatus.CORRECT: 2,
        ParseStatus.INCORRECT: 0,
        ParseStatus.ERROR: 1,
    }


# --- parsed ingredient lines -----------------------------------------------------


def test_a_line_written_twice_leaves_the_rows_of_once(ops: DatabaseOperations) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    once = rows(IngredientLine)
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    assert rows(IngredientLine) == once  # updated_at included: an identical write is a no-op
    assert once[0] | {"created_at": None, "updated_at": None} == {
        "id": "l-1",
        "note": "note-1",
        "block_index": 0,
        "line_index": 0,
        "reference": "1 cup flour",
        "parse_status": "CORRECT",
        "created_at": None,
        "updated_at": None,
    }


def test_a_changed_line_is_updated_in_place(ops: DatabaseOperations) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    ops.create_or_update_parsed_ingredient_line(
        "l-1", line(reference="2 cups flour", parse_status="INCORRECT")
    )
    (row,) = rows(IngredientLine)
    assert (row["reference"], row["parse_status"]) == ("2 cups flour", "INCORRECT")
    assert row["updated_at"] >= row["created_at"]


def test_a_line_may_be_given_as_a_mapping(ops: DatabaseOperations) -> None:
    data = {"block_index": 1, "line_index": 2, "reference": "salt", "note_id": "note-2"}
    ops.create_or_update_parsed_ingredient_line("l-1", data)
    assert IngredientLine.get_by_id("l-1").parse_status == "PENDING"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"block_index": -1}, "block_index must be an int >= 0"),
        ({"line_index": "3"}, "line_index must be an int >= 0"),
        ({"line_index": 2**31}, "line_index must be an int >= 0 and <= 2147483647"),
        ({"block_index": True}, "block_index must be an int >= 0"),
        ({"reference": ""}, "reference must be a non-blank string"),
        ({"reference": "   "}, "reference must be a non-blank string"),
        ({"reference": "x" * 2001}, "reference must be a non-blank string of at most 2000"),
        ({"reference": "nul\x00byte"}, "without NUL"),
        ({"reference": 42}, "reference must be a non-blank string"),
        ({"note_id": ""}, "note_id must be a non-blank string of at most 128"),
        ({"note_id": None}, "note_id must be"),
        ({"parse_status": "MAYBE"}, "parse_status must be one of PENDING, CORRECT, INCORRECT"),
    ],
)
def test_bad_line_data_is_refused_naming_the_field(
    ops: DatabaseOperations, changes: dict[str, Any], field: str
) -> None:
    fields = {"block_index": 0, "line_index": 0, "reference": "a", "note_id": "note-1", **changes}
    with pytest.raises(ValidationError, match=field):
        ops.create_or_update_parsed_ingredient_line("l-1", fields)
    assert IngredientLine.select().count() == 0


@pytest.mark.parametrize("line_id", ["", "  ", None, 7, "x" * 129])
def test_a_bad_line_id_is_refused(ops: DatabaseOperations, line_id: Any) -> None:
    with pytest.raises(ValidationError, match=r"line_id must be a non-blank string"):
        ops.create_or_update_parsed_ingredient_line(line_id, line())


def test_an_unknown_field_in_a_mapping_is_refused(ops: DatabaseOperations) -> None:
    with pytest.raises(
        ValidationError, match=r"lines\[0\].data: .*unexpected keyword argument 'colour'"
    ):
        ops.create_or_update_parsed_ingredient_line(
            "l-1",
            {"block_index": 0, "line_index": 0, "reference": "a", "note_id": "note-1", "colour": 1},
        )


def test_a_line_of_an_unknown_note_is_refused(ops: DatabaseOperations) -> None:
    with pytest.raises(ValidationError, match=r"lines\[0\].data.note_id: no note 'ghost'"):
        ops.create_or_update_parsed_ingredient_line("l-1", line(note_id="ghost"))
    assert IngredientLine.select().count() == 0


def test_a_position_held_by_another_line_is_refused(ops: DatabaseOperations) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line(2, 3))
    with pytest.raises(
        ValidationError,
        match="note 'note-1' already has line 'l-1' at block_index 2, line_index 3",
    ):
        ops.create_or_update_parsed_ingredient_line("l-2", line(2, 3))
    assert [r["id"] for r in rows(IngredientLine)] == ["l-1"]


def test_many_lines_are_written_in_batches_and_idempotently(database: peewee.Database) -> None:
    ops = DatabaseOperations(database, config=DatabaseConfig(batch_size=100))
    ops.create_or_update_note("note-1", NoteData())
    many = {f"l-{n:04}": line(n // 50, n % 50, reference=f"line {n}") for n in range(1234)}
    assert ops.create_or_update_parsed_ingredient_lines(many) == 1234
    once = rows(IngredientLine)
    ops.create_or_update_parsed_ingredient_lines(many)
    assert rows(IngredientLine) == once
    assert len(once) == 1234


def test_a_batch_with_one_bad_line_writes_nothing(ops: DatabaseOperations) -> None:
    many = [(f"l-{n}", line(0, n)) for n in range(300)]
    many[150] = (
        "l-150",
        {"block_index": 0, "line_index": -4, "reference": "x", "note_id": "note-1"},
    )
    with pytest.raises(ValidationError, match=r"lines\[150\].data.line_index must be an int >= 0"):
        ops.create_or_update_parsed_ingredient_lines(many)
    assert IngredientLine.select().count() == 0


def test_a_batch_with_an_unknown_note_names_its_line_and_writes_nothing(
    database: peewee.Database,
) -> None:
    ops = DatabaseOperations(database, config=DatabaseConfig(batch_size=50))
    ops.create_or_update_note("note-1", NoteData())
    many = [(f"l-{n}", line(0, n)) for n in range(120)]
    many[110] = ("l-110", line(0, 110, note_id="ghost"))
    with pytest.raises(ValidationError, match=r"lines\[110\].data.note_id: no note 'ghost'"):
        ops.create_or_update_parsed_ingredient_lines(many)
    assert IngredientLine.select().count() == 0  # the first two chunks were rolled back


def test_a_batch_refuses_a_line_id_or_position_given_twice(ops: DatabaseOperations) -> None:
    with pytest.raises(ValidationError, match="line_id 'l-1' appears twice"):
        ops.create_or_update_parsed_ingredient_lines([("l-1", line(0, 0)), ("l-1", line(0, 1))])
    with pytest.raises(ValidationError, match=r"\('note-1', 0, 0\) appears twice"):
        ops.create_or_update_parsed_ingredient_lines([("l-1", line(0, 0)), ("l-2", line(0, 0))])
    assert IngredientLine.select().count() == 0


# --- segments -----------------------------------------------------------------------


def stored_segments(line_id: str) -> list[tuple[int, str, str, str]]:
    query = Segment.select().where(Segment.line == line_id).order_by(Segment.position)
    return [(s.position, s.rule, s.type, s.value) for s in query]


def test_segments_replaced_twice_leave_the_rows_of_once(ops: DatabaseOperations) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    assert ops.replace_parsed_segments("l-1", segments("1", "cup", "flour")) == 3
    once = stored_segments("l-1")
    ops.replace_parsed_segments("l-1", segments("1", "cup", "flour"))
    assert (
        stored_segments("l-1")
        == once
        == [
            (0, "rule0", "amount", "1"),
            (1, "rule1", "amount", "cup"),
            (2, "rule2", "amount", "flour"),
        ]
    )
    ops.replace_parsed_segments("l-1", [{"index": 5, "rule": "r", "type": "t", "value": ""}])
    assert stored_segments("l-1") == [(5, "r", "t", "")]
    ops.replace_parsed_segments("l-1", [])
    assert stored_segments("l-1") == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"index": -1, "rule": "r", "type": "t", "value": "v"},
            r"\[7\]\.index must be an int >= 0",
        ),
        ({"index": 1, "rule": "r", "type": "t", "value": "v"}, r"index 1 appears twice"),
        ({"index": 70, "rule": "", "type": "t", "value": "v"}, r"\[7\]\.rule must be a non-blank"),
        ({"index": 70, "rule": "r", "type": " ", "value": "v"}, r"\[7\]\.type must be a non-blank"),
        ({"index": 70, "rule": "r", "type": "t", "value": 3}, r"\[7\]\.value must be a string"),
        ({"index": 70, "rule": "r", "type": "t", "value": "v" * 1001}, r"at most 1000 characters"),
        ("not a segment", r"\[7\] must be a ParsedSegment or a mapping of its fields"),
    ],
)
def test_a_failing_replace_leaves_the_previous_segments_untouched(
    ops: DatabaseOperations, bad: Any, message: str
) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    ops.replace_parsed_segments("l-1", segments("1", "cup", "flour"))
    before = stored_segments("l-1")
    replacement: list[Any] = segments(*"abcdefghij")
    replacement[7] = bad
    with pytest.raises(ValidationError, match=message):
        ops.replace_parsed_segments("l-1", replacement)
    assert stored_segments("l-1") == before


def test_segments_of_an_unknown_line_are_refused(ops: DatabaseOperations) -> None:
    with pytest.raises(ValidationError, match="line_id: no parsed ingredient line 'ghost'"):
        ops.replace_parsed_segments("ghost", segments("1"))
    with pytest.raises(ValidationError, match="no parsed ingredient line 'ghost'"):
        ops.replace_parsed_segments("ghost", [])
    assert Segment.select().count() == 0


def test_segments_are_deleted_with_their_line(ops: DatabaseOperations) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    ops.replace_parsed_segments("l-1", segments("1", "cup"))
    IngredientLine.delete_by_id("l-1")
    assert Segment.select().count() == 0


def test_segments_of_many_lines_in_one_go(database: peewee.Database) -> None:
    ops = DatabaseOperations(database, config=DatabaseConfig(batch_size=64))
    ops.create_or_update_note("note-1", NoteData())
    ops.create_or_update_parsed_ingredient_lines({f"l-{n}": line(0, n) for n in range(200)})
    wanted = {f"l-{n}": segments(*(["x"] * (n % 4))) for n in range(200)}
    assert ops.replace_parsed_segments_many(wanted) == {k: len(v) for k, v in wanted.items()}
    assert Segment.select().count() == sum(n % 4 for n in range(200))
    wanted["l-3"] = segments("only")
    wanted["l-199"] = [
        ParsedSegment(0, "r", "t", "v"),
        {"index": 0, "rule": "r", "type": "t", "value": "w"},
    ]
    with pytest.raises(ValidationError, match=r"segments\['l-199'\] index 0 appears twice"):
        ops.replace_parsed_segments_many(wanted)
    assert stored_segments("l-3") == [(n, f"rule{n}", "amount", "x") for n in range(3)]


# --- ingredients -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  Plain   Flour ", "plain flour"),
        ("\ufeffSugar", "sugar"),
        ("brown\u00a0sugar", "brown sugar"),
        ("crème\u200b fraîche", "crème fraîche"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),
        ("ﬁlo pastry", "filo pastry"),
        ("\tolive\noil\r\n", "olive oil"),
        ("豆腐", "豆腐"),
    ],
)
def test_ingredient_names_are_normalised(raw: str, normalized: str) -> None:
    assert normalize_ingredient_name(raw) == normalized


def test_find_or_create_ingredient_is_new_once(ops: DatabaseOperations) -> None:
    first = ops.find_or_create_ingredient("Plain Flour", "1 cup plain flour")
    again = ops.find_or_create_ingredient("  plain   FLOUR", "2 cups")
    assert (first.is_new, again.is_new) == (True, False)
    assert (first.id, first.name) == (again.id, again.name) == (first.id, "plain flour")
    (row,) = rows(Ingredient)
    assert row["reference"] == "1 cup plain flour"  # the first sighting is kept


def test_many_ingredients_in_one_go(database: peewee.Database) -> None:
    ops = DatabaseOperations(database, config=DatabaseConfig(batch_size=7))
    ops.find_or_create_ingredient("salt")
    names = [f"spice {n}" for n in range(30)] + ["Salt", ("SPICE 3", "ref"), "spice 3"]
    refs = ops.find_or_create_ingredients(names)
    assert [r.name for r in refs] == [
        *(f"spice {n}" for n in range(30)),
        "salt",
        "spice 3",
        "spice 3",
    ]
    assert [r.is_new for r in refs] == [True] * 30 + [False, False, False]
    assert refs[3].id == refs[31].id == refs[32].id
    assert Ingredient.select().count() == 31
    assert ops.find_or_create_ingredients(names) == [type(r)(r.id, r.name, False) for r in refs]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", r"ingredients\[0\].name must be a non-blank string"),
        ("\u200b\ufeff", r"ingredients\[0\].name \(normalised\) must be a non-blank string"),
        (None, r"ingredients\[0\].name must be"),
        ("x" * 256, r"name \(normalised\) must be a non-blank string of at most 255"),
    ],
)
def test_a_bad_ingredient_name_is_refused(ops: DatabaseOperations, name: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ops.find_or_create_ingredient(name)
    assert Ingredient.select().count() == 0


def test_line_ingredient_links_are_idempotent(ops: DatabaseOperations) -> None:
    ops.create_or_update_parsed_ingredient_line("l-1", line())
    flour, salt = ops.find_or_create_ingredients(["flour", "salt"])
    ops.link_line_ingredients("l-1", [flour.id, salt.id])
    ops.link_line_ingredients("l-1", [salt.id, flour.id, flour.id])
    assert LineIngredient.select().count() == 2
    with pytest.raises(ValidationError, match=f"ingredient_ids: no ingredient {salt.id + 99}"):
        ops.link_line_ingredients("l-1", [flour.id, salt.id + 99])
    with pytest.raises(ValidationError, match="line_id: no parsed ingredient line 'ghost'"):
        ops.link_line_ingredients("ghost", [flour.id])
    assert LineIngredient.select().count() == 2


# --- units of work ---------------------------------------------------------------------


def test_a_unit_of_work_commits_a_lines_writes_together_with_another_objects(
    ops: DatabaseOperations, database: peewee.Database
) -> None:
    patterns = PatternTracker(database)
    ops.create_or_update_parsed_ingredient_line("line-1", line())

    def save() -> Any:
        ops.replace_parsed_segments("line-1", segments("1", "cup"))
        flour = ops.find_or_create_ingredient("Flour", "1 cup flour")
        ops.link_line_ingredients("line-1", [flour.id])
        patterns.track(["amount", "unit", "ingredient"], "line-1")
        ops.set_line_status("line-1", ParseStatus.INCORRECT)
        return flour

    flour = ops.unit_of_work(save)
    assert flour.is_new
    assert [r["value"] for r in rows(Segment)] == ["1", "cup"]
    assert [(r["line"], r["ingredient"]) for r in rows(LineIngredient)] == [("line-1", flour.id)]
    assert [r["parse_status"] for r in rows(IngredientLine)] == ["INCORRECT"]
    again = ops.unit_of_work(save)  # run again: the same rows
    assert (again.id, again.is_new) == (flour.id, False)
    assert len(rows(Segment)) == 2


def test_a_unit_of_work_that_fails_keeps_none_of_its_writes(
    ops: DatabaseOperations, database: peewee.Database
) -> None:
    ops.create_or_update_parsed_ingredient_line("line-1", line())

    def save() -> None:
        ops.replace_parsed_segments("line-1", segments("2"))
        ops.find_or_create_ingredient("Sugar")
        # Refused by the database, then explained: the unit's transaction stays usable
        # for the explanation's reads (on PostgreSQL a failed statement aborts it).
        ops.link_line_ingredients("line-404", [1])

    with pytest.raises(ValidationError, match="line_id: no parsed ingredient line 'line-404'"):
        ops.unit_of_work(save)
    assert rows(Segment) == []
    assert rows(Ingredient) == []


def test_a_unit_of_work_is_retried_whole_on_a_transient_error(ops: DatabaseOperations) -> None:
    calls = []

    def save() -> None:
        calls.append(1)
        ops.find_or_create_ingredient("Salt")
        if len(calls) == 1:  # SQLite's word for a busy writer, transient on any database
            raise sqlite3.OperationalError("database is locked")

    ops.unit_of_work(save)
    assert len(calls) == 2
    assert [r["name"] for r in rows(Ingredient)] == ["salt"]  # the first try left nothing
