"""Loaded by every Python process of the compat run (its folder is on PYTHONPATH): any
Redis connection to the default port goes to the run's private redis-server instead.

Dramatiq's tests build ``RedisBroker()`` and ``redis.Redis()`` with the defaults, in
the test process and in the ``dramatiq`` processes they start, and their fixtures
flush every database: nothing of that run may reach the machine's Redis on 6379.
"""

from __future__ import annotations

import os

_PORT = os.environ.get("DRAMATIQ_SHARED_COMPAT_REDIS_PORT")

if _PORT:
    import redis.connection

    _connect = redis.connection.Connection.__init__

    def _private(
        self: object, host: str = "localhost", port: int = 6379, *a: object, **k: object
    ) -> None:
        _connect(self, host, int(_PORT) if int(port) == 6379 else port, *a, **k)  # type: ignore[arg-type]

    redis.connection.Connection.__init__ = _private  # type: ignore[method-assign]
