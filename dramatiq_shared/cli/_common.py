"""What the subcommands share: where the database and Redis are, and argument types."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import redis

from ..config import DatabaseConfig
from ..errors import ConfigError
from ..keys import DEFAULT_NAMESPACE, Keys

#: The keys the command reads: those of the default namespace, the one workers use
#: unless told otherwise.
KEYS = Keys(DEFAULT_NAMESPACE)


def database_config(args: argparse.Namespace) -> DatabaseConfig:
    """The database of ``--database``, else of the environment."""
    config = DatabaseConfig.from_env()
    return dataclasses.replace(config, url=args.database) if args.database else config


def redis_url(args: argparse.Namespace, needed: str) -> str:
    """The URL of ``--redis-url``, else ``REDIS_URL``.

    Raises:
      ConfigError: Saying ``needed`` (what needs it) when there is neither.
    """
    url: str | None = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError(f"{needed}: pass --redis-url or set REDIS_URL")
    return url


def redis_client(args: argparse.Namespace) -> redis.Redis:
    """A client of the Redis of :func:`redis_url`, quick to give up on a dead server."""
    url = redis_url(args, "this needs Redis")
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def positive(text: str) -> int:
    """An argument type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def first_line(error: Any) -> str:
    """The error's type and the first line of its message: server errors run long."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
