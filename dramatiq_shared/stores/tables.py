"""What every table of the library shares, and how a model is bound to one database.

A model class is declared once, bound to no database (the domain's, in
:mod:`dramatiq_shared.db.models`, to its compatibility proxy). Each store and
operations object works with :func:`bound_model` copies of it: subclasses made for
the one database it was given, with their foreign keys pointing at the copies of
their parents for that database. Nothing is re-bound afterwards, so objects on two
databases work side by side in one process, from any number of threads; peewee's
``bind_ctx`` would rebind the shared class for every thread at once.
"""

from __future__ import annotations

import copy
import enum
import json
import threading
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import peewee

__all__ = ["JSONField", "NoteState", "Table", "bound_model", "utcnow"]

_M = TypeVar("_M", bound=peewee.Model)

# Where a database keeps its copies, as peewee's own Database.Model keeps its base
# model on the database: they hold the database, so a weak-key map of database to
# copies would keep every database alive; on the database they go when it does.
_COPIES = "_dramatiq_shared_models"
_copying = threading.Lock()


class NoteState(str, enum.Enum):
    """Where a note, a message or an import stands, as the status columns store it.

    The same values as :class:`~dramatiq_shared.status.events.NoteStatus`, the event
    vocabulary, so either (or the plain name) may be given wherever a state is taken.
    """

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


def utcnow() -> datetime:
    """The current UTC time, naive, as every timestamp column stores it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class JSONField(peewee.TextField):
    """JSON kept as text, the same on SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class Table(peewee.Model):
    """Base of the library's models: table names spelled out, bound to no database."""

    class Meta:
        legacy_table_names = False


def bound_model(model: type[_M], database: peewee.Database) -> type[_M]:
    """The copy of ``model`` bound to ``database``, made on first use and kept.

    The copy is a subclass, so it is a ``model`` to type checks, and its
    ``DoesNotExist`` is ``model.DoesNotExist``'s. Its foreign keys point at the
    copies of their models for the same database, made along with it.
    """
    found = getattr(database, _COPIES, {}).get(model)
    if found is None:
        with _copying:
            if not hasattr(database, _COPIES):
                setattr(database, _COPIES, {})
            found = _copy(model, database, getattr(database, _COPIES))
    return cast("type[_M]", found)


def _copy(
    model: type[peewee.Model],
    database: peewee.Database,
    copies: dict[type[peewee.Model], type[peewee.Model]],
) -> type[peewee.Model]:
    if model in copies:
        return copies[model]
    meta = type("Meta", (), {"database": database, "table_name": model._meta.table_name})
    attrs: dict[str, Any] = {"Meta": meta, "__module__": model.__module__}
    for field in model._meta.refs:
        # Peewee copies inherited fields the same way; only the target changes.
        repointed = copy.deepcopy(field)
        if field.rel_model is not model:  # a self-reference is re-aimed by binding
            repointed.rel_model = _copy(field.rel_model, database, copies)
        repointed.rel_field = field.rel_field.name
        repointed.declared_backref = field.backref  # binding resolves it again
        attrs[field.name] = repointed
    parent: Any = model  # the stubs know no DoesNotExist on a model class
    bound: Any = type(model.__name__, (model,), attrs)  # ModelBase, as model's own
    bound.DoesNotExist = type(
        parent.DoesNotExist.__name__, (parent.DoesNotExist,), {"__module__": model.__module__}
    )
    copies[model] = bound
    return cast("type[peewee.Model]", bound)
