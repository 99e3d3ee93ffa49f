"""What an import left in the database, counted: the main job's progress and summary.

Every figure is read back from the database the workers wrote, so it is the same
whether the work ran in this process or in ``dramatiq`` worker processes. What "this
run" did (notes finished, ingredients new) is what the database stamped since the run
began, so a run of an import that ran before counts its own work, not the last one's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import peewee

from dramatiq_shared import NoteStatus, ParseStatus
from dramatiq_shared.db.models import DomainModels, domain_models
from dramatiq_shared.stores import OperationRunner, bound_model
from dramatiq_shared.stores.status_history import StatusEventRecord

from .actors import Nutrition
from .words import plural

__all__ = ["Earlier", "Summary", "earlier_run", "note_counts", "summarize", "unenriched"]

#: Most failures and patterns a summary lists.
LISTED = 5


@dataclass
class Summary:
    """One import's outcome and figures."""

    import_id: str
    outcome: str
    recipes: int
    notes: dict[str, int]
    lines: dict[str, int]
    ingredients: int
    new_ingredients: int
    enriched: int
    top_patterns: list[tuple[str, int]]
    endings: int
    failures: list[tuple[str, str]]
    retries: int = 0
    breaker_trips: int = 0
    enrichments_resent: int = 0
    elapsed: float = 0.0

    @property
    def lines_per_second(self) -> float:
        """The import's lines over the run's elapsed time."""
        return sum(self.lines.values()) / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lines_per_second": round(self.lines_per_second, 1)}

    def render(self) -> str:
        """The summary as the main job prints it."""
        lines = sum(self.lines.values())
        failed = self.notes.get(NoteStatus.FAILED.value, 0)
        rows = [
            ("recipes", f"{self.recipes} ({self.recipes - failed} done, {failed} failed)"),
            ("lines", f"{lines}: " + ", ".join(f"{n} {s}" for s, n in self.lines.items())),
            (
                "ingredients",
                f"{self.ingredients:,} ({self.new_ingredients:,} new with this run,"
                f" {self.ingredients - self.new_ingredients:,} already known)",
            ),
            ("enriched", f"{self.enriched:,} of {plural(self.ingredients, 'ingredient')}"),
            (
                "top patterns",
                "; ".join(f"{rules} ({n})" for rules, n in self.top_patterns) or "none",
            ),
            ("retries", str(self.retries)),
            ("breaker trips", str(self.breaker_trips)),
            ("failures", "none" if not self.failures else plural(failed, "note")),
            ("elapsed", f"{self.elapsed:.1f} s, {self.lines_per_second:,.0f} lines/s"),
        ]
        text = [f"Import {self.import_id}: {self.outcome}"]
        text += [f"  {name:<14}{value}" for name, value in rows]
        text += [f"    {note_id}: {reason}" for note_id, reason in self.failures]
        if self.enrichments_resent:
            resent = plural(self.enrichments_resent, "enrichment")
            text.append(
                f"  ({resent} {'was' if self.enrichments_resent == 1 else 'were'} sent again)"
            )
        return "\n".join(text)


def _grouped(query: peewee.Query) -> dict[str, int]:
    return {str(key): int(count) for key, count in query.tuples()}


def _notes_by_status(m: DomainModels, import_id: str) -> peewee.Query:
    return (
        m.Note.select(m.Note.status, peewee.fn.COUNT(m.Note.id))
        .where(m.Note.import_ref == import_id)
        .group_by(m.Note.status)
    )


def note_counts(
    runner: OperationRunner, import_id: str, since: datetime | None = None
) -> dict[str, int]:
    """How many of the import's notes have each status (set ``since`` then, when given)."""
    m = domain_models(runner.database)
    query = _notes_by_status(m, import_id)
    if since is not None:
        query = query.where(m.Note.updated_at >= since)
    return runner.run(lambda: _grouped(query))


@dataclass(frozen=True)
class Earlier:
    """An import as an earlier run left it."""

    started: datetime
    notes: dict[str, int]


def earlier_run(runner: OperationRunner, import_id: str) -> Earlier | None:
    """What an earlier run of the import left, or None when it never ran."""
    m = domain_models(runner.database)

    def read() -> Earlier | None:
        row = m.Import.get_or_none(m.Import.id == import_id)
        if row is None:
            return None
        return Earlier(row.created_at, _grouped(_notes_by_status(m, import_id)))

    return runner.run(read)


def _import_ingredients(m: DomainModels, import_id: str) -> peewee.Query:
    return (
        m.LineIngredient.select(m.LineIngredient.ingredient)
        .join(m.IngredientLine)
        .join(m.Note)
        .where(m.Note.import_ref == import_id)
        .distinct()
    )


def unenriched(runner: OperationRunner, import_id: str) -> list[int]:
    """The import's ingredients that have no nutrition yet."""
    m = domain_models(runner.database)
    query = (
        m.Ingredient.select(m.Ingredient.id)
        .join(Nutrition, peewee.JOIN.LEFT_OUTER)
        .where(
            m.Ingredient.id.in_(_import_ingredients(m, import_id)), Nutrition.ingredient.is_null()
        )
        .order_by(m.Ingredient.id)
    )
    return runner.run(lambda: [row for (row,) in query.tuples()])


def summarize(runner: OperationRunner, import_id: str, recipes: int, since: datetime) -> Summary:
    """Count what the import left in the database; new ingredients are those made ``since``."""
    m = domain_models(runner.database)
    events_table = bound_model(StatusEventRecord, runner.database)

    def read() -> Summary:
        notes = _grouped(_notes_by_status(m, import_id))
        found = _grouped(
            m.IngredientLine.select(
                m.IngredientLine.parse_status, peewee.fn.COUNT(m.IngredientLine.id)
            )
            .join(m.Note)
            .where(m.Note.import_ref == import_id)
            .group_by(m.IngredientLine.parse_status)
        )
        lines = {status.value: found.get(status.value, 0) for status in ParseStatus}
        ingredients = _import_ingredients(m, import_id)
        new = m.Ingredient.select().where(
            m.Ingredient.id.in_(ingredients), m.Ingredient.created_at >= since
        )
        enriched = Nutrition.select().where(Nutrition.ingredient.in_(ingredients))
        patterns = (
            m.PatternLine.select(
                m.PatternLine.pattern, peewee.fn.COUNT(m.PatternLine.id).alias("n")
            )
            .join(m.IngredientLine, on=m.PatternLine.line_id == m.IngredientLine.id)
            .join(m.Note)
            .where(m.Note.import_ref == import_id)
            .group_by(m.PatternLine.pattern)
            .order_by(peewee.SQL("n").desc(), m.PatternLine.pattern)
            .limit(LISTED)
        )
        counted = list(patterns.tuples())
        ids = [pattern for pattern, _ in counted]
        rules = {p.id: p.rules for p in m.LinePattern.select().where(m.LinePattern.id.in_(ids))}
        top = [(" ".join(rules[pattern]), n) for pattern, n in counted]
        events = events_table.select().where(events_table.import_id == import_id)
        endings = list(
            events.where(
                events_table.context == "import",
                events_table.status.in_([NoteStatus.COMPLETED.value, NoteStatus.FAILED.value]),
            ).order_by(events_table.sequence)
        )
        reasons = {
            e.note_id: e.message
            for e in events.where(
                events_table.context == "note",
                events_table.status == NoteStatus.FAILED.value,
            )
        }
        failed = (
            m.Note.select(m.Note.id)
            .where(m.Note.import_ref == import_id, m.Note.status == NoteStatus.FAILED.value)
            .order_by(m.Note.id)
            .limit(LISTED)
        )
        return Summary(
            import_id=import_id,
            outcome=_outcome(notes, recipes, endings[-1].status if endings else None),
            recipes=recipes,
            notes=notes,
            lines=lines,
            ingredients=ingredients.count(),
            new_ingredients=new.count(),
            enriched=enriched.count(),
            top_patterns=top,
            endings=len(endings),
            failures=[(n.id, reasons.get(n.id) or "(no reason recorded)") for n in failed],
        )

    return runner.run(read)


def _outcome(notes: Mapping[str, int], recipes: int, ending: str | None) -> str:
    finished = notes.get(NoteStatus.COMPLETED.value, 0) + notes.get(NoteStatus.FAILED.value, 0)
    if ending is not None and finished == recipes:
        return ending
    return f"INCOMPLETE ({finished} of {plural(recipes, 'note')} finished)"
