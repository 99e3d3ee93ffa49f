"""What every reader of Redis replies needs."""

from __future__ import annotations

__all__ = ["text"]


def text(value: bytes | str) -> str:
    """A Redis reply as text: clients return bytes unless told to decode."""
    return value.decode() if isinstance(value, bytes) else value
