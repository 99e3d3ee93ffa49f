"""Validated configuration objects.

Each config is a frozen dataclass checked on construction: a bad value raises
:class:`~dramatiq_shared.errors.ConfigError` naming the field, the value and what
is allowed. Times are milliseconds, as in Dramatiq.

Three ways to build one:

* the constructor, with keyword arguments;
* :meth:`from_mapping`, which also takes the camelCase keys of the TypeScript
  system this library replaces (``maxAttempts``, ``circuitBreaker: {resetTimeout}``),
  so its JSON configs carry over;
* :meth:`from_env`, which reads the environment variables listed on each class.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from dramatiq.middleware.time_limit import TimeLimitExceeded

from ._checks import check_int
from .errors import ConfigError, PermanentError, TransientError

__all__ = [
    "JITTER_MODES",
    "CircuitBreakerConfig",
    "DatabaseConfig",
    "ErrorSpec",
    "RetryConfig",
    "StatusConfig",
    "error_matches",
    "resolve_error_specs",
]

#: How retry delays are spread; ``True`` means ``"decorrelated"``, ``False`` ``"none"``.
JITTER_MODES = ("decorrelated", "full", "equal", "none")

#: An exception class, or the simple name of one (matched against the class and its bases).
ErrorSpec = type[BaseException] | str

ENV_PREFIX = "DRAMATIQ_SHARED_"

#: The longest delay Dramatiq's brokers accept (7 days, in milliseconds).
MAX_DELAY = 7 * 24 * 3600 * 1000

_C = TypeVar("_C", bound="_Config")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def resolve_error_specs(name: str, value: Any) -> tuple[ErrorSpec, ...]:
    """Check and normalise a list of exceptions given as classes or names.

    A simple name (``"TimeoutError"``) is kept as a string and matches any exception
    whose class, or one of its bases, has that name. A dotted name
    (``"requests.exceptions.ConnectionError"``) is imported now, so a typo fails here
    rather than on the first failing message.

    Parameters:
      name: The field being checked, used in error messages.
      value: A list or tuple of exception classes and names.

    Returns:
      A tuple of exception classes and simple names.

    Raises:
      ConfigError: When ``value`` is not a sequence, or one of its items is neither an
        exception class nor the name of one.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError.invalid(name, value, "a list of exception classes or names")
    specs: list[ErrorSpec] = []
    for index, item in enumerate(value):
        item_name = f"{name}[{index}]"
        if isinstance(item, type) and issubclass(item, BaseException):
            specs.append(item)
        elif isinstance(item, str) and all(_IDENTIFIER.fullmatch(p) for p in item.split(".")):
            specs.append(_import_exception(item_name, item) if "." in item else item)
        else:
            raise ConfigError.invalid(item_name, item, "an exception class or its name")
    return tuple(specs)


def _import_exception(name: str, dotted: str) -> type[BaseException]:
    module_name, _, attribute = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"{name} must name an importable exception class, got {dotted!r} ({error})",
            field=name,
        ) from None
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ConfigError.invalid(name, dotted, "the name of an exception class")
    return found


def error_matches(error: BaseException, specs: Iterable[ErrorSpec]) -> bool:
    """Tell whether ``error`` is one of ``specs``, subclasses included.

    Parameters:
      error: The exception raised.
      specs: Exception classes and simple class names, as :func:`resolve_error_specs`
        returns them.

    Returns:
      True when the error's class or one of its bases is a given class or has a given name.
    """
    mro = type(error).__mro__
    return any(spec in mro if isinstance(spec, type) else _named(spec, mro) for spec in specs)


def _named(name: str, mro: tuple[type, ...]) -> bool:
    return any(klass.__name__ == name for klass in mro)


def _snake_case(key: str) -> str:
    return _CAMEL_HUMP.sub(r"_\1", key).lower()


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("an integer") from None


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _parse_jitter(text: str) -> bool | str:
    lowered = text.strip().lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(lowered, lowered)


class _Config:
    """What every config shares: loading from mappings and the environment."""

    #: The environment variables read for each field, first set wins, and the parser
    #: of their text.
    _env: ClassVar[Mapping[str, tuple[tuple[str, ...], Callable[[str], Any]]]] = {}

    @classmethod
    def from_mapping(cls: type[_C], mapping: Mapping[str, Any]) -> _C:
        """Build a config from a mapping with snake_case or camelCase keys.

        Parameters:
          mapping: Field values, keyed ``max_attempts`` or ``maxAttempts``; missing
            keys take their defaults.

        Returns:
          The validated config.

        Raises:
          ConfigError: When ``mapping`` is not a mapping, a key is unknown or given
            twice (once in each spelling), or a value is invalid.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError.invalid(cls.__name__, mapping, "a mapping of settings")
        allowed = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        values: dict[str, Any] = {}
        for key, value in mapping.items():
            name = _snake_case(key) if isinstance(key, str) else key
            if name not in allowed:
                raise ConfigError(
                    f"{cls.__name__} has no setting {key!r}; allowed: {', '.join(allowed)}"
                    " (camelCase spellings accepted too)",
                    field=str(key),
                )
            if name in values:
                raise ConfigError(f"{cls.__name__} setting {name!r} given twice", field=name)
            values[name] = value
        return cls(**values)

    @classmethod
    def from_env(cls: type[_C], environ: Mapping[str, str] | None = None) -> _C:
        """Build a config from environment variables; unset ones take their defaults.

        Parameters:
          environ: The variables to read; ``os.environ`` when omitted.

        Returns:
          The validated config.

        Raises:
          ConfigError: Naming the variable, when one holds an invalid value.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, (variables, parse) in cls._env.items():
            variable = next((v for v in variables if environ.get(v, "").strip()), None)
            if variable is None:
                continue
            try:
                values[name] = parse(environ[variable])
            except ValueError as error:
                raise ConfigError.invalid(variable, environ[variable], str(error)) from None
            sources[name] = variable
        values.update(cls._env_extra(environ))
        try:
            return cls(**values)
        except ConfigError as error:
            variable = sources.get(error.field or "")
            if variable is None:
                raise
            raise ConfigError(f"{variable}: {error}", field=variable) from None

    @classmethod
    def _env_extra(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """Values read from the environment by rules of a subclass's own."""
        return {}

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values, exception classes as their names."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }


def _plain(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.as_dict()
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _env_fields(prefix: str, parsers: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    return {name: ((f"{ENV_PREFIX}{prefix}{name.upper()}",), p) for name, p in parsers.items()}


@dataclass(frozen=True)
class CircuitBreakerConfig(_Config):
    """Settings of one circuit breaker.

    Environment: ``DRAMATIQ_SHARED_BREAKER_FAILURE_THRESHOLD``, ``..._RESET_TIMEOUT``,
    ``..._SUCCESS_THRESHOLD``, ``..._EXCLUDED_ERRORS`` (comma-separated names),
    ``..._TRIAL_TIMEOUT``, ``..._MAX_RESET_TIMEOUT``.

    Parameters:
      failure_threshold: Counted failures in a row that open the breaker. Default 5.
      reset_timeout: Milliseconds the breaker stays open before a trial call. Default 60000.
      success_threshold: Successful trials in half-open state that close it. Default 1.
      excluded_errors: Exceptions (classes or names, subclasses included) that neither
        count as failures nor reset the count. Default none.
      trial_timeout: Milliseconds a half-open trial may hold its lease; a trial whose
        worker died frees the breaker after this long. Default 30000.
      max_reset_timeout: Each failed trial doubles the open time, up to this many
        milliseconds. Default (None) 8 x ``reset_timeout``.
    """

    failure_threshold: int = 5
    reset_timeout: int = 60_000
    success_threshold: int = 1
    excluded_errors: Sequence[ErrorSpec] = ()
    trial_timeout: int = 30_000
    max_reset_timeout: int | None = None

    _env = _env_fields(
        "BREAKER_",
        {
            "failure_threshold": _parse_int,
            "reset_timeout": _parse_int,
            "success_threshold": _parse_int,
            "excluded_errors": _parse_names,
            "trial_timeout": _parse_int,
            "max_reset_timeout": _parse_int,
        },
    )

    def __post_init__(self) -> None:
        check_int("failure_threshold", self.failure_threshold, minimum=1, error=ConfigError)
        check_int("reset_timeout", self.reset_timeout, minimum=1, error=ConfigError)
        check_int("success_threshold", self.success_threshold, minimum=1, error=ConfigError)
        check_int("trial_timeout", self.trial_timeout, minimum=1, error=ConfigError)
        if self.max_reset_timeout is None:
            object.__setattr__(self, "max_reset_timeout", 8 * self.reset_timeout)
        check_int(
            "max_reset_timeout",
            self.max_reset_timeout,
            minimum=self.reset_timeout,
            maximum=MAX_DELAY,
            error=ConfigError,
        )
        specs = resolve_error_specs("excluded_errors", self.excluded_errors)
        object.__setattr__(self, "excluded_errors", specs)

    def is_excluded(self, error: BaseException) -> bool:
        """Tell whether ``error`` is one the breaker ignores."""
        return error_matches(error, self.excluded_errors)


@dataclass(frozen=True)
class RetryConfig(_Config):
    """Middleware defaults for retries; actors and messages may override each field.

    Environment: ``DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS``, ``..._BASE_DELAY``,
    ``..._MAX_DELAY``, ``..._RETRYABLE_ERRORS`` (comma-separated names), ``..._JITTER``
    (a mode or true/false); a ``circuit_breaker`` is built from the
    ``DRAMATIQ_SHARED_BREAKER_*`` variables when any of them is set.

    Parameters:
      max_attempts: Executions in all, the first included. Default 3.
      base_delay: Milliseconds before the first retry. Default 1000.
      max_delay: Upper bound of any retry delay, in milliseconds, at most 7 days (what
        Dramatiq's brokers accept). Default 30000.
      retryable_errors: ``None`` retries every ``Exception``; otherwise exception
        classes or names (subclasses included). Default None.
      jitter: One of :data:`JITTER_MODES`; ``True`` is stored as ``"decorrelated"``
        and ``False`` as ``"none"``. Default True.
      circuit_breaker: Default breaker settings, a :class:`CircuitBreakerConfig` or a
        mapping for :meth:`CircuitBreakerConfig.from_mapping`. Default None.
    """

    max_attempts: int = 3
    base_delay: int = 1_000
    max_delay: int = 30_000
    retryable_errors: Sequence[ErrorSpec] | None = None
    jitter: bool | str = True
    circuit_breaker: CircuitBreakerConfig | None = None

    _env = _env_fields(
        "RETRY_",
        {
            "max_attempts": _parse_int,
            "base_delay": _parse_int,
            "max_delay": _parse_int,
            "retryable_errors": _parse_names,
            "jitter": _parse_jitter,
        },
    )

    def __post_init__(self) -> None:
        check_int("max_attempts", self.max_attempts, minimum=1, error=ConfigError)
        check_int("base_delay", self.base_delay, minimum=0, error=ConfigError)
        check_int("max_delay", self.max_delay, minimum=0, maximum=MAX_DELAY, error=ConfigError)
        if self.max_delay < self.base_delay:
            raise ConfigError.invalid(
                "max_delay", self.max_delay, f">= base_delay ({self.base_delay})"
            )
        if self.retryable_errors is not None:
            specs = resolve_error_specs("retryable_errors", self.retryable_errors)
            object.__setattr__(self, "retryable_errors", specs)
        object.__setattr__(self, "jitter", _jitter_mode(self.jitter))
        breaker: Any = self.circuit_breaker  # a mapping is accepted, then converted
        if isinstance(breaker, Mapping):
            try:
                breaker = CircuitBreakerConfig.from_mapping(breaker)
            except ConfigError as error:
                # Name the nested field by its path, as the user wrote the mapping.
                raise ConfigError(f"circuit_breaker.{error}", field="circuit_breaker") from None
            object.__setattr__(self, "circuit_breaker", breaker)
        elif breaker is not None and not isinstance(breaker, CircuitBreakerConfig):
            raise ConfigError.invalid(
                "circuit_breaker", breaker, "a CircuitBreakerConfig, a mapping or None"
            )

    @classmethod
    def _env_extra(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        if any(key.startswith(f"{ENV_PREFIX}BREAKER_") for key in environ):
            return {"circuit_breaker": CircuitBreakerConfig.from_env(environ)}
        return {}

    def is_retryable(self, error: BaseException) -> bool:
        """Tell whether a failure with ``error`` may be retried under this config.

        A :class:`~dramatiq_shared.errors.PermanentError` never is and a
        :class:`~dramatiq_shared.errors.TransientError` always is. Otherwise the
        ``retryable_errors`` filter decides; ``None`` admits every ``Exception`` and
        Dramatiq's ``TimeLimitExceeded`` (a ``BaseException``, but a failure like any other).
        """
        if isinstance(error, PermanentError):
            return False
        if isinstance(error, TransientError):
            return True
        if self.retryable_errors is None:
            return isinstance(error, (Exception, TimeLimitExceeded))
        return error_matches(error, self.retryable_errors)


def _jitter_mode(value: Any) -> str:
    if value is True:
        return "decorrelated"
    if value is False:
        return "none"
    if value in JITTER_MODES:
        return str(value)
    raise ConfigError.invalid("jitter", value, f"True, False or one of {', '.join(JITTER_MODES)}")


_DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql")


def _redact(url: str) -> str:
    """Hide the password of a URL so error messages and logs never show it."""
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
            shown = _redact(self.url) if isinstance(self.url, str) else self.url
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
        environ = os.environ if environ is None else environ
        variables, _ = cls._env["url"]
        return any(environ.get(name) for name in variables)

    @property
    def redacted_url(self) -> str:
        """The URL with its password hidden, for logs."""
        return _redact(self.url)

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values, with the URL's password hidden."""
        return {**super().as_dict(), "url": self.redacted_url}


@dataclass(frozen=True)
class StatusConfig(_Config):
    """How status events are broadcast.

    Environment: ``DRAMATIQ_SHARED_STATUS_BROADCAST_INTERVAL``, ``..._MAX_RETRIES``,
    ``..._TIMEOUT``, ``..._BATCH_SIZE``, ``..._RECLAIM_AFTER``.

    Parameters:
      broadcast_interval: Progress events of one (import, note, context) closer together
        than this many milliseconds are coalesced, the newest winning; terminal events
        are never dropped. ``0`` sends every event. Default 250.
      max_retries: Retries of a failed publish before it is logged and counted. Default 3.
      timeout: Milliseconds one publish may take. Default 5000.
      batch_size: Status records written to the database per statement. Default 100.
      reclaim_after: Milliseconds after which events streamed through Redis but never
        persisted (their process died first) are persisted by another broadcaster; also
        how often each broadcaster looks for them. Default 60000.
    """

    broadcast_interval: int = 250
    max_retries: int = 3
    timeout: int = 5_000
    batch_size: int = 100
    reclaim_after: int = 60_000

    _env = _env_fields(
        "STATUS_",
        {
            "broadcast_interval": _parse_int,
            "max_retries": _parse_int,
            "timeout": _parse_int,
            "batch_size": _parse_int,
            "reclaim_after": _parse_int,
        },
    )

    def __post_init__(self) -> None:
        check_int("broadcast_interval", self.broadcast_interval, minimum=0, error=ConfigError)
        check_int("max_retries", self.max_retries, minimum=0, error=ConfigError)
        check_int("timeout", self.timeout, minimum=1, error=ConfigError)
        check_int("batch_size", self.batch_size, minimum=1, error=ConfigError)
        check_int("reclaim_after", self.reclaim_after, minimum=1, error=ConfigError)
