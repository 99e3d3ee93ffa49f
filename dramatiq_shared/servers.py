"""Checking, before any work starts, that the servers the settings name are there.

A process told where Redis, the database or RabbitMQ is (``REDIS_URL``,
``DRAMATIQ_SHARED_DB_URL`` / ``DATABASE_URL``, ``RABBITMQ_URL``, or a command-line
option such as ``--database``) connects to each once, with a short timeout, before it
sends or reads anything, so that a server that is not there is one line rather than a
traceback from deep inside a client library:

* a malformed URL is a :class:`~dramatiq_shared.errors.ConfigError`:
  ``REDIS_URL must be a redis://, rediss:// or unix:// URL, got 'notaurl'``;
* a server that refuses or does not answer is a :class:`~dramatiq_shared.errors.ServerError`:
  ``REDIS_URL=redis://:***@127.0.0.1:6390/0: Redis refused or did not answer
  (ConnectionError: Error 111 connecting to 127.0.0.1:6390. Connection refused.); start
  it or correct REDIS_URL``.

Each names the setting (the variable, or the option that was given instead), the URL
with its password hidden, and the cause. The ``dramatiq-shared`` command and the
example job print it and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import peewee
import redis

from .config import DatabaseConfig, redact_url
from .errors import ConfigError, ServerError
from .stores.connection import open_database

__all__ = [
    "TIMEOUT",
    "check_database",
    "check_environment",
    "check_rabbitmq",
    "check_redis",
    "database_config",
    "first_line",
    "redis_client",
    "unreachable",
]

#: Seconds a check waits for a server to answer.
TIMEOUT = 2.0

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def first_line(error: BaseException) -> str:
    """The error's type and the first line of its message: server errors run long."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def unreachable(setting: str, url: str, server: str, error: BaseException) -> ServerError:
    """The error for ``server`` at ``url`` (named by ``setting``) having refused or not
    answered with ``error``.

    Parameters:
      setting: The variable or option that gave the URL.
      url: The URL; its password is hidden in the message.
      server: What it is, for people: ``"Redis"``, ``"the database"``, ``"RabbitMQ"``.
      error: What the client raised.

    Returns:
      A :class:`ServerError` whose message is one line.
    """
    return ServerError(
        f"{setting}={redact_url(url)}: {server} refused or did not answer"
        f" ({first_line(error)}); start it or correct {setting}",
        setting=setting,
    )


def redis_client(url: str, *, setting: str = "REDIS_URL", **options: Any) -> redis.Redis:
    """A client of the Redis at ``url``, not yet connected.

    Parameters:
      url: A ``redis://``, ``rediss://`` or ``unix://`` URL.
      setting: The variable or option that gave it, for the error.
      options: More arguments of ``redis.Redis.from_url`` (timeouts, say).

    Raises:
      ConfigError: Naming ``setting``, when ``url`` is not a Redis URL.
    """
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as error:
        raise _malformed(setting, url, "a redis://, rediss:// or unix:// URL", error) from None


def check_redis(url: str, *, setting: str = "REDIS_URL", timeout: float = TIMEOUT) -> None:
    """Connect to the Redis at ``url`` once, waiting at most ``timeout`` seconds.

    Raises:
      ConfigError: When ``url`` is not a Redis URL.
      ServerError: When Redis refuses (a wrong password, say) or does not answer.
    """
    client = redis_client(
        url, setting=setting, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        client.ping()
    except redis.RedisError as error:
        raise unreachable(setting, url, "Redis", error) from error
    finally:
        client.close()


def database_config(
    url: str, *, setting: str, base: DatabaseConfig | None = None
) -> DatabaseConfig:
    """The config of the database at ``url``, with the other settings of ``base``.

    Parameters:
      url: A ``sqlite:///`` or ``postgresql://`` URL.
      setting: The variable or option that gave it, for the error.
      base: The other settings. Default: :class:`DatabaseConfig`'s defaults.

    Raises:
      ConfigError: Naming ``setting``, when ``url`` is not a database URL.
    """
    try:
        return dataclasses.replace(base or DatabaseConfig(), url=url)
    except ConfigError as error:
        raise ConfigError(f"{setting}: {error}", field=setting) from None


def check_database(config: DatabaseConfig | str, *, setting: str, timeout: float = TIMEOUT) -> None:
    """Connect to the PostgreSQL database of ``config`` once, waiting at most ``timeout``
    seconds; a SQLite file is opened when it is first used, as before.

    Raises:
      ConfigError: When the URL is not a database URL.
      ServerError: When the server refuses (no such database, a wrong password) or does
        not answer.
    """
    config = database_config(config, setting=setting) if isinstance(config, str) else config
    if urlsplit(config.url).scheme == "sqlite":
        return
    quick = dataclasses.replace(config, timeout=max(1, round(timeout * 1000)), connection_limit=1)
    database = open_database(quick)
    try:
        database.connect()
    except peewee.DatabaseError as error:
        raise unreachable(setting, config.url, "the database", error) from error
    finally:
        database.close_all()  # type: ignore[attr-defined]  # a PooledPostgresqlDatabase


def check_rabbitmq(url: str, *, setting: str = "RABBITMQ_URL", timeout: float = TIMEOUT) -> None:
    """Connect to the RabbitMQ at ``url`` once, waiting at most ``timeout`` seconds.

    Raises:
      ConfigError: When ``url`` is not an AMQP URL, or pika is not installed.
      ServerError: When RabbitMQ refuses (a wrong password, say) or does not answer.
    """
    allowed = "an amqp:// or amqps:// URL"
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise _malformed(setting, url, allowed)
    try:
        import pika  # type: ignore[import-untyped]  # noqa: PLC0415 - optional, as the broker
        import pika.exceptions  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            f"{setting} is set but pika is missing: pip install 'dramatiq-shared[rabbitmq]'",
            field=setting,
        ) from None
    try:
        parameters = pika.URLParameters(url)
    except (ValueError, IndexError) as error:
        raise _malformed(setting, url, allowed, error) from None
    parameters.connection_attempts = 1
    parameters.socket_timeout = parameters.stack_timeout = timeout
    # pika logs each step of a failed connection, a traceback included: the error says it.
    quiet = logging.getLogger("pika")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)
    try:
        pika.BlockingConnection(parameters).close()
    except (pika.exceptions.AMQPError, OSError) as error:
        raise unreachable(setting, url, "RabbitMQ", _innermost(error)) from error
    finally:
        quiet.setLevel(level)


def check_environment(
    environ: Mapping[str, str] | None = None, *, timeout: float = TIMEOUT
) -> None:
    """Check every server the environment names: ``REDIS_URL``, the database
    (``DRAMATIQ_SHARED_DB_URL`` / ``DATABASE_URL``) and ``RABBITMQ_URL``; unset ones
    are not checked.

    Raises:
      ConfigError: When a URL is malformed.
      ServerError: When a server refuses or does not answer.
    """
    environ = os.environ if environ is None else environ
    if environ.get("REDIS_URL"):
        check_redis(environ["REDIS_URL"], timeout=timeout)
    variable = DatabaseConfig.url_variable(environ)
    if variable is not None:
        check_database(DatabaseConfig.from_env(environ), setting=variable, timeout=timeout)
    if environ.get("RABBITMQ_URL"):
        check_rabbitmq(environ["RABBITMQ_URL"], timeout=timeout)


def _innermost(error: BaseException) -> BaseException:
    """The error that says what went wrong: pika wraps a socket's in errors without words."""
    while not str(error).strip():
        inner = getattr(error, "exception", None) or (error.args[0] if error.args else None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def _malformed(
    setting: str, url: str, allowed: str, error: BaseException | None = None
) -> ConfigError:
    shown = redact_url(url)
    refused = ConfigError.invalid(setting, shown, allowed)
    # Past the scheme the client's own words say what is wrong (a port that is no number).
    if error is not None and urlsplit(url).scheme in ("amqp", "amqps", *_REDIS_SCHEMES):
        return ConfigError(f"{refused} ({error})", field=setting)
    return refused
