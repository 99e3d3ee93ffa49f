"""What every reader of Redis replies needs, and how an unreachable Redis is told once."""

from __future__ import annotations

import os
import threading
import time
import weakref

import redis
from loguru import logger

from .errors import ConfigError

__all__ = ["RETRY_AFTER", "Outage", "outage_of", "state_client", "text"]

#: Seconds an unreachable Redis is left alone before it is asked again.
RETRY_AFTER = 1.0


def text(value: bytes | str) -> str:
    """A Redis reply as text: clients return bytes unless told to decode."""
    return value.decode() if isinstance(value, bytes) else value


def state_client(owner: str, client: redis.Redis | None, url: str | None) -> redis.Redis:
    """The client a middleware keeps its shared state in: ``client``, else one for
    ``url``, else for ``REDIS_URL``, with short timeouts (an unreachable Redis must not
    stall every message).

    Raises:
      ConfigError: When none of the three is given.
    """
    if client is not None:
        return client
    url = url or os.environ.get("REDIS_URL")
    if not url:
        raise ConfigError(
            f"{owner} keeps its state in Redis: pass redis_client or redis_url, or set"
            " REDIS_URL (or local=True for one process without Redis)",
            field="redis_url",
        )
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0)


class Outage:
    """Whether one client's Redis is reachable for one user of it, the outage logged once.

    Parameters:
      client: The Redis client.
      who: Who cannot reach it, as the log lines name it (``"Circuit breakers"``).
      meanwhile: What they do until it answers, for the warning.
    """

    def __init__(self, client: redis.Redis, who: str, meanwhile: str) -> None:
        self._where = _address(client)
        self._who = who
        self._meanwhile = meanwhile
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0

    def skip(self) -> bool:
        """Whether to answer without asking Redis: it is down, and was asked lately.

        The caller told False while Redis is down probes it for everyone: the others
        skip until the next interval, so an outage blocks one caller at a time on the
        client's timeouts, not all of them.
        """
        if not self._down:
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._retry_at:
                return True
            self._retry_at = now + RETRY_AFTER
            return False

    def failed(self, error: redis.RedisError) -> None:
        """Note a failed command: the first of an outage is logged as a warning."""
        with self._lock:
            self._retry_at = time.monotonic() + RETRY_AFTER
            if self._down:
                return
            self._down = True
        logger.warning(
            "{} cannot reach Redis at {} ({}: {}); {} until it answers",
            self._who,
            self._where,
            type(error).__name__,
            error,
            self._meanwhile,
        )

    def answered(self) -> None:
        """Note an answer: the first after an outage is logged as an info."""
        if not self._down:
            return
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.info("{} reach Redis at {} again", self._who, self._where)


_outages: weakref.WeakKeyDictionary[redis.Redis, dict[str, Outage]] = weakref.WeakKeyDictionary()
_outages_lock = threading.Lock()


def outage_of(client: redis.Redis, who: str, meanwhile: str) -> Outage:
    """The one :class:`Outage` of ``client`` for ``who``, whatever the number of its users
    (every breaker of one client shares one, so an outage is logged once)."""
    with _outages_lock:
        by_who = _outages.setdefault(client, {})
        outage = by_who.get(who)
        if outage is None:
            outage = by_who[who] = Outage(client, who, meanwhile)
        return outage


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
