"""What the subcommands share: where the database and Redis are, and argument types.

A server given by an option is named by the option (``--database``), else by the
variable that gave it, in every message about it.
"""

from __future__ import annotations

import argparse
import os

import peewee
import redis

from .. import servers
from ..config import DatabaseConfig
from ..errors import ConfigError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..stores.connection import open_database

#: The keys the command reads: those of the default namespace, the one workers use
#: unless told otherwise.
KEYS = Keys(DEFAULT_NAMESPACE)


def database_config(args: argparse.Namespace) -> DatabaseConfig:
    """The database of ``--database``, else of the environment.

    Raises:
      ConfigError: Naming the option or the variable, when a setting is invalid.
    """
    config = DatabaseConfig.from_env()
    return (
        servers.database_config(args.database, setting="--database", base=config)
        if args.database
        else config
    )


def database_setting(args: argparse.Namespace) -> str:
    """What named the database: ``--database``, a variable, or the default."""
    if getattr(args, "database", None):
        return "--database"
    return DatabaseConfig.url_variable() or "the default database URL"


def database(args: argparse.Namespace) -> peewee.Database:
    """The database of :func:`database_config`, once it answered.

    Raises:
      ServerError: When it refuses or does not answer.
    """
    config = database_config(args)
    servers.check_database(config, setting=database_setting(args))
    return open_database(config)


def redis_url(args: argparse.Namespace, needed: str) -> str:
    """The URL of ``--redis-url``, else ``REDIS_URL``.

    Raises:
      ConfigError: Saying ``needed`` (what needs it) when there is neither.
    """
    url: str | None = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError(f"{needed}: pass --redis-url or set REDIS_URL")
    return url


def redis_setting(args: argparse.Namespace) -> str:
    """What named Redis: ``--redis-url`` or ``REDIS_URL``."""
    return "--redis-url" if getattr(args, "redis_url", None) else "REDIS_URL"


def redis_client(args: argparse.Namespace, *, check: bool = True) -> redis.Redis:
    """A client of the Redis of :func:`redis_url`, quick to give up on a dead server.

    Parameters:
      args: The parsed arguments.
      check: Whether to connect once first. Default True.

    Raises:
      ConfigError: When there is no Redis URL, or it is malformed.
      ServerError: When checked, and Redis refuses or does not answer.
    """
    url = redis_url(args, "this needs Redis")
    if check:
        servers.check_redis(url, setting=redis_setting(args))
    return servers.redis_client(
        url, setting=redis_setting(args), socket_connect_timeout=2, socket_timeout=5
    )


def positive(text: str) -> int:
    """An argument type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
