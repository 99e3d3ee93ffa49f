"""How status events are broadcast."""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import check_int
from ..errors import ConfigError
from ._base import _Config, _env_fields, _parse_int


@dataclass(frozen=True)
class StatusConfig(_Config):
    """How status events are broadcast.

    Environment: ``DRAMATIQ_SHARED_STATUS_BROADCAST_INTERVAL``, ``..._MAX_RETRIES``,
    ``..._TIMEOUT``, ``..._BATCH_SIZE``, ``..._RECLAIM_AFTER``, ``..._LINGER``.

    Parameters:
      broadcast_interval: Progress events of one (import, note, context) closer together
        than this many milliseconds are coalesced, the newest winning; terminal events
        are never dropped. ``0`` sends every event. Default 250.
      max_retries: Retries of a failed publish before it is logged and counted. Default 3.
      timeout: Milliseconds one publish may take. Default 5000.
      batch_size: Status records written to the database per statement. Default 100.
      reclaim_after: Milliseconds after which events streamed through Redis but never
        persisted (their process died first) are persisted by another broadcaster; also
        how often each broadcaster looks for them. Default 60000.
      linger: Milliseconds the broadcaster gathers events published after one another
        before it sends them, so a busy worker sends a batch rather than an event at a
        time (one round trip and a few Redis commands a batch). ``0`` sends what is
        there at once. Default 20.
    """

    broadcast_interval: int = 250
    max_retries: int = 3
    timeout: int = 5_000
    batch_size: int = 100
    reclaim_after: int = 60_000
    linger: int = 20

    _env = _env_fields(
        "STATUS_",
        {
            "broadcast_interval": _parse_int,
            "max_retries": _parse_int,
            "timeout": _parse_int,
            "batch_size": _parse_int,
            "reclaim_after": _parse_int,
            "linger": _parse_int,
        },
    )

    def __post_init__(self) -> None:
        check_int("broadcast_interval", self.broadcast_interval, minimum=0, error=ConfigError)
        check_int("max_retries", self.max_retries, minimum=0, error=ConfigError)
        check_int("timeout", self.timeout, minimum=1, error=ConfigError)
        check_int("batch_size", self.batch_size, minimum=1, error=ConfigError)
        check_int("reclaim_after", self.reclaim_after, minimum=1, error=ConfigError)
        check_int("linger", self.linger, minimum=0, maximum=10_000, error=ConfigError)
