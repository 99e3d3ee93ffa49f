"""Retry budgets: how many retries the fleet may run, by name, shared through Redis.

:class:`Budgets` holds one store a budget name, made on first use: in Redis
(:mod:`~dramatiq_shared.budgets.redis_state`) when given a client, else in this
process (:class:`~dramatiq_shared.budgets.state.LocalBudgetState`). Its thread sends
the successes each Redis store has waiting once they are a second old.
"""

from __future__ import annotations

import contextlib
import threading

import redis

from ..config import RetryBudgetConfig
from ..keys import DEFAULT_NAMESPACE, Keys
from ..metrics import RETRY_BUDGET_TOKENS
from .redis_state import RedisBudgetState
from .state import BudgetReply, BudgetState, BudgetUnavailableError, LocalBudgetState

__all__ = [
    "BudgetReply",
    "BudgetState",
    "BudgetUnavailableError",
    "Budgets",
    "LocalBudgetState",
    "RedisBudgetState",
]

#: Seconds between the thread's looks at the stores' waiting successes.
_LOOK_EVERY = 0.1


class Budgets:
    """The retry budgets of one process, by name.

    Parameters:
      redis_client: Where the budgets are kept; None keeps them in this process.
      config: The settings of every budget.
      namespace: Prefix of the Redis keys. Default ``"dramatiq_shared"``.
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        config: RetryBudgetConfig,
        *,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.config = config
        self._client = redis_client
        self._keys = Keys(namespace)
        self._states: dict[str, BudgetState] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __getitem__(self, name: str) -> BudgetState:
        state = self._states.get(name)
        if state is None:
            with self._lock:
                state = self._states.get(name)
                if state is None:
                    state = self._states[name] = self._make(name)
        return state

    def _make(self, name: str) -> BudgetState:
        if self._client is None:
            return LocalBudgetState(self.config)
        return RedisBudgetState(self._client, name, self.config, self._keys)

    def succeeded(self, name: str) -> None:
        """Count a success of budget ``name``; sent at once when enough are waiting, else
        by the thread within a second."""
        state = self[name]
        if self._thread is None and self._client is not None:
            self._start()
        if state.add_successes(1):
            self._flush(state)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stopped.clear()
                self._thread = threading.Thread(
                    target=self._flush_waiting, name="retry-budget-flush", daemon=True
                )
                self._thread.start()

    def spend(self, name: str) -> BudgetReply | None:
        """Admit and count one retry of budget ``name``, or refuse it; None when its store
        cannot be reached (the retry runs: fail open)."""
        try:
            reply = self[name].spend()
        except BudgetUnavailableError:
            return None
        RETRY_BUDGET_TOKENS.labels(name).set(reply.tokens)
        return reply

    def flush(self) -> None:
        """Send every budget's waiting successes now."""
        for state in list(self._states.values()):
            self._flush(state)

    def close(self) -> None:
        """Send what is waiting and stop the thread."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()

    def _flush_waiting(self) -> None:
        while not self._stopped.wait(_LOOK_EVERY):
            for state in list(self._states.values()):
                if state.due():
                    self._flush(state)

    @staticmethod
    def _flush(state: BudgetState) -> None:
        # Logged once by the store's outage; these successes are not counted.
        with contextlib.suppress(BudgetUnavailableError):
            state.flush()
