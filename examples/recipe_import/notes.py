"""Splitting a recipe note's ingredients into blocks and lines.

A recipe gives its ingredients as a list of items, or as groups of items with headers
("For the sauce"), or as one string of newline-joined lines. :func:`split_ingredients`
turns any of them into blocks of lines:

* an item that is a section header opens a new block: it ends with a colon and has
  no digit ("For the sauce:"), starts with ``#`` ("### Sauce"), is wrapped in ``**``,
  or reads "For the …" in at most five words;
* bare step numbers ("1", "2.", "3)"), empty and whitespace-only items (invisible
  characters and HTML spaces such as ``&nbsp;`` included) are dropped;
* an item holding several lines (a list delivered as one newline-joined string) is
  split into them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .parser import clean

__all__ = ["Block", "NoteLine", "is_header", "split_ingredients"]

_STEP_NUMBER = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]?\s*$", re.IGNORECASE)
_MARKDOWN_HEADER = re.compile(r"^\s*#{1,6}\s*(.+?)\s*#*\s*$")
_BOLD_HEADER = re.compile(r"^\s*\*\*(.+?)\*\*\s*:?\s*$")
_FOR_THE = re.compile(r"^\s*for\s+(?:the\s+)?\S", re.IGNORECASE)


@dataclass(frozen=True)
class NoteLine:
    """One ingredient line: its block, its place in the block, and its text."""

    block_index: int
    line_index: int
    text: str


@dataclass(frozen=True)
class Block:
    """A block of ingredient lines, with the header that opened it (None for the first)."""

    index: int
    header: str | None
    lines: tuple[NoteLine, ...]


def is_header(item: str) -> str | None:
    """The header's text when ``item`` is a section header, else None."""
    text = item.strip()
    for pattern in (_MARKDOWN_HEADER, _BOLD_HEADER):
        found = pattern.match(text)
        if found:
            return found.group(1).strip(" :*")
    if text.endswith(":") and not re.search(r"\d", text) and len(text.split()) <= 8:
        return text.rstrip(":").strip()
    if _FOR_THE.match(text) and len(text.split()) <= 5 and not re.search(r"\d", text):
        return text.rstrip(":").strip()
    return None


def _items(given: str | Iterable[Any]) -> list[str]:
    items = [given] if isinstance(given, str) else [str(item) for item in given if item is not None]
    return [line for item in items for line in item.splitlines()]


def split_ingredients(
    ingredients: str | Iterable[Any] = (),
    groups: Sequence[Mapping[str, Any]] | None = None,
) -> list[Block]:
    """Blocks of ingredient lines from a plain list (or string), or from headed groups.

    Parameters:
      ingredients: The items, or one newline-joined string; used when ``groups`` is empty.
      groups: ``[{"header": ..., "items": [...]}]``, as recipe sources give them.

    Returns:
      The non-empty blocks, numbered from 0, their lines numbered from 0.
    """
    headed: list[tuple[str | None, list[str]]] = []
    sources = groups or [{"header": None, "items": ingredients}]
    for group in sources:
        header = group.get("header")
        current: list[str] = []
        headed.append(
            (header.strip() if isinstance(header, str) and header.strip() else None, current)
        )
        for item in _items(group.get("items") or []):
            found = is_header(item)
            if found is not None:
                current = []
                headed.append((found, current))
            elif clean(item) and not _STEP_NUMBER.match(item):
                current.append(item.strip())
    blocks = []
    for header, lines in headed:
        if lines:
            index = len(blocks)
            blocks.append(
                Block(
                    index, header, tuple(NoteLine(index, n, text) for n, text in enumerate(lines))
                )
            )
    return blocks
