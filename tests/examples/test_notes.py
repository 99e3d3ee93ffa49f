"""Splitting notes into blocks and lines, on made-up and on real recipes."""

from __future__ import annotations

import json

import pytest

from examples.recipe_import.notes import is_header, split_ingredients
from examples.recipe_import.parser import parse_line
from tests.conftest import shared_data


def texts(blocks: list) -> list[tuple[str | None, list[str]]]:
    return [(block.header, [line.text for line in block.lines]) for block in blocks]


def test_headers_open_blocks_and_noise_is_dropped() -> None:
    items = [
        "2 cups flour",
        "1",
        "   ",
        "",
        "For the sauce:",
        "2 tbsp soy sauce",
        "3.",
        "### Topping",
        "a handful of chives",
        "**Garnish**",
        "lemon wedges",
    ]
    assert texts(split_ingredients(items)) == [
        (None, ["2 cups flour"]),
        ("For the sauce", ["2 tbsp soy sauce"]),
        ("Topping", ["a handful of chives"]),
        ("Garnish", ["lemon wedges"]),
    ]


def test_a_newline_joined_list_is_split() -> None:
    blocks = split_ingredients("1 egg\n200 g sugar\n\nFor the icing:\n50 g butter\n")
    assert texts(blocks) == [(None, ["1 egg", "200 g sugar"]), ("For the icing", ["50 g butter"])]
    places = [(line.block_index, line.line_index) for b in blocks for line in b.lines]
    assert places == [(0, 0), (0, 1), (1, 0)]


def test_groups_keep_their_headers() -> None:
    groups = [
        {"header": None, "items": ["1 onion"]},
        {"header": "Dough", "items": ["2 cups flour", "2"]},
    ]
    assert texts(split_ingredients(groups=groups)) == [
        (None, ["1 onion"]),
        ("Dough", ["2 cups flour"]),
    ]


@pytest.mark.parametrize(
    ("item", "header"),
    [
        ("For the sauce:", "For the sauce"),
        ("for garnish", "for garnish"),
        ("## Sauce ##", "Sauce"),
        ("Marinade:", "Marinade"),
        ("2 cups flour", None),
        ("Salt, to taste", None),
        ("For 2 people:", None),  # a number: not a header
        ("Optional: a pinch of saffron, soaked in 2 tbsp warm water for ten minutes", None),
    ],
)
def test_what_a_header_is(item: str, header: str | None) -> None:
    assert is_header(item) == header


def test_every_real_recipe_splits_and_parses_without_crashing() -> None:
    path = shared_data("recipes.jsonl")
    lines = 0
    with path.open(encoding="utf-8") as handle:
        for row in handle:
            recipe = json.loads(row)
            for block in split_ingredients(
                recipe.get("ingredients") or [], recipe.get("ingredient_groups")
            ):
                for line in block.lines:
                    assert line.text.strip()
                    assert parse_line(line.text).status in ("CORRECT", "INCORRECT")
                    lines += 1
    assert lines > 10_000
