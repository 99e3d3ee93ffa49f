"""bound_model: per-database copies of a model, and the status columns' own type."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from dramatiq_shared import NoteStatus
from dramatiq_shared.db import create_tables, domain_models
from dramatiq_shared.db.models import Import, Note
from dramatiq_shared.stores import NoteState, bound_model, open_database
from dramatiq_shared.stores.completions import Completion, CompletionItem

MEMORY = "sqlite:///:memory:"


def test_a_copy_is_bound_to_its_database_and_made_once() -> None:
    first, second = open_database(MEMORY), open_database(MEMORY)
    note = bound_model(Note, first)
    assert note is bound_model(Note, first) is domain_models(first).Note
    assert note is not bound_model(Note, second)
    assert issubclass(note, Note)
    assert note._meta.database is first
    assert note._meta.table_name == Note._meta.table_name
    assert Note._meta.database is not first  # the declared model is left as it was


def test_foreign_keys_point_at_the_same_databases_copies() -> None:
    database = open_database(MEMORY)
    item, completion = bound_model(CompletionItem, database), bound_model(Completion, database)
    assert item.completion.rel_model is completion
    assert bound_model(Note, database).import_ref.rel_model is bound_model(Import, database)
    assert hasattr(bound_model(Import, database), "notes")  # the declared backref name


def test_a_missing_row_raises_the_declared_models_does_not_exist(sqlite_url: str) -> None:
    database = open_database(sqlite_url)
    create_tables(database)
    with database.connection_context(), pytest.raises(Import.DoesNotExist):
        bound_model(Import, database).get_by_id("nothing")


def test_a_database_with_copies_is_still_collected() -> None:
    database = open_database(MEMORY)
    domain_models(database)
    gone = weakref.ref(database)
    del database
    gc.collect()
    assert gone() is None


def test_the_status_columns_take_every_status_an_event_has() -> None:
    assert [s.value for s in NoteState] == [s.value for s in NoteStatus]
    assert NoteState(NoteStatus.FAILED) is NoteState.FAILED


def test_models_from_two_databases_are_not_mixed_by_a_query(tmp_path: Path) -> None:
    a, b = (open_database(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db"))
    for database in (a, b):
        create_tables(database)
    with a.connection_context(), b.connection_context():
        bound_model(Import, a).create(id="only-in-a")
        assert [i.id for i in bound_model(Import, a).select()] == ["only-in-a"]
        assert list(bound_model(Import, b).select()) == []
