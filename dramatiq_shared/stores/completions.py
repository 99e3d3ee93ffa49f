"""Import completion counts in the database, for a completion tracker run without Redis.

:class:`~dramatiq_shared.status.completion.CompletionTracker` keeps its counts here
when given a database: each change under a lock on the import's row, so two
processes finishing the last two items at once cannot both see themselves last.
"""

from __future__ import annotations

import functools

import peewee

from .runner import RunsOperations
from .tables import Table, bound_model

__all__ = ["Completion", "CompletionCounts", "CompletionItem"]


class Completion(Table):
    """A row of ``ds_completions``: an import's items expected, done, failed, finished."""

    import_id = peewee.CharField(max_length=128, primary_key=True)
    total = peewee.IntegerField()
    done = peewee.IntegerField(default=0)
    failed = peewee.IntegerField(default=0)
    finished = peewee.BooleanField(default=False)

    class Meta:
        table_name = "ds_completions"


class CompletionItem(Table):
    """A row of ``ds_completion_items``: an item counted for its import, once."""

    completion = peewee.ForeignKeyField(Completion, column_name="import_id", on_delete="CASCADE")
    item_id = peewee.CharField(max_length=128)

    class Meta:
        table_name = "ds_completion_items"
        primary_key = peewee.CompositeKey("completion", "item_id")


class CompletionCounts(RunsOperations):
    """The counts, each change under a lock on the import's row.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    @functools.cached_property
    def _completion(self) -> type[Completion]:
        return bound_model(Completion, self.database)

    @functools.cached_property
    def _item(self) -> type[CompletionItem]:
        return bound_model(CompletionItem, self.database)

    def expect(self, import_id: str, total: int) -> tuple[int, bool]:
        """Record the import's total unless it has one: (the total stored, finished now)."""
        completion = self._completion

        def write() -> tuple[int, bool]:
            with self._runner.transaction():
                added = (
                    completion.insert(import_id=import_id, total=total, finished=total == 0)
                    .on_conflict_ignore()
                    .as_rowcount()
                    .execute()
                )
                stored = total if added else completion.get_by_id(import_id).total
                return stored, bool(added) and total == 0

        return self._runner.run(write)

    def mark(self, import_id: str, item_id: str, ok: bool) -> tuple[int, int, int, int, int]:
        """Count an item once: (outcome, done, total, failed, finished now), with outcome 1
        counted, 0 seen before, -1 import not expected, -2 beyond the total."""
        completion, item = self._completion, self._item

        def write() -> tuple[int, int, int, int, int]:
            with self._runner.transaction():
                query = completion.select().where(completion.import_id == import_id)
                if not self._runner.is_sqlite:
                    query = query.for_update()
                row = query.first()
                if row is None:
                    return -1, 0, 0, 0, 0
                added = (
                    item.insert(completion=import_id, item_id=item_id)
                    .on_conflict_ignore()
                    .as_rowcount()
                    .execute()
                )
                if not added:
                    return 0, row.done, row.total, row.failed, 0
                if row.done >= row.total:
                    raise _Beyond(row.done, row.total, row.failed)
                done, failed = row.done + 1, row.failed + (0 if ok else 1)
                finished = done == row.total and not row.finished
                completion.update(
                    done=done, failed=failed, finished=row.finished or finished
                ).where(completion.import_id == import_id).execute()
                return 1, done, row.total, failed, int(finished)

        try:
            return self._runner.run(write)
        except _Beyond as beyond:
            return -2, beyond.done, beyond.total, beyond.failed, 0


class _Beyond(Exception):  # noqa: N818 - a signal to roll back, not an error anyone sees
    def __init__(self, done: int, total: int, failed: int) -> None:
        super().__init__()
        self.done, self.total, self.failed = done, total, failed
