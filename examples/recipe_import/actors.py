"""The recipe-import pipeline's actors: ``dramatiq examples.recipe_import.actors -p 2``.

The module calls :func:`~dramatiq_shared.setup_broker` when imported, as an
application would: with ``REDIS_URL`` set its actors run on Redis (and
``DATABASE_URL``'s PostgreSQL), without it on an in-process StubBroker and SQLite.

One import flows through them like this; every step may be redelivered and run twice,
and leaves the rows of once::

    import_recipes(import_id, recipes, offset, total)   the import and its notes saved
      └─ parse_note(import_id, note_id)                 blocks and lines saved (PENDING)
           └─ parse_ingredient_line(import_id, note_id, line_id)
                  segments, ingredient, pattern, then the line's status; the last line
                  of a note finishes it, and the last note the import (CompletionTracker)
                  └─ enrich_ingredient(ingredient_id)   a new ingredient's nutrition,
                                                        behind the "nutrition" breaker

A note or line whose message fails for good is finished by ``note_failed`` /
``line_failed`` (``on_retry_exhausted``): the note FAILED with the reason, the line
ERROR, so every import still ends with exactly one COMPLETED or FAILED.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import dramatiq
import peewee

from dramatiq_shared import (
    CircuitBreakerConfig,
    DatabaseOperations,
    ErrorHandling,
    NoteData,
    NoteStatus,
    ParsedIngredientLineData,
    ParsedSegment,
    ParseStatus,
    PatternTracker,
    PermanentError,
    StatusEvent,
    TransientError,
    ValidationError,
    get_stack,
    setup_broker,
)
from dramatiq_shared.db.models import domain_models, utcnow
from dramatiq_shared.db.operations import MAX_NOTE_TITLE, MAX_RAW_TEXT, MAX_REFERENCE
from dramatiq_shared.logging import carried
from dramatiq_shared.stores import OperationRunner, Statement, slot

from .notes import split_ingredients
from .nutrition import DEFAULT_PORT
from .parser import parse_line
from .recipes import check_recipe
from .words import plural

__all__ = [
    "NUTRITION_BREAKER",
    "Nutrition",
    "enrich_ingredient",
    "import_recipes",
    "line_failed",
    "note_failed",
    "note_id_for",
    "parse_ingredient_line",
    "parse_note",
    "prepare_database",
]

#: The breaker in front of the nutrition service: open after 5 failures in a row, try
#: again after 2 seconds (doubling while the trials fail, up to 30). Database errors
#: of the actor are not the service's fault and do not count.
NUTRITION_BREAKER = CircuitBreakerConfig(
    failure_threshold=5,
    reset_timeout=2_000,
    max_reset_timeout=30_000,
    excluded_errors=("peewee.PeeweeException",),
)

broker = setup_broker(breakers={"nutrition": NUTRITION_BREAKER})
stack = get_stack(broker)
operations = DatabaseOperations(stack.database)
patterns = PatternTracker(stack.database)
# Reads go through the runner too: it lends each one a pooled connection and retries
# transient errors, as for the operations' writes.
runner = OperationRunner(stack.database)
#: The library's models, bound to the stack's database, for the reads below.
models = domain_models(stack.database)


#: The figures the nutrition service gives for an ingredient, and Nutrition keeps.
NUTRIENTS = ("kcal", "protein", "fat", "carbs")


class Nutrition(peewee.Model):
    """An ingredient's nutrition per 100 g, as the service gave it: one row each."""

    ingredient = peewee.ForeignKeyField(models.Ingredient, primary_key=True, on_delete="CASCADE")
    kcal = peewee.FloatField()
    protein = peewee.FloatField()
    fat = peewee.FloatField()
    carbs = peewee.FloatField()
    fetched_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        database = stack.database
        table_name = "example_nutrition"


# The actors' own reads and write, made into SQL once: peewee building a query anew
# for every message cost more CPU than SQLite took to run it.
_NOTE_TEXT = Statement(
    models.Note.select(models.Note.raw_text).where(models.Note.id == slot("key"))
)
_INGREDIENT_NAME = Statement(
    models.Ingredient.select(models.Ingredient.name).where(models.Ingredient.id == slot("key"))
)
_SAVE_NUTRITION = Statement(
    Nutrition.insert(
        ingredient=slot("ingredient"),
        fetched_at=slot("now"),
        **{key: slot(key) for key in NUTRIENTS},
    ).on_conflict(
        conflict_target=[Nutrition.ingredient],
        update={getattr(Nutrition, key): getattr(peewee.EXCLUDED, key) for key in NUTRIENTS},
    )
)


def prepare_database() -> None:
    """Create the library's tables and the example's own; safe to run again, and from
    the job and the workers at once."""
    from dramatiq_shared import create_tables  # noqa: PLC0415 - a set-up step, not a worker's

    create_tables(stack.database, extra=[Nutrition])


class _TablesFirst(dramatiq.Middleware):
    """The workers make the tables at boot, before ErrorHandling checks for its own, so
    they may be started before the job on a fresh database, as README shows."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        prepare_database()


broker.add_middleware(_TablesFirst(), before=ErrorHandling)


def note_id_for(import_id: str, position: int) -> str:
    """A note's id: its import and its position in the import's input."""
    return f"{import_id}:{position}"


# --- the pipeline ---------------------------------------------------------------------


@dramatiq.actor(max_attempts=5, base_delay=500)
def import_recipes(
    import_id: str, recipes: list[Any], offset: int = 0, total: int | None = None
) -> None:
    """Save the import and the notes of ``recipes`` (positions ``offset`` on), and parse them.

    A large import arrives as several messages, each with the import's ``total``.
    """
    if not isinstance(recipes, list):
        raise ValidationError.invalid("recipes", recipes, "a list of recipes")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationError.invalid("offset", offset, "an int >= 0")
    total = offset + len(recipes) if total is None else total
    if isinstance(total, bool) or not isinstance(total, int) or total < offset + len(recipes):
        raise ValidationError.invalid("total", total, f"an int >= {offset + len(recipes)}")
    operations.create_or_update_import(import_id, total_notes=total)
    stack.completion.expect(import_id, total)
    note_ids = []
    for position, recipe in enumerate(recipes, offset):
        note_id = note_id_for(import_id, position)
        title = recipe.get("title") if isinstance(recipe, Mapping) else None
        operations.create_or_update_note(
            note_id,
            NoteData(
                import_id=import_id,
                title=title[:MAX_NOTE_TITLE] if isinstance(title, str) else "",
                raw_text=_note_text(recipe),
            ),
        )
        note_ids.append(note_id)
    for note_id in note_ids:
        parse_note.send(import_id, note_id)


def _note_text(recipe: Any) -> str:
    """The recipe as the note keeps it: its JSON, or why it is not kept."""
    text = json.dumps(recipe, ensure_ascii=False, default=repr).replace("\x00", "\ufffd")
    if len(text) <= MAX_RAW_TEXT:
        return text
    return json.dumps({"refused": f"{len(text)} characters of JSON, at most {MAX_RAW_TEXT}"})


@dramatiq.actor(max_attempts=5, base_delay=500, on_retry_exhausted="note_failed")
def parse_note(import_id: str, note_id: str) -> None:
    """Split a note into blocks and lines, save them, and parse each line."""
    raw_text = _read(_NOTE_TEXT, note_id, "note_id")
    try:
        data = json.loads(raw_text) if raw_text else {}
    except ValueError:
        raise ValidationError("raw_text: the note's text is not JSON", field="raw_text") from None
    if isinstance(data, Mapping) and "refused" in data:
        raise ValidationError(f"recipe: {data['refused']}", field="recipe")
    recipe = check_recipe(data)
    blocks = split_ingredients(recipe.ingredients, recipe.groups)
    lines = [
        (
            f"{note_id}:{line.block_index}:{line.line_index}",
            ParsedIngredientLineData(
                line.block_index, line.line_index, line.text[:MAX_REFERENCE], note_id
            ),
        )
        for block in blocks
        for line in block.lines
    ]
    operations.set_note_status(note_id, NoteStatus.PROCESSING)
    operations.create_or_update_parsed_ingredient_lines(lines)
    _report(
        import_id,
        note_id,
        NoteStatus.PROCESSING,
        f"{recipe.title or note_id}: {plural(len(lines), 'line')}"
        f" in {plural(len(blocks), 'block')}",
        current_count=0,
        total_count=len(lines),
        # The dashboard lists notes by title; the relay knows only what events carry.
        metadata={"title": recipe.title[:MAX_NOTE_TITLE]} if recipe.title else None,
    )
    if not lines:
        _finish_note_if_done(import_id, note_id)
    for line_id, _ in lines:
        parse_ingredient_line.send(import_id, note_id, line_id)


@dramatiq.actor(max_attempts=5, base_delay=200, status=False, on_retry_exhausted="line_failed")
def parse_ingredient_line(import_id: str, note_id: str, line_id: str) -> None:
    """Parse a line into segments, find its ingredient, count its pattern, save its status.

    The status is written last: a line is done when its status is, so a redelivery of a
    message that died half-way does the rest. (Lifecycle events are off for this actor:
    one a line would drown the note's; its progress goes out coalesced instead.)
    """
    line = operations.parsed_ingredient_line(line_id)
    if line is None:
        raise ValidationError(f"line_id: no parsed ingredient line {line_id!r}", field="line_id")
    parsed = parse_line(line.reference)
    # Five writes, not one unit_of_work: measured on SQLite (benchmarks/README.rst), one
    # transaction for them was slower, then level once statements were built once.
    operations.replace_parsed_segments(
        line_id, [ParsedSegment(s.index, s.rule, s.type, s.value) for s in parsed.segments]
    )
    if parsed.name:
        ingredient = operations.find_or_create_ingredient(parsed.name, line.reference)
        operations.link_line_ingredients(line_id, [ingredient.id])
        if ingredient.is_new:
            enrich_ingredient.send(ingredient.id, import_id=import_id)
    if parsed.rules:
        patterns.track(parsed.rules, line_id)
    operations.set_line_status(line_id, parsed.status)
    _finish_note_if_done(import_id, note_id, parsed.status, line.reference)


def _read(statement: Statement, key: Any, field: str) -> Any:
    """The one column ``statement`` reads of the row ``key``."""
    row = runner.run(lambda: statement.first(key=key))
    if row is None:
        raise ValidationError(f"{field}: no {field.removesuffix('_id')} {key!r}", field=field)
    return row[0]


def _finish_note_if_done(
    import_id: str, note_id: str, status: str | None = None, text: str = ""
) -> None:
    """Report the note's progress; when no line is pending, finish it and count it done."""
    counts = operations.line_counts(note_id)
    total = sum(counts.values())
    pending = counts[ParseStatus.PENDING]
    if status is not None:
        _report(
            import_id,
            note_id,
            NoteStatus.PROCESSING,
            f"{status}: {text[:100]}",
            context="line",
            indent_level=2,
            current_count=total - pending,
            total_count=total,
        )
    if pending:
        return
    operations.set_note_status(note_id, NoteStatus.COMPLETED)
    progress = stack.completion.mark_done(import_id, note_id)
    if progress.counted:  # of two last lines finishing at once, one reports the note
        _report(
            import_id,
            note_id,
            NoteStatus.COMPLETED,
            f"{plural(total, 'line')}: " + ", ".join(f"{n} {s.value}" for s, n in counts.items()),
            current_count=total,
            total_count=total,
            metadata={s.value: n for s, n in counts.items()},
        )


@dramatiq.actor(max_attempts=10, base_delay=1_000)
def note_failed(message: dict[str, Any], info: dict[str, Any]) -> None:
    """A note's message failed for good: the note is FAILED, with the reason, and counted."""
    import_id, note_id = _carried(message, "import_id", "note_id")
    kind = str(info.get("error_type"))
    operations.set_note_status(note_id, NoteStatus.FAILED)
    progress = stack.completion.mark_done(import_id, note_id, ok=False)
    if progress.counted:
        _report(
            import_id,
            note_id,
            NoteStatus.FAILED,
            f"{kind.rpartition('.')[2]}: {info.get('error_message')}"[:2_000],
            metadata={k: info[k] for k in ("attempt", "reason", "error_type") if k in info},
        )


def _report(
    import_id: str,
    note_id: str,
    status: NoteStatus,
    message: str,
    *,
    context: str = "note",
    indent_level: int = 1,
    **fields: Any,
) -> None:
    """Publish an event of a note (or, with ``context="line"``, of one of its lines)."""
    stack.broadcaster.publish(
        StatusEvent(
            import_id,
            status,
            note_id=note_id,
            message=message,
            context=context,
            indent_level=indent_level,
            **fields,
        )
    )


@dramatiq.actor(max_attempts=10, base_delay=1_000)
def line_failed(message: dict[str, Any], info: dict[str, Any]) -> None:
    """A line's message failed for good: the line is ERROR, and its note may be finished."""
    import_id, note_id, line_id = _carried(message, "import_id", "note_id", "line_id")
    operations.set_line_status(line_id, ParseStatus.ERROR)
    _finish_note_if_done(import_id, note_id, ParseStatus.ERROR.value, str(info.get("reason")))


def _carried(message: Mapping[str, Any], *names: str) -> tuple[Any, ...]:
    """Arguments of the failed message, found by name as the middleware finds them."""
    failed = dramatiq.Message(**message)
    actor = broker.actors.get(failed.actor_name)
    values = tuple(carried(failed, name, actor) for name in names)
    for name, value in zip(names, values, strict=True):
        if value is None:
            raise ValidationError(f"message: the failed message has no {name}", field=name)
    return values


# --- enrichment, through the breaker --------------------------------------------------


class NutritionUnavailableError(TransientError):
    """The nutrition service did not answer, or answered with a server error."""


@dramatiq.actor(
    queue_name="enrichment",
    breaker="nutrition",
    max_attempts=5,
    base_delay=200,
    max_delay=5_000,
    status_context="enrich",
)
def enrich_ingredient(ingredient_id: int, import_id: str | None = None) -> None:
    """Fetch an ingredient's nutrition and keep it; ``import_id`` only labels its events.

    The actor's breaker counts the service's failures; while it is open, messages wait
    for it without using their attempts.
    """
    found = fetch_nutrition(_read(_INGREDIENT_NAME, ingredient_id, "ingredient_id"))
    values = {key: float(found[key]) for key in NUTRIENTS}
    runner.run(lambda: _SAVE_NUTRITION.execute(ingredient=ingredient_id, now=utcnow(), **values))


def fetch_nutrition(name: str) -> dict[str, Any]:
    """Ask the service (``NUTRITION_URL``) for ``name``'s figures.

    Raises:
      NutritionUnavailableError: When it cannot be reached or answers 5xx (retried).
      PermanentError: When it refuses the request (4xx) or answers nonsense.
    """
    base = os.environ.get("NUTRITION_URL") or f"http://127.0.0.1:{DEFAULT_PORT}"
    url = f"{base}/nutrition?{urllib.parse.urlencode({'name': name})}"
    try:
        status, raw = _get_over_kept_connection(base, url[len(base) :])
        body = json.loads(raw) if status < 400 else None
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise NutritionUnavailableError(f"{url}: {error}") from None
    if status >= 500:
        raise NutritionUnavailableError(f"{url}: HTTP {status}")
    if status >= 400:
        raise PermanentError(f"{url}: HTTP {status}")
    if not isinstance(body, Mapping) or not all(
        isinstance(body.get(key), (int, float)) for key in NUTRIENTS
    ):
        raise PermanentError(f"{url}: unexpected answer {str(body)[:200]}")
    return dict(body)


class _KeptConnections(threading.local):
    # A connection per thread and service, kept alive between calls as a requests
    # Session would: a new TCP connection per ingredient cost the job (client and
    # in-process server) more CPU than the rest of enriching it.
    def __init__(self) -> None:
        self.by_base: dict[str, http.client.HTTPConnection] = {}


_KEPT = _KeptConnections()


def _get_over_kept_connection(base: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` from ``base``: its status and body. Once more on a fresh connection
    when the kept one turns out closed, as a server may close an idle one at any time."""
    parts = urllib.parse.urlsplit(base)
    kept = _KEPT.by_base.pop(base, None)
    if kept is not None:
        try:
            return _exchange(kept, base, parts.path + target)
        except (ConnectionError, http.client.BadStatusLine):
            pass
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return _exchange(kind(parts.netloc, timeout=5), base, parts.path + target)


def _exchange(connection: http.client.HTTPConnection, base: str, path: str) -> tuple[int, bytes]:
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    except BaseException:
        connection.close()
        raise
    if not response.will_close:
        _KEPT.by_base[base] = connection
    return response.status, body
