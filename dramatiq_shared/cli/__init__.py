"""The ``dramatiq-shared`` command.

Each subcommand is one function taking the parsed arguments and returning an exit
status. A user mistake (a bad setting, an unknown id, a server that does not answer)
is one line on stderr and exit status 2, never a traceback: each command connects
once to the servers it needs before anything else (:mod:`dramatiq_shared.servers`),
and the line names the option or variable that gave the server, its URL with the
password hidden, and the cause. ``status`` answers for an import, so an unknown one
is exit status 1 (``no such import``), like one that failed; ``health`` reports a
server that is down, and waiting work no worker takes, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

import peewee
import redis
from dramatiq.brokers.redis import RedisBroker
from prometheus_client import start_http_server

from .. import __version__
from .._redis import text
from ..config import CircuitBreakerConfig, DatabaseConfig, RetryConfig, StatusConfig
from ..db.models import MODELS, create_tables
from ..errors import ConfigError, DramatiqSharedError
from ..metrics import registry as metrics_registry
from ..middleware.heartbeat import live_workers, queue_depths, stored_queues
from ..relay import __main__ as relay_main
from ..relay.auth import sign
from ..servers import first_line, unreachable
from ..stores.connection import open_database
from . import dead_letters
from ._common import (
    KEYS,
    database,
    database_config,
    database_setting,
    positive,
    redis_client,
    redis_setting,
)

__all__ = ["build_parser", "main", "progress_bar"]

#: Seconds ``status`` waits, when following, for an import it does not know to appear.
APPEARS = 5.0


def _show_config(args: argparse.Namespace) -> int:
    configs = {
        "retry": RetryConfig.from_env(),
        "circuit_breaker": CircuitBreakerConfig.from_env(),
        "database": DatabaseConfig.from_env(),
        "status": StatusConfig.from_env(),
    }
    print(json.dumps({name: config.as_dict() for name, config in configs.items()}, indent=2))
    return 0


def _init_db(args: argparse.Namespace) -> int:
    config = database_config(args)
    create_tables(database(args))
    print(f"{len(MODELS)} tables ready in {config.redacted_url}")
    return 0


def _depths(client: redis.Redis, workers: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    broker = RedisBroker(client=client)  # type: ignore[no-untyped-call]
    queues = sorted({queue for worker in workers for queue in worker["queues"]})
    return queue_depths(broker, queues)


def _waiting(client: redis.Redis) -> dict[str, dict[str, int]]:
    """The depths of the queues holding messages that are ready or delayed."""
    broker = RedisBroker(client=client)  # type: ignore[no-untyped-call]
    depths = queue_depths(broker, stored_queues(client, broker.namespace))
    return {name: depth for name, depth in depths.items() if depth["ready"] + depth["delayed"]}


def _workers(args: argparse.Namespace) -> int:
    client = redis_client(args)
    workers = live_workers(client, KEYS.namespace)
    if not workers:
        print("no live workers")
    else:
        print(
            f"{'HOST':<20} {'PID':>7} {'THREADS':>7} {'IN FLIGHT':>9} {'PROCESSED':>9}"
            f" {'FAILED':>6} {'RETRIED':>7}  QUEUES"
        )
        for w in workers:
            print(
                f"{w['host'][:20]:<20} {w['pid']:>7} {w['threads']:>7} {w['in_flight']:>9}"
                f" {w['processed']:>9} {w['failed']:>6} {w['retried']:>7}  {','.join(w['queues'])}"
            )
    for queue, depth in _depths(client, workers).items():
        ready, delayed, dead = depth["ready"], depth["delayed"], depth["dead"]
        print(f"queue {queue}: {ready} ready, {delayed} delayed, {dead} dead")
    return 0


def _health(args: argparse.Namespace) -> int:
    checks: dict[str, str] = {}
    workers: list[dict[str, Any]] = []
    client = redis_client(args, check=False)  # down is an answer here, not an error
    try:
        client.ping()
        checks["redis"] = "ok"
        workers = live_workers(client, KEYS.namespace)
        checks["workers"] = f"{len(workers)} live"
        depths = _depths(client, workers)
        if not workers and (waiting := _waiting(client)):
            held = ", ".join(f"{q} {d['ready'] + d['delayed']}" for q, d in waiting.items())
            checks["workers"] = f"down: 0 live while queues hold messages ({held}); start workers"
            depths = waiting
        for queue, depth in depths.items():
            checks[f"queue {queue}"] = ", ".join(f"{n} {kind}" for kind, n in depth.items())
        for key in client.scan_iter(match=KEYS.breaker_pattern()):
            state = client.hget(key, "state")
            checks[f"breaker {KEYS.breaker_name(text(key))}"] = text(state) if state else "closed"
    except redis.RedisError as error:
        checks["redis"] = f"down: {type(error).__name__}: {error}"
    config = database_config(args)
    try:
        db = open_database(config)
        with db.connection_context():
            db.execute_sql("SELECT 1")  # type: ignore[no-untyped-call]
        checks["database"] = "ok"
    except peewee.DatabaseError as error:
        checks["database"] = f"down: {first_line(error)}"
    width = max(len(name) for name in checks)
    for name, value in checks.items():
        print(f"{name:<{width}}  {value}")
    return 1 if any(value.startswith("down") for value in checks.values()) else 0


def _status(args: argparse.Namespace) -> int:
    client = redis_client(args)
    key = KEYS.status(args.import_id)
    ended = _ended(client, args.import_id)
    if ended is not None:  # its ending may be trimmed from the stream, or long past
        print(ended[1], flush=True)
        return ended[0]
    # Followed right as its job starts, an import may not have streamed its first event.
    deadline = time.monotonic() + (APPEARS if args.follow else 0)
    while not client.exists(key):
        if time.monotonic() >= deadline:
            print(f"dramatiq-shared: no such import: {args.import_id}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    after = args.after
    while True:
        replies = cast(
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
            client.xread({key: f"{after}-0"}, count=500, block=1_000 if args.follow else None),
        )
        entries = replies[0][1] if replies else []
        for entry_id, fields in entries:
            after = int(text(entry_id).split("-")[0])
            event = json.loads(fields[b"event"])
            print(_describe(after, event), flush=True)
            if event.get("context") == "import" and event["status"] in ("COMPLETED", "FAILED"):
                return 0 if event["status"] == "COMPLETED" else 1
        if not entries and not args.follow:
            return 0
        if not entries and (ended := _ended(client, args.import_id)) is not None:
            print(ended[1], flush=True)
            return ended[0]


def _ended(client: redis.Redis, import_id: str) -> tuple[int, str] | None:
    """The exit status and final state of an import its completion counts say has ended."""
    counts = {text(k): int(v) for k, v in client.hgetall(KEYS.completion(import_id)).items()}
    if not counts.get("finished"):
        return None
    status = "FAILED" if counts.get("failed") else "COMPLETED"
    total, failed = counts.get("total", 0), counts.get("failed", 0)
    done = f"{counts.get('done', 0)} of {total} items done, {failed} failed"
    return (1 if failed else 0), f"import {import_id}: {status} ({done})"


def _describe(event_id: int, event: dict[str, Any]) -> str:
    """One line per event; import-level progress as a bar."""
    current, total = event.get("currentCount"), event.get("totalCount")
    where = " ".join(str(x) for x in (event.get("context"), event.get("noteId")) if x)
    line = f"{event_id:>6} {event['status']:<10} {where}: {event.get('message') or ''}"
    if total:
        line += f"  {progress_bar(current or 0, total)}"
    return line


def progress_bar(current: int, total: int, width: int = 30) -> str:
    """``[#########.....................] 3/10``: ``current`` of ``total`` as a text bar."""
    done = round(width * current / total) if total else width
    return f"[{'#' * done}{'.' * (width - done)}] {current}/{total}"


def _metrics(args: argparse.Namespace) -> int:
    start_http_server(args.port, addr=args.host, registry=metrics_registry())
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    source = f"the worker processes' folder {shared}" if shared else "this process only"
    print(f"metrics of {source} at http://{args.host}:{args.port}/metrics", flush=True)
    while True:
        time.sleep(3600)


def _relay(args: argparse.Namespace) -> int:
    return relay_main.run(args)


def _token(args: argparse.Namespace) -> int:
    secret = os.environ.get("DRAMATIQ_SHARED_SECRET")
    if not secret:
        raise ConfigError("minting a token needs the relay's secret: set DRAMATIQ_SHARED_SECRET")
    print(sign(args.import_id, secret, ttl=args.ttl, subject=args.subject))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``dramatiq-shared`` command."""
    parser = argparse.ArgumentParser(
        prog="dramatiq-shared",
        description="Tools for workers built on dramatiq-shared.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database",
        metavar="URL",
        help="sqlite:///path or postgresql://...; default DRAMATIQ_SHARED_DB_URL, DATABASE_URL,"
        " else sqlite:///dramatiq_shared.db",
    )
    redis = argparse.ArgumentParser(add_help=False)
    redis.add_argument("--redis-url", metavar="URL", help="the broker; default REDIS_URL")

    config = commands.add_parser(
        "config",
        help="print the effective configuration read from DRAMATIQ_SHARED_* variables",
        description="Validate the DRAMATIQ_SHARED_* and DATABASE_URL variables and print"
        " the configuration they give, as JSON (passwords hidden).",
    )
    config.set_defaults(run=_show_config)

    init_db = commands.add_parser(
        "init-db",
        parents=[database],
        help="create the tables (safe to run again)",
        description="Create every table and index that does not exist yet.",
    )
    init_db.set_defaults(run=_init_db)

    workers = commands.add_parser(
        "workers",
        parents=[redis],
        help="list live workers (from their heartbeats) and queue depths",
        description="Workers whose heartbeat has not expired, and each of their queues'"
        " ready, delayed and dead messages.",
    )
    workers.set_defaults(run=_workers)

    health = commands.add_parser(
        "health",
        parents=[database, redis],
        help="check Redis, the database, workers, queues and breakers; exit 1 when down",
        description="Check what the workers depend on. Exit status 1 when Redis or the"
        " database is down, or when queues hold messages and no worker is live (it says"
        " which, and how many); 2 when a URL is malformed.",
    )
    health.set_defaults(run=_health)

    status = commands.add_parser(
        "status",
        parents=[redis],
        help="follow an import's status events, with a progress bar",
        description="Print an import's events from its Redis stream as they come, until"
        " the import completes (exit 0) or fails (exit 1). An import that has ended"
        " already is its final state at once; one that does not appear (within 5 s when"
        " following) is 'no such import', exit 1.",
    )
    status.add_argument("import_id", metavar="IMPORT_ID")
    status.add_argument("--after", type=int, default=0, help="start after this event id (0)")
    status.add_argument(
        "--no-follow", dest="follow", action="store_false", help="print what is there and exit"
    )
    status.set_defaults(run=_status)

    exporter = commands.add_parser(
        "metrics",
        help="serve the worker processes' Prometheus metrics (PROMETHEUS_MULTIPROC_DIR)",
        description="Serve the metrics the worker processes write to PROMETHEUS_MULTIPROC_DIR,"
        " as Dramatiq's own Prometheus exporter does.",
    )
    exporter.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    exporter.add_argument("--port", type=int, default=9191, help="port to listen on (9191)")
    exporter.set_defaults(run=_metrics)

    relay = commands.add_parser(
        "relay",
        help="serve status events to browsers over websockets",
        description=relay_main.__doc__,
    )
    relay_main.add_arguments(relay)
    relay.set_defaults(run=_relay)

    token = commands.add_parser(
        "token",
        help="mint a stream token for an import ('*' for every import)",
        description="Print a token that lets a relay client watch IMPORT_ID, signed with"
        " DRAMATIQ_SHARED_SECRET.",
    )
    token.add_argument("import_id", metavar="IMPORT_ID")
    token.add_argument("--ttl", type=positive, default=3600, help="seconds it is valid (3600)")
    token.add_argument(
        "--subject", metavar="WHO", help="who it is for: the audit of forced actions names it"
    )
    token.set_defaults(run=_token)

    dead_letters.add_parser(commands, database, redis)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` when omitted).

    Returns:
      The exit status: 0 on success, 2 on a user error.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except DramatiqSharedError as error:
        return _fail(str(error))
    except peewee.DatabaseError as error:  # past the check, mid-command
        url = database_config(args).url
        return _fail(str(unreachable(database_setting(args), url, "the database", error)))
    except redis.RedisError as error:
        url = getattr(args, "redis_url", None) or os.environ.get("REDIS_URL", "")
        return _fail(str(unreachable(redis_setting(args), url, "Redis", error)))
    return status


def _fail(message: str) -> int:
    print(f"dramatiq-shared: error: {message}", file=sys.stderr)
    return 2
