"""The fault tests break what the relay tests run, so they share its fixtures."""

from __future__ import annotations

from ..relay.conftest import redis_relay, relay_process

__all__ = ["redis_relay", "relay_process"]
