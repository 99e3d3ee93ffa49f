"""Every Redis key of the library, built in one place.

Keys live in separate spaces under the namespace, so no name a user picks (an import
id, a breaker name, a host) can collide with a key of another kind or with a global
key: the user's part always comes last, after a fixed prefix that names its space.

==========================================  ================================================
``{ns}:import:status:{import_id}``          stream of one import's events (id ``N-0``)
``{ns}:import:completion:{import_id}``      hash: expected, done, failed items of the import
``{ns}:import:items:{import_id}``           set of the import's items counted so far
``{ns}:global:status``                      stream of every import's events, a batch an
                                            entry
``{ns}:global:imports``                     sorted set of import ids by last event time
``{ns}:global:last-ids``                    hash: each import's last event id
``{ns}:global:unpersisted``                 sorted set of the tokens of status batches a
                                            history has yet to persist
``{ns}:global:breaker-events``              stream of breaker transitions and refusals
``{ns}:global:deliveries``                  hash: each message fetched and not yet
                                            finished, its lone runs (see ``DeathLimit``)
``{ns}:global:dead-letters``                hash: message id -> a dead letter the database
                                            has yet to take (JSON), until written
``{ns}:batch:ids:{token}``                  the ids a status batch got
``{ns}:batch:events:{token}``               the batch's events, until persisted
``{ns}:breaker:state:{name}``               hash: one breaker's state
``{ns}:breaker:trials:{name}``              sorted set: the half-open trial leases
``{ns}:breaker:{kind}-window:{name}``       a breaker's window of rates: a string of
                                            outcomes (count) or a hash of buckets (time)
``{ns}:breaker:changes``                    pub/sub channel of breaker state changes
``{ns}:retry-budget:{name}``                hash: one retry budget's successes and
                                            retries by time bucket (``s<n>``, ``r<n>``)
``{ns}:worker:{host}:{pid}``                a worker process's heartbeat
==========================================  ================================================

No fixed prefix above is the start of another, so two keys are equal only when they
are of one kind and their user's parts are equal. Patterns for SCAN escape the
namespace, so a namespace holding ``*`` or ``[`` matches only itself.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_NAMESPACE", "Keys"]

#: The namespace every key is under unless a caller names another.
DEFAULT_NAMESPACE = "dramatiq_shared"

_GLOB = re.compile(r"([*?\[\]\\])")


def _escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


class Keys:
    """The key layout under one namespace.

    Parameters:
      namespace: Prefix of every key. Default ``"dramatiq_shared"``.
    """

    __slots__ = ("namespace",)

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"Keys({self.namespace!r})"

    # --- per import ------------------------------------------------------------------

    def status(self, import_id: str) -> str:
        """The stream of one import's events."""
        return f"{self.namespace}:import:status:{import_id}"

    def completion(self, import_id: str) -> str:
        """The hash of the import's expected, done and failed items."""
        return f"{self.namespace}:import:completion:{import_id}"

    def completion_items(self, import_id: str) -> str:
        """The set of the import's items counted so far."""
        return f"{self.namespace}:import:items:{import_id}"

    # --- global ------------------------------------------------------------------------

    @property
    def all_status(self) -> str:
        """The stream of every import's events."""
        return f"{self.namespace}:global:status"

    @property
    def imports(self) -> str:
        """The sorted set of import ids by last event time."""
        return f"{self.namespace}:global:imports"

    @property
    def last_ids(self) -> str:
        """The hash of each import's last event id (its stream's last entry's)."""
        return f"{self.namespace}:global:last-ids"

    @property
    def unpersisted(self) -> str:
        """The sorted set of the tokens of batches a history has yet to persist."""
        return f"{self.namespace}:global:unpersisted"

    @property
    def breaker_events(self) -> str:
        """The stream of breaker transitions and refused calls."""
        return f"{self.namespace}:global:breaker-events"

    @property
    def deliveries(self) -> str:
        """The hash of each message fetched and not yet finished, with its lone runs."""
        return f"{self.namespace}:global:deliveries"

    @property
    def dead_letters(self) -> str:
        """The hash of the dead letters kept until the database takes them, by message id."""
        return f"{self.namespace}:global:dead-letters"

    # --- status batches ----------------------------------------------------------------

    def batch(self, token: str) -> str:
        """The ids a status batch got."""
        return f"{self.namespace}:batch:ids:{token}"

    def batch_events(self, token: str) -> str:
        """The events of a status batch, until persisted."""
        return f"{self.namespace}:batch:events:{token}"

    # --- breakers ----------------------------------------------------------------------

    def breaker(self, name: str) -> str:
        """The hash of one breaker's state."""
        return f"{self.namespace}:breaker:state:{name}"

    def breaker_trials(self, name: str) -> str:
        """The breaker's half-open trial leases: token -> expiry."""
        return f"{self.namespace}:breaker:trials:{name}"

    def breaker_window(self, name: str, kind: str) -> str:
        """The window of a breaker that counts rates; ``kind`` is ``count`` or ``time``."""
        return f"{self.namespace}:breaker:{kind}-window:{name}"

    @property
    def breaker_changes(self) -> str:
        """The pub/sub channel of breaker state changes."""
        return f"{self.namespace}:breaker:changes"

    def breaker_pattern(self) -> str:
        """A SCAN pattern matching every breaker's state key."""
        return f"{_escape(self.breaker(''))}*"

    def breaker_name(self, key: str) -> str:
        """The breaker's name in a key made by :meth:`breaker`."""
        return key[len(self.breaker("")) :]

    # --- retry budgets ----------------------------------------------------------------

    def retry_budget(self, name: str) -> str:
        """The hash of one retry budget's counts by time bucket."""
        return f"{self.namespace}:retry-budget:{name}"

    # --- workers -----------------------------------------------------------------------

    def worker(self, host: str, pid: int) -> str:
        """A worker process's heartbeat."""
        return f"{self.namespace}:worker:{host}:{pid}"

    def worker_pattern(self) -> str:
        """A SCAN pattern matching every worker's heartbeat key."""
        return f"{_escape(self.namespace)}:worker:*"
