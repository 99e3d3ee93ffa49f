"""Recipes are checked field by field, and read from JSON lines with clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dramatiq_shared import ValidationError
from examples.recipe_import.recipes import FIELDS, check_recipe, read_recipes


def test_a_recipe_with_the_types_the_pipeline_reads_is_accepted() -> None:
    recipe = check_recipe(
        {
            "title": "Soup",
            "ingredients": "1 onion\n2 carrots",
            "ingredient_groups": [{"header": None, "items": ["1 onion", None]}],
            "instructions": "Simmer.",
        }
    )
    assert recipe.ingredients == "1 onion\n2 carrots"
    assert recipe.instructions == ("Simmer.",)
    assert check_recipe({}).title == ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (42, "recipe must be a JSON object, got 42"),
        ({"title": 7}, "title must be a string, got 7"),
        ({"ingredients": {"a": 1}}, "ingredients must be a list of strings or one string"),
        ({"ingredients": ["1 egg", 2]}, r"ingredients\[1\] must be a string, got 2"),
        ({"ingredient_groups": "Sauce"}, "ingredient_groups must be a list of groups"),
        ({"ingredient_groups": [["1 egg"]]}, r"ingredient_groups\[0\] must be"),
        ({"ingredient_groups": [{"header": 1}]}, r"ingredient_groups\[0\].header must be a str"),
        ({"ingredient_groups": [{"items": "x"}]}, r"ingredient_groups\[0\].items must be a list"),
        ({"instructions": [None, 3]}, r"instructions\[1\] must be a string, got 3"),
    ],
)
def test_a_wrong_type_is_refused_naming_the_field(data: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_recipe(data)


def test_reading_trims_records_and_keeps_odd_values_for_the_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "recipes.jsonl"
    path.write_text('\ufeff{"title": "A", "raw_markdown": "# A", "source": "s"}\n\n42\n[1]\n')
    assert read_recipes(path) == [{"title": "A", "source": "s"}, 42, [1]]
    assert read_recipes(path, limit=1) == [{"title": "A", "source": "s"}]
    assert "raw_markdown" not in FIELDS


def test_a_line_that_is_not_json_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "recipes.jsonl"
    path.write_text('{"title": "A"}\n{"title": \n')
    with pytest.raises(ValidationError, match=r"recipes.jsonl, line 2: not JSON"):
        read_recipes(path)
    with pytest.raises(ValidationError, match=r"cannot read .*missing\.jsonl"):
        read_recipes(tmp_path / "missing.jsonl")
