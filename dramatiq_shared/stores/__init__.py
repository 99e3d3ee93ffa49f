"""The infrastructure's tables: dead letters, status event history, completion counts,
the audit of operators' actions.

Apart from the recipe-import domain (:mod:`dramatiq_shared.db`), and below both it and
:mod:`dramatiq_shared.status`: nothing here imports either. Every store is bound to
the database it is given and to no other (:func:`bound_model`).
"""

from __future__ import annotations

from .audit import AuditEntry, AuditLog
from .completions import CompletionCounts
from .connection import database_config, open_database
from .dead_letters import DeadLetterRecord, DeadLetterStore, fresh_message
from .runner import OperationRunner, RunsOperations, integrity_violation, is_transient
from .statements import Statement, slot
from .status_history import StatusHistory
from .tables import NoteState, bound_model

__all__ = [
    # Opening a database and running operations on it.
    "OperationRunner",
    "RunsOperations",
    "Statement",
    "bound_model",
    "database_config",
    "integrity_violation",
    "is_transient",
    "open_database",
    "slot",
    # The stores.
    "AuditEntry",
    "AuditLog",
    "CompletionCounts",
    "DeadLetterRecord",
    "DeadLetterStore",
    "NoteState",
    "StatusHistory",
    "fresh_message",
]
