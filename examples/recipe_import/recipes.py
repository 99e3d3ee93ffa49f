"""Recipes as the example imports them: read from JSON lines, checked field by field.

A recipe is a JSON object; the fields the pipeline reads are

==================  ===========================================================
``title``           a string (default "")
``ingredients``     a list of strings, or one newline-joined string
``ingredient_groups``  optional: ``[{"header": str | null, "items": [str, ...]}]``;
                    when given, used instead of ``ingredients``
``instructions``    a list of strings, or one string (default none)
==================  ===========================================================

Other fields are kept as they are. A recipe whose fields have other types is refused
by :func:`check_recipe` with a :class:`~dramatiq_shared.ValidationError` naming the
field, the value and what is allowed; the main job sends it anyway, so its note fails
with that message and the rest of the import goes on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dramatiq_shared import ValidationError

__all__ = ["FIELDS", "Recipe", "check_recipe", "read_recipes"]

#: The fields a recipe carries into its note; the rest of a source record is left out.
FIELDS = ("id", "title", "ingredients", "ingredient_groups", "instructions", "language", "source")


@dataclass(frozen=True)
class Recipe:
    """A recipe whose fields have the types the pipeline reads."""

    title: str
    ingredients: str | tuple[str, ...]
    groups: tuple[Mapping[str, Any], ...]
    instructions: tuple[str, ...]


def _strings(field: str, value: Any, *, allow_text: bool) -> str | tuple[str, ...]:
    if allow_text and isinstance(value, str):
        return value
    if isinstance(value, list):
        for n, item in enumerate(value):
            if item is not None and not isinstance(item, str):
                raise ValidationError.invalid(f"{field}[{n}]", item, "a string")
        return tuple(item for item in value if item is not None)
    allowed = "a list of strings or one string" if allow_text else "a list of strings"
    raise ValidationError.invalid(field, value, allowed)


def check_recipe(data: Any) -> Recipe:
    """The recipe in ``data``, its fields checked.

    Raises:
      ValidationError: Naming the first field whose value is not allowed.
    """
    if not isinstance(data, Mapping):
        raise ValidationError.invalid("recipe", data, "a JSON object")
    title = data.get("title") or ""
    if not isinstance(title, str):
        raise ValidationError.invalid("title", title, "a string")
    ingredients = _strings("ingredients", data.get("ingredients") or [], allow_text=True)
    groups = data.get("ingredient_groups") or []
    if not isinstance(groups, list):
        raise ValidationError.invalid("ingredient_groups", groups, "a list of groups")
    for n, group in enumerate(groups):
        where = f"ingredient_groups[{n}]"
        if not isinstance(group, Mapping):
            raise ValidationError.invalid(where, group, '{"header": ..., "items": [...]}')
        header = group.get("header")
        if header is not None and not isinstance(header, str):
            raise ValidationError.invalid(f"{where}.header", header, "a string or null")
        _strings(f"{where}.items", group.get("items") or [], allow_text=False)
    instructions = _strings("instructions", data.get("instructions") or [], allow_text=True)
    return Recipe(
        title=title,
        ingredients=ingredients,
        groups=tuple(groups),
        instructions=(instructions,) if isinstance(instructions, str) else instructions,
    )


def read_recipes(path: Path | str, *, limit: int | None = None) -> list[Any]:
    """The recipes of a JSON-lines file, each trimmed to :data:`FIELDS` when an object.

    Values of other types are kept, so the pipeline refuses them note by note.

    Raises:
      ValidationError: When a line is not JSON (naming the file and line), or the file
        cannot be read.
    """
    recipes: list[Any] = []
    try:
        with open(path, encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, 1):
                if limit is not None and len(recipes) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError as error:
                    raise ValidationError(
                        f"{path}, line {number}: not JSON ({error})", field="recipes"
                    ) from None
                if isinstance(value, Mapping):
                    value = {key: value[key] for key in FIELDS if key in value}
                recipes.append(value)
    except OSError as error:
        raise ValidationError(f"cannot read {path}: {error.strerror}", field="recipes") from None
    return recipes
