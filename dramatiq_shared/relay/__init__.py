"""The websocket relay: status events to browsers, with replay, resume and signed tokens."""

from __future__ import annotations

from .app import create_app
from .sources import MemorySource, RedisSource

__all__ = ["MemorySource", "RedisSource", "create_app"]
