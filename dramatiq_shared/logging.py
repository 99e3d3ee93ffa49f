"""Logging on loguru: one stream for the library, Dramatiq and the user's code.

:func:`configure_logging` installs a single loguru sink, human-readable or one JSON
object a line, and routes the standard library's ``logging`` (which Dramatiq logs
through) into it. :func:`message_context` binds the fields that identify a message
to every record logged while it is processed, whichever logger emits it.
:data:`WORKER_RECORDS` trims Dramatiq's worker's record of a failure that
``ErrorHandling`` logs itself.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from .errors import ConfigError, PermanentError

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.broker import MessageProxy
    from loguru import Record

__all__ = [
    "WORKER_RECORDS",
    "InterceptHandler",
    "WorkerRecords",
    "carried",
    "carried_all",
    "configure_logging",
    "message_context",
]

#: The message fields :func:`message_context` binds, in the order the human format shows them.
CONTEXT_FIELDS = ("message_id", "actor", "queue", "import_id", "note_id")

_HUMAN = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{name}</cyan>:<cyan>{line}</cyan> - <level>{message}</level>"
)


class InterceptHandler(logging.Handler):
    """A standard-library handler that passes every record on to loguru.

    The record keeps its level, exception and the caller's location, so Dramatiq's own
    log lines look like any other in the loguru stream.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record`` to loguru."""
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Walk out of the logging module so loguru reports the real caller.
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


class WorkerRecords(logging.Filter):
    """Dramatiq's worker's record of a failure, trimmed to what ErrorHandling's record of
    it does not say.

    Dramatiq logs every exception outside an actor's ``throws`` at ERROR with its
    traceback, and ErrorHandling logs the same failure with the attempt's context.
    Formatting a traceback is most of what logging a failure costs (about 75 µs of
    100 here), so Dramatiq's line keeps its text and loses the traceback. A
    ``PermanentError`` (a ``ValidationError`` of bad input, say) is an expected,
    handled failure: its line becomes INFO, in Dramatiq's own words for an actor's
    ``throws``. ErrorHandling installs it on Dramatiq's worker logger while at least
    one worker with that middleware runs.
    """

    LOGGER = "dramatiq.worker.WorkerThread"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._workers = 0

    def install(self) -> None:
        """Filter Dramatiq's worker records (one more worker counts on it)."""
        with self._lock:
            self._workers += 1
            if self._workers == 1:
                logging.getLogger(self.LOGGER).addFilter(self)

    def uninstall(self) -> None:
        """Stop filtering once no worker counts on it."""
        with self._lock:
            self._workers = max(0, self._workers - 1)
            if self._workers == 0:
                logging.getLogger(self.LOGGER).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if not exc_info or not str(record.msg).startswith("Failed to process message"):
            return True
        if isinstance(exc_info[1], PermanentError):
            message = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "Failed to process message %s with expected exception %s."
            record.args = (message, type(exc_info[1]).__name__)
            record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        return True


#: The one filter of this process (Dramatiq's worker logger is one per process).
WORKER_RECORDS = WorkerRecords()


def _human_format(record: Record) -> str:
    # Extras are referenced, not inlined: loguru formats the returned string once more,
    # and a value holding braces would break it.
    extras = " ".join(f"{key}={{extra[{key}]}}" for key in _ordered(record["extra"]))
    return _HUMAN + (f" | {extras}" if extras else "") + "\n{exception}"


def _ordered(extra: Mapping[str, Any]) -> list[str]:
    known = [key for key in CONTEXT_FIELDS if key in extra]
    return known + sorted(key for key in extra if key not in CONTEXT_FIELDS and key.isidentifier())


def configure_logging(
    level: str | int = "INFO", *, json: bool = False, sink: TextIO | None = None
) -> int:
    """Send all logging to one loguru sink.

    Removes loguru's existing handlers, adds one for ``sink``, and makes the standard
    library's root logger forward to loguru at the same level, so Dramatiq's records
    join the stream and records below ``level`` are not even built.

    Parameters:
      level: The lowest level written: a loguru level name (``"DEBUG"``, ``"INFO"``,
        ...) or number. Default ``"INFO"``.
      json: Write one JSON object a line (loguru's ``serialize``), with bound context
        under ``record.extra``, instead of human-readable lines. Default False.
      sink: Where lines go. Default ``sys.stderr``.

    Returns:
      The loguru handler id, for ``logger.remove()``.

    Raises:
      ConfigError: When ``level`` is not a known level.
    """
    try:
        levelno = level if isinstance(level, int) else logger.level(str(level).upper()).no
    except ValueError:
        raise ConfigError.invalid("level", level, "a loguru level name or number") from None
    logger.remove()
    handler_id = logger.add(
        sys.stderr if sink is None else sink,
        level=levelno,
        format="{message}" if json else _human_format,
        serialize=json,
        colorize=False if json else None,
        backtrace=False,
        diagnose=False,
    )
    logging.basicConfig(handlers=[InterceptHandler()], level=levelno, force=True)
    return handler_id


def message_context(
    message: dramatiq.Message[Any] | MessageProxy,
    actor: dramatiq.Actor[..., Any] | None = None,
    *,
    ids: tuple[Any, ...] | None = None,
    **extra: Any,
) -> AbstractContextManager[None]:
    """Bind a message's identity to every record logged in its scope.

    Binds ``message_id``, ``actor``, ``queue`` and, when the message carries them (see
    :func:`carried`), ``import_id`` and ``note_id``. The binding lives in a context
    variable, so each worker thread sees only its own message.

    Use it as ``with message_context(message): ...``; middleware that spans two hooks
    can call ``__enter__`` in ``before_process_message`` and ``__exit__`` after it.

    Parameters:
      message: The message being processed.
      actor: Its actor, to find ids passed as positional arguments.
      ids: Its ``(import_id, note_id)`` when already looked up; default looked up here.
      **extra: Further fields to bind.

    Returns:
      A context manager that binds the fields while it is entered.
    """
    import_id, note_id = ids or carried_all(message, _IDS, actor)
    fields: dict[str, Any] = {
        "message_id": message.message_id,
        "actor": message.actor_name,
        "queue": message.queue_name,
    }
    if import_id is not None:
        fields["import_id"] = import_id
    if note_id is not None:
        fields["note_id"] = note_id
    if extra:
        fields.update(extra)
    return logger.contextualize(**fields)


def carried(
    message: dramatiq.Message[Any] | MessageProxy,
    name: str,
    actor: dramatiq.Actor[..., Any] | None = None,
) -> Any:
    """The value a message carries for ``name`` (``import_id``, ``note_id``), or None.

    Looked for as a keyword argument, then, when ``actor`` is given, as the positional
    argument of the actor's parameter of that name, then as a message option.
    """
    return carried_all(message, (name,), actor)[0]


def carried_all(
    message: dramatiq.Message[Any] | MessageProxy,
    names: tuple[str, ...],
    actor: dramatiq.Actor[..., Any] | None = None,
) -> tuple[Any, ...]:
    """What the message carries for each of ``names``, as :func:`carried` finds it, the
    message's fields read once for all of them (this runs for every message)."""
    # Typed as a dict and a tuple, but a foreign producer's message may hold anything.
    kwargs: Any = message.kwargs
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        kwargs = {}
    args: Any = message.args
    if not isinstance(args, (tuple, list)):
        args = ()
    positions = _positions(actor.fn) if args and actor is not None else _NO_POSITIONS
    options = message.options
    values = []
    for name in names:
        value = kwargs.get(name)
        if value is None:
            position = positions.get(name)
            if position is not None and position < len(args):
                value = args[position]
            if value is None:
                value = options.get(name)
        values.append(value)
    return tuple(values)


_IDS = ("import_id", "note_id")
_NO_POSITIONS: dict[str, int] = {}


@functools.lru_cache(maxsize=1_024)
def _positions(fn: Any) -> dict[str, int]:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name: n for n, p in enumerate(parameters) if p.kind in positional}
