"""Settings of a retry budget: how many retries the fleet may run against one downstream."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._checks import check_int
from ..errors import ConfigError
from ._base import _Config, _env_fields, _parse_int, _parse_number

#: What becomes of a retry the budget refuses.
WHEN_REFUSED = ("defer", "dead_letter")
#: The longest window, in milliseconds (an hour): the counts are kept that long in Redis.
MAX_WINDOW = 3_600_000
#: Time buckets a window is counted in.
BUCKETS = 10


def _check_number(name: str, value: Any) -> float:
    # bool is a number to Python, never to a user who wrote `ratio: true`.
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError.invalid(name, value, "a finite number >= 0")
    return float(value)


@dataclass(frozen=True)
class RetryBudgetConfig(_Config):
    """Settings of a retry budget, shared by every worker process (see
    :class:`~dramatiq_shared.middleware.RetryBudget`).

    A retry may run while the retries counted in the last ``window``, this one included,
    are at most ``ratio`` x the successes counted in it + ``minimum`` x the window's
    seconds: a downstream that fails everything sees a trickle of retries, not a storm.

    Environment: ``DRAMATIQ_SHARED_RETRY_BUDGET_RATIO``, ``..._MINIMUM``, ``..._WINDOW``,
    ``..._WHEN_REFUSED``.

    Parameters:
      ratio: Retries allowed per success in the window. Default 0.1 (Google SRE's 10%).
      minimum: Retries a second always allowed, successes or not; 0 only with
        ``"dead_letter"`` (a deferred retry would otherwise wait for ever once the
        successes stop). Default 10.
      window: Milliseconds the counts cover, from 100 to an hour; counted in ten buckets.
        Default 10000.
      when_refused: ``"defer"`` re-enqueues a refused retry for when the budget may
        admit it, using no attempt; ``"dead_letter"`` fails it for good. Default
        ``"defer"``.

    Raises:
      ConfigError: Naming the field, when a value is invalid.
    """

    ratio: float = 0.1
    minimum: float = 10
    window: int = 10_000
    when_refused: str = "defer"

    _env = _env_fields(
        "RETRY_BUDGET_",
        {
            "ratio": _parse_number,
            "minimum": _parse_number,
            "window": _parse_int,
            "when_refused": str.strip,
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", _check_number("ratio", self.ratio))
        object.__setattr__(self, "minimum", _check_number("minimum", self.minimum))
        check_int("window", self.window, minimum=100, maximum=MAX_WINDOW, error=ConfigError)
        if self.when_refused not in WHEN_REFUSED:
            raise ConfigError.invalid("when_refused", self.when_refused, "'defer' or 'dead_letter'")
        if self.minimum == 0 and self.when_refused == "defer":
            # Without successes nothing would ever admit a deferred retry.
            raise ConfigError.invalid(
                "minimum", self.minimum, "> 0 when refused retries are deferred ('defer')"
            )

    @property
    def bucket(self) -> int:
        """Milliseconds of one of the window's buckets."""
        return max(1, self.window // BUCKETS)

    def allowance(self, successes: int) -> float:
        """Retries a window with ``successes`` allows."""
        return self.ratio * successes + self.minimum * self.window / 1000
