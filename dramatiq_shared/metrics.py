"""Prometheus metrics of the suite, through prometheus_client.

=================================================  =========================================
``dramatiq_shared_retry_decisions_total``          retry decisions by actor, error type and
                                                   action (retry, exhausted, deferred, ...)
``dramatiq_shared_errors_total``                   failed attempts by actor and error type
``dramatiq_shared_breaker_state``                  0 closed, 1 half-open, 2 open, as last seen
``dramatiq_shared_breaker_transitions_total``      transitions by breaker and new state
``dramatiq_shared_breaker_rejected_total``         calls a breaker refused
``dramatiq_shared_breaker_window``                 a breaker that counts rates: its window's
                                                   calls, failure_rate and slow_call_rate (%)
``dramatiq_shared_retry_budget_refused_total``     retries a retry budget refused, by budget
``dramatiq_shared_retry_budget_tokens``            retries a budget would admit now, as last
                                                   seen
``dramatiq_shared_db_operation_seconds``           database operation durations
``dramatiq_shared_broadcasts_total``               status events sent, coalesced, failed
``dramatiq_shared_messages_in_flight``             messages being processed
=================================================  =========================================

Several worker processes (``dramatiq app -p 4``) share their metrics the way Dramatiq's
own Prometheus middleware does: prometheus_client's multiprocess mode. Point
``PROMETHEUS_MULTIPROC_DIR`` at an empty folder before the workers start, and serve it
with ``dramatiq-shared metrics --port 9191`` (or the relay's ``/metrics`` on the same
machine). Without it, each process serves only its own metrics.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "BREAKER_REJECTED",
    "BREAKER_STATE",
    "BREAKER_TRANSITIONS",
    "BREAKER_WINDOW",
    "BROADCASTS",
    "DB_SECONDS",
    "ERRORS",
    "IN_FLIGHT",
    "RELAY_REFUSALS",
    "RETRY_BUDGET_REFUSED",
    "RETRY_BUDGET_TOKENS",
    "RETRY_DECISIONS",
    "registry",
    "render",
]

RETRY_DECISIONS = Counter(
    "dramatiq_shared_retry_decisions",
    "Retry decisions, by actor, error type and action.",
    ["actor", "error_type", "action"],
)
ERRORS = Counter(
    "dramatiq_shared_errors", "Failed attempts, by actor and error type.", ["actor", "error_type"]
)
BREAKER_STATE = Gauge(
    "dramatiq_shared_breaker_state",
    "Circuit breaker state as last seen: 0 closed, 1 half-open, 2 open.",
    ["breaker"],
    multiprocess_mode="mostrecent",
)
BREAKER_TRANSITIONS = Counter(
    "dramatiq_shared_breaker_transitions",
    "Circuit breaker transitions, by breaker and the state entered.",
    ["breaker", "state"],
)
BREAKER_REJECTED = Counter(
    "dramatiq_shared_breaker_rejected", "Calls a circuit breaker refused.", ["breaker"]
)
BREAKER_WINDOW = Gauge(
    "dramatiq_shared_breaker_window",
    "A breaker's window as last reported: calls, failure_rate and slow_call_rate (percent).",
    ["breaker", "measure"],
    multiprocess_mode="mostrecent",
)
RETRY_BUDGET_REFUSED = Counter(
    "dramatiq_shared_retry_budget_refused", "Retries a retry budget refused.", ["budget"]
)
RETRY_BUDGET_TOKENS = Gauge(
    "dramatiq_shared_retry_budget_tokens",
    "Retries a retry budget would admit now, as last seen.",
    ["budget"],
    multiprocess_mode="mostrecent",
)
DB_SECONDS = Histogram(
    "dramatiq_shared_db_operation_seconds",
    "Database operation durations, retries included.",
    ["operation"],
)
BROADCASTS = Counter(
    "dramatiq_shared_broadcasts",
    "Status events: sent, coalesced, failed, reclaimed (persisted for a dead process).",
    ["outcome"],
)
RELAY_REFUSALS = Counter(
    "dramatiq_shared_relay_refusals",
    "What the relay refused: bad tokens, other imports, malformed or oversized frames,"
    " floods, foreign origins; by reason.",
    ["reason"],
)
IN_FLIGHT = Gauge(
    "dramatiq_shared_messages_in_flight",
    "Messages being processed.",
    multiprocess_mode="livesum",
)

#: Breaker state names to the gauge's values.
STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}


def registry() -> CollectorRegistry:
    """The registry to serve: the worker processes' shared folder when there is one."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        return shared
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST
