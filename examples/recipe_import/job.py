"""The main job: ``python -m examples.recipe_import [RECIPES.jsonl] [--dashboard] [--workers N]``.

Without ``REDIS_URL`` it runs on embedded defaults: a StubBroker with an in-process
worker, SQLite (``DATABASE_URL``, default ``sqlite:///dramatiq_shared.db``), status
events in memory and breakers in the process. With ``REDIS_URL`` (and ``DATABASE_URL``)
it only enqueues and follows the import, and ``dramatiq examples.recipe_import.actors``
processes do the work.

Either way it serves the nutrition service in-process (unless ``NUTRITION_URL`` names
one), shows a progress bar, waits until every message of the import is done, sends the
enrichment of any ingredient still without nutrition again, and prints a summary. Exit
status: 0 when the import COMPLETED, 1 when it FAILED, 2 on bad input (an empty file
included) or settings, or a server the settings name that does not answer (checked
before anything is sent). With ``REDIS_URL``, messages that wait 10 s
(``--no-worker-after``) while no worker has a live heartbeat are said, with the command
that starts workers, again every 10 s while it stays so.

The import id defaults to one derived from the input, so running the same file again
runs the same import again: every step is idempotent and it adds no rows. Such a run
says so before it starts, and its progress and summary count what this run did.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import (
    ConfigError,
    DatabaseConfig,
    DramatiqSharedError,
    ValidationError,
    close_workers,
    configure_logging,
    create_worker,
)
from dramatiq_shared.cli import progress_bar
from dramatiq_shared.db.models import utcnow
from dramatiq_shared.keys import Keys
from dramatiq_shared.middleware.heartbeat import live_workers
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.servers import check_environment

from .recipes import read_recipes
from .words import plural

__all__ = ["DEFAULT_RECIPES", "Progress", "WorkerWatch", "main", "run"]

#: The example's own sample recipes, its default input.
DEFAULT_RECIPES = Path(__file__).with_name("data") / "sample_recipes.jsonl"
#: Recipes per import_recipes message.
CHUNK = 100
#: Seconds between two looks at the import's progress.
POLL = 0.25
#: Most seconds the progress stays silent when it is not a live bar on a terminal.
QUIET = 5.0
#: Seconds messages wait with no live worker before the job says so (--no-worker-after).
NO_WORKER_AFTER = 10.0
#: What starts the workers, as README.rst runs them.
WORKER_COMMAND = "dramatiq examples.recipe_import.actors -p 2"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.recipe_import",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument(
        "recipes",
        nargs="?",
        type=Path,
        default=DEFAULT_RECIPES,
        metavar="RECIPES.jsonl",
        help="recipes, one JSON object a line (default: the example's 20 samples)",
    )
    parser.add_argument("--import-id", help="the import's id (default: from the input)")
    parser.add_argument("--limit", type=int, help="import only the first N recipes")
    parser.add_argument(
        "--workers", type=int, default=8, metavar="N", help="worker threads, embedded (8)"
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also serve the relay's live page, and keep it up until Ctrl-C",
    )
    parser.add_argument("--dashboard-port", type=int, default=8080, help="its port (8080)")
    parser.add_argument(
        "--no-worker-after",
        type=float,
        default=NO_WORKER_AFTER,
        metavar="SECONDS",
        help="with REDIS_URL, say so when messages wait this long and no worker is live"
        f" ({NO_WORKER_AFTER:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--log-level", default="WARNING", help="lowest level logged (WARNING)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DramatiqSharedError as error:
        print(f"recipe_import: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Import the recipes of ``args.recipes`` and print the summary; the exit status."""
    distributed = bool(os.environ.get("REDIS_URL"))
    recipes = _recipes(args, distributed)
    import_id = args.import_id or _import_id(args.recipes, recipes)
    configure_logging(args.log_level)
    check_environment()  # a server that is not there is one line, before anything is sent

    from . import actors  # noqa: PLC0415 - sets the broker up from the environment
    from .nutrition import DEFAULT_PORT, NutritionServer  # noqa: PLC0415
    from .summary import earlier_run, note_counts, summarize, unenriched  # noqa: PLC0415

    actors.prepare_database()
    stack = actors.stack
    nutrition = None
    if not os.environ.get("NUTRITION_URL"):
        # Embedded, any free port will do; the worker processes look on the default one.
        nutrition = NutritionServer(port=DEFAULT_PORT if distributed else 0).start()
        os.environ["NUTRITION_URL"] = nutrition.url
    workers = [] if distributed else [create_worker(stack.broker, worker_threads=args.workers)]
    dashboard = _serve_dashboard(stack, import_id, args.dashboard_port) if args.dashboard else None
    started, since = time.monotonic(), utcnow()
    before = _counters(stack)
    _say_if_it_ran_before(earlier_run(actors.runner, import_id), import_id, len(recipes))
    try:
        for offset in range(0, len(recipes), CHUNK):
            chunk = recipes[offset : offset + CHUNK]
            actors.import_recipes.send(import_id, chunk, offset, len(recipes))
        show = Progress(len(recipes), sys.stderr)
        watch = WorkerWatch(stack.redis, show.say, after=args.no_worker_after)
        _wait(
            stack.broker,
            lambda n: (show(note_counts(actors.runner, import_id, since), n), watch(n)),
        )
        missing = unenriched(actors.runner, import_id)
        for ingredient_id in missing:
            actors.enrich_ingredient.send(ingredient_id, import_id=import_id)
        _wait(stack.broker, lambda n: (show.finishing(n), watch(n)))
        stack.broadcaster.flush()
        summary = _settled(
            lambda: summarize(actors.runner, import_id, len(recipes), since), distributed
        )
        summary.elapsed = time.monotonic() - started
        show.done()
    finally:
        close_workers(workers)
        if nutrition is not None:
            nutrition.stop()
    after = _counters(stack)
    summary.retries, summary.breaker_trips = (a - b for a, b in zip(after, before, strict=True))
    summary.enrichments_resent = len(missing)
    print(json.dumps(summary.as_dict()) if args.json else summary.render(), flush=True)
    if dashboard is not None:
        _linger(dashboard)
    stack.broadcaster.close()
    return 0 if summary.outcome == "COMPLETED" else 1


def _recipes(args: argparse.Namespace, distributed: bool) -> list[Any]:
    """The recipes to import, once the settings and the input are good."""
    if distributed and not DatabaseConfig.url_configured():
        raise ConfigError(
            "REDIS_URL is set, so `dramatiq examples.recipe_import.actors` processes do the"
            " work, and they must share its database: set DATABASE_URL too (or unset"
            " REDIS_URL to run everything here)",
            field="DATABASE_URL",
        )
    if args.workers < 1 or (args.limit is not None and args.limit < 0):
        raise ConfigError("--workers must be >= 1 and --limit >= 0", field="workers")
    if not args.no_worker_after > 0:
        raise ConfigError.invalid("--no-worker-after", args.no_worker_after, "seconds > 0")
    recipes = read_recipes(args.recipes, limit=args.limit)
    if not recipes:  # nothing to import is a mistake to say, not an import COMPLETED
        raise ValidationError(
            f"no recipes in {args.recipes}" + (" (--limit 0)" if args.limit == 0 else ""),
            field="recipes",
        )
    return recipes


def _say_if_it_ran_before(earlier: Any, import_id: str, recipes: int) -> None:
    """Say, before a run of an import that ran before starts, what it will do again."""
    if earlier is None:
        return
    finished = earlier.notes.get("COMPLETED", 0) + earlier.notes.get("FAILED", 0)
    print(
        f"import {import_id} ran before (first on {earlier.started:%Y-%m-%d %H:%M} UTC;"
        f" {finished:,} of {plural(sum(earlier.notes.values()), 'note')} finished,"
        f" {earlier.notes.get('FAILED', 0):,} failed): this run parses its"
        f" {plural(recipes, 'recipe')} again and writes their rows over, adding none;"
        " ingredients it knows already are not fetched again",
        file=sys.stderr,
        flush=True,
    )


def _import_id(path: Path, recipes: list[Any]) -> str:
    digest = hashlib.sha256(json.dumps(recipes, sort_keys=True).encode()).hexdigest()
    return f"{path.stem[:40]}-{digest[:12]}"


def _pending(broker: dramatiq.Broker) -> int:
    """Messages enqueued, delayed or being processed on every queue, by any worker."""
    if isinstance(broker, StubBroker):
        return sum(queue.unfinished_tasks for queue in broker.queues.values())
    return sum(broker.do_qsize(queue) for queue in broker.get_declared_queues())  # type: ignore[attr-defined]


def _wait(broker: dramatiq.Broker, tick: Callable[[int], None]) -> None:
    """Until no message is pending; ``tick`` is told how many are, every POLL seconds."""
    # Twice empty in a row: a message being moved from a delay queue is in neither.
    empty = 0
    while empty < 2:
        pending = _pending(broker)
        tick(pending)
        empty = empty + 1 if pending == 0 else 0
        time.sleep(POLL)
    tick(0)


def _settled(read: Callable[[], Any], distributed: bool) -> Any:
    """The summary, once the workers' last events are in the history (a second at most)."""
    summary = read()
    deadline = time.monotonic() + (5.0 if distributed else 0.0)
    while summary.endings == 0 and time.monotonic() < deadline:
        time.sleep(POLL)
        summary = read()
    return summary


def _counters(stack: Any) -> tuple[int, int]:
    """Retries and breaker trips so far: this process's when embedded, else every worker's."""
    if stack.redis is None:
        retries = sum(n for (action, _, _), n in stack.retry.counts().items() if action == "retry")
        trips = stack.breakers.breakers.transitions.counts[("nutrition", "open")]
        return retries, trips
    from dramatiq_shared.middleware.heartbeat import live_workers  # noqa: PLC0415

    retries = sum(int(w.get("retried", 0)) for w in live_workers(stack.redis))
    events = stack.redis.xrange(Keys().breaker_events)
    trips = sum(
        1 for _, e in events if e.get(b"breaker") == b"nutrition" and e.get(b"event") == b"opened"
    )
    return retries, trips


class Progress:
    """The import's progress: a live bar on a terminal, else a line at each quarter and
    at least every ``quiet`` seconds, so that it never sits silent.

    Parameters:
      total: The import's notes.
      stream: Where it is written.
      quiet: Most seconds between two lines off a terminal. Default :data:`QUIET`.
      clock: Seconds, monotonic. Default ``time.monotonic``.
    """

    def __init__(
        self,
        total: int,
        stream: Any,
        *,
        quiet: float = QUIET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.live = stream.isatty()
        self.quiet = quiet
        self.clock = clock
        self.quarter = -1
        self.last = float("-inf")
        self.notes: dict[str, int] = {}

    def __call__(self, notes: dict[str, int], pending: int) -> None:
        """Show the notes this run finished, and the messages still pending."""
        self.notes = notes
        finished = notes.get("COMPLETED", 0) + notes.get("FAILED", 0)
        quarter = finished * 4 // self.total if self.total else 4
        self._show(self._bar(pending), changed=quarter > self.quarter)
        self.quarter = max(quarter, self.quarter)

    def finishing(self, pending: int) -> None:
        """Show the wait for the last messages (enrichments) once every note is done."""
        self._show(self._bar(pending, "still to do"), changed=False)

    def _bar(self, pending: int, what: str = "pending") -> str:
        finished = self.notes.get("COMPLETED", 0) + self.notes.get("FAILED", 0)
        failed = self.notes.get("FAILED", 0)
        return (
            f"notes {progress_bar(finished, self.total)}, {failed:,} failed;"
            f" {plural(pending, 'message')} {what}"
        )

    def _show(self, text: str, *, changed: bool) -> None:
        now = self.clock()
        if self.live:
            print(f"\r{text}\033[K", end="", file=self.stream, flush=True)
        elif changed or now - self.last >= self.quiet:
            print(text, file=self.stream, flush=True)
            self.last = now

    def say(self, text: str) -> None:
        """A line of its own, which a live bar continues below."""
        print(f"\r{text}\033[K" if self.live else text, file=self.stream, flush=True)

    def done(self) -> None:
        if self.live:
            print(file=self.stream)


class WorkerWatch:
    """Says when messages have waited ``after`` seconds and no worker has a live heartbeat,
    with what starts workers; again every ``after`` seconds while it stays so.

    Called with the messages pending at each look at the import. Embedded (no Redis) the
    job's own worker does the work, and it says nothing.

    Parameters:
      client: The Redis of the workers' heartbeats; None when embedded.
      say: Where its line goes.
      after: Seconds. Default :data:`NO_WORKER_AFTER`.
      clock: Seconds, monotonic. Default ``time.monotonic``.
    """

    def __init__(
        self,
        client: Any,
        say: Callable[[str], None],
        *,
        after: float = NO_WORKER_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.say = say
        self.after = after
        self.clock = clock
        self.unseen: float | None = None  # since when messages wait and no worker was seen
        self.looked = 0.0

    def __call__(self, pending: int) -> None:
        if self.client is None:
            return
        now = self.clock()
        if pending == 0 or self.unseen is None:
            self.unseen = None if pending == 0 else now
            self.looked = now
            return
        if now - self.looked < self.after:  # one look at the heartbeats each `after` s
            return
        self.looked = now
        if live_workers(self.client):
            self.unseen = now
            return
        self.say(
            f"no worker: {plural(pending, 'message')} pending and no worker heartbeat in"
            f" Redis for {now - self.unseen:.0f} s; start workers with `{WORKER_COMMAND}`"
            " (still waiting)"
        )


def _serve_dashboard(stack: Any, import_id: str, port: int) -> Any:
    """The relay's live page, served from this process; its URL printed with a token."""
    from dramatiq_shared.relay.app import SECRET, create_app  # noqa: PLC0415
    from dramatiq_shared.relay.sources import MemorySource, RedisSource  # noqa: PLC0415

    from .serving import ThreadedSite  # noqa: PLC0415

    if stack.redis is None:
        source: Any = MemorySource(stack.broadcaster.transport)
    else:
        import redis.asyncio as aioredis  # noqa: PLC0415

        url = os.environ["REDIS_URL"]
        source = RedisSource(aioredis.Redis.from_url(url), stack.broadcaster.history)
    app = create_app(source, secret=os.environ.get("DRAMATIQ_SHARED_SECRET"), demo=True)
    site = ThreadedSite(app, port=port).start()
    token = sign(import_id, app[SECRET], ttl=24 * 3600)
    print(f"dashboard: {site.url}/?import={import_id}&token={token}", file=sys.stderr, flush=True)
    return site


def _linger(site: Any) -> None:
    print(f"dashboard still at {site.url}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        site.stop()
