"""Batches of status events waiting for a transport or a history that may refuse them.

One :class:`Outbox` holds what goes to the transport and another what goes to the
history: both deliver in order, retry within a timeout, back off while refused, and
keep a bounded number of events meanwhile.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from loguru import logger

from ..config import StatusConfig

__all__ = ["MAX_UNPERSISTED", "Batch", "Outbox", "retrying"]

T = TypeVar("T")
_Item = TypeVar("_Item")

#: Most events an outbox keeps while what it delivers to is unreachable.
MAX_UNPERSISTED = 100_000
#: Longest wait, in seconds, between two tries at a refused batch.
MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """Events that go out together, under one token across every try.

    A try whose reply was lost may have been applied: the token lets the receiver
    recognise the next try as the same batch instead of taking it twice.
    """

    #: What the batch holds, in order.
    items: list[T]
    #: When it was published, in ms since the epoch.
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))
    #: Its token, the same on every try.
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


class Outbox(Generic[T]):
    """Batches delivered in order; kept and tried again later while they are refused.

    A delivery is tried ``max_retries`` more times within ``timeout``. When it still
    fails, the batches stay, in order, and the outbox waits before the next try: 1 s,
    doubling up to 30 s, back to none after a success. Beyond ``MAX_UNPERSISTED``
    waiting events the oldest batches are dropped (never the newest) and counted.

    Parameters:
      what: What delivering does, for the log ("send", "persist").
      deliver: Delivers the batches it is given, or raises.
      config: ``max_retries`` and ``timeout``.
      together: Deliver every waiting batch in one call; else one batch a call.
      dropped: Called with the number of events dropped.
      clock: Monotonic seconds. Default :func:`time.monotonic`.
    """

    def __init__(
        self,
        what: str,
        deliver: Callable[[Sequence[Batch[T]]], object],
        config: StatusConfig,
        *,
        together: bool,
        dropped: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self._deliver = deliver
        self._config = config
        self._together = together
        self._dropped = dropped
        self._clock = clock
        self._batches: list[Batch[T]] = []
        self._backoff = 0.0
        #: No try before this time (monotonic seconds): the last one was refused.
        self.retry_at = 0.0

    def __len__(self) -> int:
        """How many events wait."""
        return sum(len(batch.items) for batch in self._batches)

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, batch: Batch[T]) -> None:
        """Queue ``batch`` after the others."""
        self._batches.append(batch)

    def drain(self, *, force: bool = False) -> bool:
        """Deliver the waiting batches in order, unless backing off (or ``force``).

        Returns:
          True when none is left waiting.
        """
        if not force and self._clock() < self.retry_at:
            return not self._batches
        while self._batches:
            head = self._batches[:] if self._together else self._batches[:1]
            deliver = functools.partial(self._deliver, head)
            if not retrying(self.what, deliver, self._config, self._clock):
                dropped = _drop_oldest(self._batches, lambda batch: len(batch.items))
                if dropped:
                    self._dropped(dropped)
                self._backoff = min(max(1.0, 2 * self._backoff), MAX_BACKOFF)
                self.retry_at = self._clock() + self._backoff
                return False
            del self._batches[: len(head)]
            self._backoff = self.retry_at = 0.0
        return True


def retrying(
    what: str,
    action: Callable[[], object],
    config: StatusConfig,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Call ``action``, retrying ``config.max_retries`` times within ``config.timeout``.

    Returns:
      True when a try succeeded; False (and the last error logged) when none did.
    """
    deadline = clock() + config.timeout / 1000
    last: Exception | None = None
    attempt = 0
    for attempt in range(config.max_retries + 1):
        try:
            action()
        except Exception as error:
            last = error
            if attempt == config.max_retries or clock() >= deadline:
                break
            time.sleep(min(0.05 * 2**attempt, max(0.0, deadline - clock())))
        else:
            return True
    logger.opt(exception=last).error(
        "Status events could not {} after {} tries: {}: {}",
        what,
        attempt + 1,
        type(last).__name__,
        last,
    )
    return False


def _drop_oldest(batches: MutableSequence[_Item], size: Callable[[_Item], int]) -> int:
    """Drop the oldest batches, never the newest, while more than ``MAX_UNPERSISTED``
    events wait in ``batches``; return how many events were dropped."""
    waiting = sum(size(batch) for batch in batches)
    dropped = 0
    while waiting > MAX_UNPERSISTED and len(batches) > 1:
        oldest = size(batches[0])
        del batches[0]
        waiting -= oldest
        dropped += oldest
    return dropped
