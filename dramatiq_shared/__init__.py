"""dramatiq-shared: the resilient shared layer under every Dramatiq worker.

Error handling with context, retries with backoff and jitter, circuit breakers whose
state all worker processes share, live status broadcasting and the idempotent
database operations of a recipe-import pipeline. docs/architecture.rst in the
repository is the map.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .actions import ActionRegistration, create_action_registration, register_actions
from .breakers import SharedCircuitBreaker
from .config import (
    CircuitBreakerConfig,
    DatabaseConfig,
    RetryBudgetConfig,
    RetryConfig,
    StatusConfig,
)
from .db import (
    DatabaseOperations,
    IngredientRef,
    NoteData,
    ParsedIngredientLineData,
    ParsedSegment,
    ParseStatus,
    PatternRef,
    PatternTracker,
    create_tables,
    init_database,
)
from .errors import (
    AuthError,
    CircuitOpenError,
    ConfigError,
    Defer,
    DramatiqSharedError,
    MessageTooLargeError,
    PermanentError,
    RetryBudgetExhaustedError,
    ServerError,
    TransientError,
    ValidationError,
    WorkerDiedError,
)
from .logging import configure_logging, message_context
from .middleware import (
    CircuitBreaker,
    DeathLimit,
    ErrorHandling,
    Heartbeat,
    Retry,
    RetryBudget,
    StatusBroadcast,
)
from .stack import Stack, get_stack, setup_broker
from .status.broadcaster import (
    Broadcaster,
    add_status_event_and_broadcast,
    add_status_event_and_broadcast_async,
    set_broadcaster,
)
from .status.completion import CompletionTracker
from .status.events import NoteStatus, StatusEvent
from .status.transport import MemoryTransport, RedisTransport
from .workers import WorkerStatus, close_workers, create_worker, get_worker_status

try:
    __version__ = version("dramatiq-shared")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # The suite on a broker, in one call.
    "Stack",
    "get_stack",
    "setup_broker",
    # Workers and actors, in bulk.
    "ActionRegistration",
    "WorkerStatus",
    "close_workers",
    "create_action_registration",
    "create_worker",
    "get_worker_status",
    "register_actions",
    # Configuration: frozen, validated on construction.
    "CircuitBreakerConfig",
    "DatabaseConfig",
    "RetryBudgetConfig",
    "RetryConfig",
    "StatusConfig",
    # Errors: one hierarchy under DramatiqSharedError.
    "AuthError",
    "CircuitOpenError",
    "ConfigError",
    "Defer",
    "DramatiqSharedError",
    "MessageTooLargeError",
    "PermanentError",
    "RetryBudgetExhaustedError",
    "ServerError",
    "TransientError",
    "ValidationError",
    "WorkerDiedError",
    # Middleware, each usable alone with broker.add_middleware().
    "CircuitBreaker",
    "DeathLimit",
    "ErrorHandling",
    "Heartbeat",
    "Retry",
    "RetryBudget",
    "StatusBroadcast",
    # The pipeline's database: idempotent, race-safe operations.
    "DatabaseOperations",
    "IngredientRef",
    "NoteData",
    "ParseStatus",
    "ParsedIngredientLineData",
    "ParsedSegment",
    "PatternRef",
    "PatternTracker",
    "create_tables",
    "init_database",
    # Status events: validated, coalesced, streamed live and kept in the database.
    "Broadcaster",
    "CompletionTracker",
    "MemoryTransport",
    "NoteStatus",
    "RedisTransport",
    "StatusEvent",
    "add_status_event_and_broadcast",
    "add_status_event_and_broadcast_async",
    "set_broadcaster",
    # Breakers shared by every worker process, for use around single calls too.
    "SharedCircuitBreaker",
    # Logging: one loguru stream, message context bound per message.
    "configure_logging",
    "message_context",
]
