"""Where the database is and how to talk to it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from .._checks import check_int
from ..errors import ConfigError
from ._base import ENV_PREFIX, _Config, _env_fields, _parse_int

_DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql")


def redact_url(url: str) -> str:
    """The URL with its password hidden (``redis://:***@host``), for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class DatabaseConfig(_Config):
    """Where the database is and how to talk to it.

    Environment: ``DRAMATIQ_SHARED_DB_URL``, else the usual ``DATABASE_URL``;
    ``DRAMATIQ_SHARED_DB_CONNECTION_LIMIT``, ``..._TIMEOUT``,
    ``..._RETRY_ATTEMPTS``, ``..._BATCH_SIZE``.

    Parameters:
      url: ``sqlite:///path`` (``sqlite:///:memory:`` too) or
        ``postgresql://user:password@host:port/name``. Default ``sqlite:///dramatiq_shared.db``.
      connection_limit: Most connections a process holds to PostgreSQL. Default 8.
      timeout: Milliseconds to wait for a connection or a lock. Default 10000.
      retry_attempts: Retries of an operation that failed on a transient database
        error (lost connection, deadlock, serialization failure, locked). Default 3.
      batch_size: Rows written per statement by the batch operations. Default 500.
    """

    url: str = "sqlite:///dramatiq_shared.db"
    connection_limit: int = 8
    timeout: int = 10_000
    retry_attempts: int = 3
    batch_size: int = 500

    _env: ClassVar[Mapping[str, tuple[tuple[str, ...], Callable[[str], Any]]]] = {
        **_env_fields(
            "DB_",
            {
                "connection_limit": _parse_int,
                "timeout": _parse_int,
                "retry_attempts": _parse_int,
                "batch_size": _parse_int,
            },
        ),
        "url": ((f"{ENV_PREFIX}DB_URL", "DATABASE_URL"), str.strip),
    }

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme if isinstance(self.url, str) else None
        if scheme not in _DATABASE_SCHEMES:
            shown = redact_url(self.url) if isinstance(self.url, str) else self.url
            raise ConfigError.invalid("url", shown, "a sqlite:/// or postgresql:// URL")
        check_int("connection_limit", self.connection_limit, minimum=1, error=ConfigError)
        check_int("timeout", self.timeout, minimum=1, error=ConfigError)
        check_int("retry_attempts", self.retry_attempts, minimum=0, error=ConfigError)
        check_int("batch_size", self.batch_size, minimum=1, error=ConfigError)

    @classmethod
    def url_configured(cls, environ: Mapping[str, str] | None = None) -> bool:
        """Whether the environment names a database (``DRAMATIQ_SHARED_DB_URL`` or
        ``DATABASE_URL``) instead of leaving the embedded SQLite default.

        Parameters:
          environ: The variables to read; ``os.environ`` when omitted.
        """
        return cls.url_variable(environ) is not None

    @classmethod
    def url_variable(cls, environ: Mapping[str, str] | None = None) -> str | None:
        """The variable :meth:`from_env` takes the URL from (``DRAMATIQ_SHARED_DB_URL``,
        else ``DATABASE_URL``), or None when neither is set.

        Parameters:
          environ: The variables to read; ``os.environ`` when omitted.
        """
        environ = os.environ if environ is None else environ
        variables, _ = cls._env["url"]
        return next((name for name in variables if environ.get(name, "").strip()), None)

    @property
    def redacted_url(self) -> str:
        """The URL with its password hidden, for logs."""
        return redact_url(self.url)

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values, with the URL's password hidden."""
        return {**super().as_dict(), "url": self.redacted_url}
