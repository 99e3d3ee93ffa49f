"""The ``dramatiq-shared`` command.

Each subcommand is one function taking the parsed arguments and returning an exit
status. A user mistake (a bad setting, a missing server) is one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

import peewee

from . import __version__
from .config import CircuitBreakerConfig, DatabaseConfig, RetryConfig, StatusConfig
from .db.models import MODELS, create_tables, init_database
from .errors import DramatiqSharedError

__all__ = ["main"]


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
    config = DatabaseConfig.from_env()
    if args.database:
        config = dataclasses.replace(config, url=args.database)
    database = init_database(config)
    try:
        create_tables(database)
    except peewee.DatabaseError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"dramatiq-shared: error: cannot create tables in {config.redacted_url}:"
            f" {type(error).__name__}: {first_line}",
            file=sys.stderr,
        )
        return 2
    print(f"{len(MODELS)} tables ready in {config.redacted_url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``dramatiq-shared`` command."""
    parser = argparse.ArgumentParser(
        prog="dramatiq-shared",
        description="Tools for workers built on dramatiq-shared.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    config = commands.add_parser(
        "config",
        help="print the effective configuration read from DRAMATIQ_SHARED_* variables",
        description="Validate the DRAMATIQ_SHARED_* and DATABASE_URL variables and print"
        " the configuration they give, as JSON (passwords hidden).",
    )
    config.set_defaults(run=_show_config)

    init_db = commands.add_parser(
        "init-db",
        help="create the tables (safe to run again)",
        description="Create every table and index that does not exist yet.",
    )
    init_db.add_argument(
        "--database",
        metavar="URL",
        help="sqlite:///path or postgresql://...; default DRAMATIQ_SHARED_DB_URL, DATABASE_URL,"
        " else sqlite:///dramatiq_shared.db",
    )
    init_db.set_defaults(run=_init_db)
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
        print(f"dramatiq-shared: error: {error}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
