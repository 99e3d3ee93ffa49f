"""What every config shares: loading from mappings and the environment, and the limits
more than one config checks against.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError

ENV_PREFIX = "DRAMATIQ_SHARED_"

#: The longest delay Dramatiq's brokers accept (7 days, in milliseconds).
MAX_DELAY = 7 * 24 * 3600 * 1000

_C = TypeVar("_C", bound="_Config")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _snake_case(key: str) -> str:
    return _CAMEL_HUMP.sub(r"_\1", key).lower()


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("an integer") from None


def _parse_number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("a number") from None


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


class _Config:
    """What every config shares: loading from mappings and the environment."""

    #: The environment variables read for each field, first set wins, and the parser
    #: of their text.
    _env: ClassVar[Mapping[str, tuple[tuple[str, ...], Callable[[str], Any]]]] = {}
    #: Other names a mapping may give a field by (snake_case of their camelCase), such
    #: as the names other libraries use for the same setting.
    _aliases: ClassVar[Mapping[str, str]] = {}

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
            name = cls._aliases.get(name, name)
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
