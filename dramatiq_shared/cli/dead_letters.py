"""``dramatiq-shared dead-letters``: list, show, retry and purge messages that failed for good."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
from datetime import timedelta
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from ..errors import ConfigError
from ..servers import check_redis
from ..stores.audit import AuditLog
from ..stores.dead_letters import FILTER_KEYS, DeadLetterFilter, DeadLetterRecord, DeadLetterStore
from ._common import database, positive, redis_setting, redis_url

__all__ = ["add_parser"]


def _store(args: argparse.Namespace) -> DeadLetterStore:
    return DeadLetterStore(database(args))


def _list(args: argparse.Namespace) -> int:
    rows = _store(args).list(limit=args.limit, include_retried=args.all)
    if not rows:
        print(
            "no dead letters" if args.all else "no dead letters waiting (--all shows retried ones)"
        )
        return 0
    print(
        f"{'ID':>6}  {'FAILED AT (UTC)':<19}  {'ACTOR':<24}  {'QUEUE':<12}  ERRORS"
        f"  {'RETRIED':<7}  ERROR"
    )
    for row in rows:
        retried = "yes" if row.retried_at else "no"
        print(
            f"{row.id:>6}  {row.failed_at:%Y-%m-%d %H:%M:%S}  {row.actor_name[:24]:<24}"
            f"  {row.queue_name[:12]:<12}  {_error_count(row):>6}  {retried:<7}"
            f"  {row.error_type}: {row.error_message[:60]}"
        )
    return 0


def _error_count(row: DeadLetterRecord) -> int:
    return int(row.message.get("options", {}).get("error_count", len(row.error_history)))


def _show(args: argparse.Namespace) -> int:
    row = _store(args).get(args.id)
    shown = dataclasses.asdict(row)
    shown["failed_at"] = f"{row.failed_at:%Y-%m-%dT%H:%M:%S}Z"
    shown["retried_at"] = f"{row.retried_at:%Y-%m-%dT%H:%M:%S}Z" if row.retried_at else None
    print(json.dumps(shown, indent=2, default=str))
    return 0


def _filter(args: argparse.Namespace) -> DeadLetterFilter | None:
    """The ``--filter KEY=VALUE`` options as a filter; None without any."""
    if not args.filter:
        return None
    pairs = {}
    for given in args.filter:
        key, equals, value = given.partition("=")
        if not equals:
            raise ConfigError(
                f"--filter {given!r}: give KEY=VALUE, KEY one of {', '.join(FILTER_KEYS)}"
            )
        pairs[key.replace("-", "_")] = value
    return DeadLetterFilter.parse(pairs)


def _retry(args: argparse.Namespace) -> int:
    matching = _filter(args)
    if bool(args.ids) == (matching is not None):
        raise ConfigError("retry what? give ids or --filter KEY=VALUE (not both)")
    store = _store(args)
    if args.dry_run:
        found = store.replay(None, ids=args.ids, matching=matching, dry_run=True)
        print(f"{found.matched} dead letter{'s' if found.matched != 1 else ''} would be retried")
        return 0
    url = redis_url(args, "retrying needs the broker")
    check_redis(url, setting=redis_setting(args))
    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]  # dramatiq leaves it untyped
    try:
        done = store.replay(
            broker,
            ids=args.ids,
            matching=matching,
            rate=args.rate,
            audit=AuditLog(store.database),
            who=f"cli:{getpass.getuser()}",
        )
    finally:
        broker.close()
    # By id, those retried already (or unknown) are not among those matched.
    skipped = (len(args.ids) - done.matched if args.ids else 0) + done.matched - done.enqueued
    print(
        f"{done.enqueued} enqueued again with a fresh attempt count"
        + (f"; {skipped} already retried, not enqueued again" if skipped else "")
    )
    return 0


def _purge(args: argparse.Namespace) -> int:
    matching = _filter(args)
    if not (args.ids or args.retried or args.all or matching or args.older_than):
        raise ConfigError("purge what? give ids, --retried, --filter, --older-than or --all")
    purged = _store(args).purge(
        ids=args.ids,
        retried=args.retried,
        everything=args.all,
        matching=matching,
        older_than=args.older_than,
    )
    print(f"purged {purged} dead letter{'s' if purged != 1 else ''}")
    return 0


def _age(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m`` or ``90s`` as a time span."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a number and d, h, m or s (7d, 12h)")
    return timedelta(**{units[unit]: int(number)})


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give messages a second, a number > 0")
    return rate


_FILTER_HELP = (
    f"only dead letters where KEY matches VALUE (repeatable; KEY: {', '.join(FILTER_KEYS)};"
    " since/until in ISO 8601 UTC; import_id: the message holds it; text: in the error or"
    " the message)"
)


def add_parser(
    commands: Any, database: argparse.ArgumentParser, redis: argparse.ArgumentParser
) -> None:
    """Add ``dead-letters`` and its commands to ``commands``.

    Parameters:
      commands: The subparsers of the ``dramatiq-shared`` parser.
      database: The parent parser of the ``--database`` option.
      redis: The parent parser of the ``--redis-url`` option.
    """
    dead = commands.add_parser(
        "dead-letters",
        help="list, show, retry and purge messages that failed for good",
        description="Messages that failed for good, as the ErrorHandling middleware recorded them.",
    )
    dead_commands = dead.add_subparsers(title="commands", metavar="COMMAND", required=True)
    listing = dead_commands.add_parser(
        "list", parents=[database], help="the newest dead letters first"
    )
    listing.add_argument("--limit", type=positive, default=50, help="at most this many (50)")
    listing.add_argument("--all", action="store_true", help="include those already retried")
    listing.set_defaults(run=_list)
    show = dead_commands.add_parser(
        "show", parents=[database], help="one dead letter as JSON, error history included"
    )
    show.add_argument("id", type=positive)
    show.set_defaults(run=_show)
    retry = dead_commands.add_parser(
        "retry",
        parents=[database, redis],
        help="enqueue dead letters again with a fresh attempt count (once each)",
    )
    retry.add_argument("ids", type=positive, nargs="*", metavar="ID")
    retry.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help=_FILTER_HELP
    )
    retry.add_argument(
        "--dry-run", action="store_true", help="count those it would retry; enqueue none"
    )
    retry.add_argument("--rate", type=_rate, metavar="N", help="at most N messages a second")
    retry.set_defaults(run=_retry)
    purge = dead_commands.add_parser("purge", parents=[database], help="delete dead letters")
    purge.add_argument("ids", type=positive, nargs="*", metavar="ID")
    purge.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help=_FILTER_HELP
    )
    purge.add_argument(
        "--older-than", type=_age, metavar="AGE", help="those that failed longer ago (7d, 12h, 30m)"
    )
    purge.add_argument("--retried", action="store_true", help="those already retried")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.set_defaults(run=_purge)
