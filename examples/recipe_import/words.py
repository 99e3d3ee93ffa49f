"""Counts in words, as the job's progress, events and summary print them."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 note"``, ``"2 notes"``: ``count`` and the noun that agrees with it.

    Parameters:
      count: How many.
      noun: The singular.
      nouns: The plural, when it is not ``noun + "s"``.
    """
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
