"""The example's own sample recipes split and parse as their messy cases intend."""

from __future__ import annotations

import json
from pathlib import Path

from examples.recipe_import.notes import split_ingredients
from examples.recipe_import.parser import parse_line

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "recipe_import" / "data"


def recipes() -> dict[str, dict]:
    with (SAMPLES / "sample_recipes.jsonl").open(encoding="utf-8") as handle:
        return {r["title"]: r for r in map(json.loads, handle)}


def test_twenty_recipes_every_line_parses() -> None:
    found = recipes()
    assert len(found) == 20
    statuses = []
    for recipe in found.values():
        for block in split_ingredients(recipe["ingredients"]):
            statuses += [parse_line(line.text).status for line in block.lines]
    assert "ERROR" not in statuses
    assert statuses.count("CORRECT") >= 0.95 * len(statuses)


def test_headers_step_numbers_and_joined_strings() -> None:
    found = recipes()
    cake = split_ingredients(found["Lemon Drizzle Cake"]["ingredients"])
    assert [b.header for b in cake] == ["For the cake", "For the drizzle"]
    flatbread = split_ingredients(found["Simple Flatbread"]["ingredients"])
    assert [line.text for line in flatbread[0].lines] == [
        "250 g flour",
        "150 ml warm water",
        "1 tsp salt",
        "1 tbsp oil",
    ]
    oats = split_ingredients(found["Overnight Oats"]["ingredients"])
    assert len(oats[0].lines) == 5
    shakshuka = split_ingredients(found["Shakshuka"]["ingredients"])
    assert [b.header for b in shakshuka] == ["For the sauce", "For the eggs"]
