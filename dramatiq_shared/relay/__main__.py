"""Run the relay: ``python -m dramatiq_shared.relay`` or ``dramatiq-shared relay``.

It reads Redis from ``--redis-url`` (default ``REDIS_URL``), the event history from
``--database`` (default ``DRAMATIQ_SHARED_DB_URL`` or ``DATABASE_URL``; without one, only
what the streams keep is replayed, and breakers cannot be forced: the audit table is
there) and the token secret from ``DRAMATIQ_SHARED_SECRET``. A breaker forced open
stays open for the ``reset_timeout`` of the breaker settings in the environment
(``CircuitBreakerConfig.from_env()``), as the workers read them.
SIGINT or SIGTERM closes every websocket with 1001 (going away) before it exits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import redis
import redis.asyncio as aioredis
from aiohttp import web
from dramatiq.brokers.redis import RedisBroker

from .. import servers
from ..breakers import Breakers
from ..config import CircuitBreakerConfig, DatabaseConfig
from ..errors import ConfigError, DramatiqSharedError
from ..logging import configure_logging
from ..stores.audit import AuditLog
from ..stores.connection import open_database
from ..stores.dead_letters import DeadLetterStore
from ..stores.status_history import StatusHistory
from .app import SECRET, create_app
from .auth import ADMIN, sign
from .sources import RedisSource

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The relay's options, for its own parser and the ``dramatiq-shared relay`` command."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    parser.add_argument(
        "--redis-url", metavar="URL", help="Redis with the streams; default REDIS_URL"
    )
    parser.add_argument("--database", metavar="URL", help="the event history's database")
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="another origin whose pages may connect (repeatable)",
    )
    parser.add_argument(
        "--broker-namespace",
        default="dramatiq",
        metavar="NS",
        help="the RedisBroker's namespace, for queue depths (dramatiq); 'none' on RabbitMQ",
    )
    parser.add_argument("--log-level", default="INFO", help="lowest level logged (INFO)")
    parser.add_argument("--json-logs", action="store_true", help="log one JSON object a line")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="local demo: without DRAMATIQ_SHARED_SECRET, make a secret and print an admin link",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the relay until it is stopped."""
    configure_logging(args.log_level, json=args.json_logs)
    url = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError("the relay reads Redis streams: pass --redis-url or set REDIS_URL")
    redis_setting = "--redis-url" if args.redis_url else "REDIS_URL"
    servers.redis_client(url, setting=redis_setting)  # malformed: refused before it starts
    config = DatabaseConfig.from_env()
    database_setting = "--database" if args.database else DatabaseConfig.url_variable()
    database = None
    if database_setting is not None:
        url_given = args.database or config.url
        database = servers.database_config(url_given, setting=database_setting, base=config)
    opened = open_database(database) if database is not None else None
    history = StatusHistory(opened) if opened is not None else None
    audit = AuditLog(opened) if opened is not None else None
    # Blocking: a burst of clients catching up waits for a connection instead of failing.
    client = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=32, timeout=30
        )
    )
    broker_namespace = None if args.broker_namespace == "none" else args.broker_namespace
    broker = None
    if opened is not None and broker_namespace is not None:
        broker = RedisBroker(url=url, namespace=broker_namespace)  # type: ignore[no-untyped-call]
    app = create_app(
        RedisSource(client, history),
        secret=os.environ.get("DRAMATIQ_SHARED_SECRET"),
        demo=args.demo,
        allowed_origins=args.origin,
        breaker_client=client,
        breakers=Breakers(redis.Redis.from_url(url), default=CircuitBreakerConfig.from_env()),
        audit=audit,
        broker_namespace=broker_namespace,
        dead_letters=DeadLetterStore(opened) if opened is not None else None,
        # Replays go to the RedisBroker; on RabbitMQ the relay replays none (503).
        broker=broker,
    )
    # Once its settings are good, the servers must answer: else one line, not a relay
    # that starts and fails every client.
    servers.check_redis(url, setting=redis_setting)
    if database is not None and database_setting is not None:
        servers.check_database(database, setting=database_setting)
    if args.demo and not os.environ.get("DRAMATIQ_SHARED_SECRET"):
        token = sign(ADMIN, app[SECRET], ttl=24 * 3600)
        print(f"demo relay: http://{args.host}:{args.port}/?token={token}", flush=True)
    web.run_app(
        app, host=args.host, port=args.port, print=None, shutdown_timeout=5, access_log=None
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dramatiq_shared.relay", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except DramatiqSharedError as error:
        print(f"relay: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
