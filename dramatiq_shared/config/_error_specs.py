"""Lists of exceptions given as classes or names, as the retry and breaker configs take them."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

#: An exception class, or the simple name of one (matched against the class and its bases).
ErrorSpec = type[BaseException] | str

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
