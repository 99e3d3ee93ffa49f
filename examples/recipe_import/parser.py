"""An ingredient-line parser for the recipe-import example: amount, unit, ingredient, comment.

A small grammar, applied left to right after cleaning the text:

=================  ==========================================================
``vague_amount``   "a pinch of", "to taste", "a handful of", "q.b."...
``amount``         12 | 1.5 | 0,5 | 1/2 | 1 1/2 | ½ | 2½ | 1, fraction slash, 2
``range``          amount (hyphen | en or em dash | to | or) amount: "1-2", "1 to 1 1/4"
``multiplier``     amount x amount: "2 x 400 g"
``unit``           a word of :data:`UNITS` (plural and abbreviated forms, a
                   trailing dot), also glued to the amount ("400g")
``ingredient``     what follows, up to a comma or a parenthesis
``comment``        the rest: "finely chopped", "(about 2 cups)"
=================  ==========================================================

Cleaning: HTML entities and tags, byte-order marks, zero-width and non-breaking
spaces, unicode and slash fractions glued to numbers ("2½" → "2 1/2"), leading bullets,
runs of whitespace. A line without an ingredient is INCORRECT; nothing raises.

Units come from a vocabulary of our own: pint's registry knows cup, tablespoon and
gram but not clove, can, pinch or bunch, and adds half a second of import time to
every worker; sixty words do the job offline.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["UNITS", "ParsedLine", "Segment", "canonical_unit", "clean", "parse_line"]

#: Canonical unit names, each with the other ways recipes write it.
UNITS: dict[str, tuple[str, ...]] = {
    "cup": ("cups", "c"),
    "tablespoon": ("tablespoons", "tbsp", "tbsps", "tbs", "tbl", "tbl", "T"),
    "teaspoon": ("teaspoons", "tsp", "tsps", "t"),
    "gram": ("grams", "g", "gr", "grammes", "gramme"),
    "kilogram": ("kilograms", "kg", "kgs", "kilo", "kilos"),
    "milligram": ("milligrams", "mg"),
    "millilitre": ("millilitres", "milliliter", "milliliters", "ml", "mls"),
    "centilitre": ("centilitres", "cl"),
    "decilitre": ("decilitres", "dl"),
    "litre": ("litres", "liter", "liters", "l"),
    "ounce": ("ounces", "oz", "ozs"),
    "fluid ounce": ("fluid ounces", "fl oz", "fl. oz"),
    "pound": ("pounds", "lb", "lbs"),
    "pint": ("pints", "pt"),
    "quart": ("quarts", "qt"),
    "gallon": ("gallons", "gal"),
    "clove": ("cloves",),
    "can": ("cans", "tin", "tins"),
    "package": ("packages", "pkg", "packet", "packets", "pack", "packs"),
    "pinch": ("pinches",),
    "dash": ("dashes",),
    "drop": ("drops",),
    "handful": ("handfuls",),
    "bunch": ("bunches",),
    "sprig": ("sprigs",),
    "slice": ("slices",),
    "piece": ("pieces",),
    "stick": ("sticks",),
    "stalk": ("stalks",),
    "head": ("heads",),
    "jar": ("jars",),
    "bottle": ("bottles",),
    "bag": ("bags",),
    "box": ("boxes",),
    "container": ("containers",),
    "sheet": ("sheets",),
    "leaf": ("leaves",),
    "rib": ("ribs",),
    "bulb": ("bulbs",),
    "loaf": ("loaves",),
    "strip": ("strips",),
    "fillet": ("fillets",),
    "inch": ("inches", "in"),
    "centimetre": ("centimetres", "cm"),
    "stk": ("stk.",),
}
_LOOKUP = {alias.lower(): name for name, aliases in UNITS.items() for alias in (name, *aliases)}
# "T" and "t" (tablespoon, teaspoon) are told apart by case.
_CASED = {"T": "tablespoon", "t": "teaspoon"}

_VAGUE = re.compile(
    r"^(a\s+pinch\s+of|pinch\s+of|a\s+dash\s+of|a\s+handful\s+of|a\s+few|a\s+little|"
    r"some|to\s+taste|as\s+needed|as\s+required|q\.?\s*b\.?|qs)\b\.?\s*",
    re.IGNORECASE,
)
_TAIL = re.compile(r",?\s*\b(to\s+taste|as\s+needed|as\s+required|optional)\s*\.?$", re.I)
_NUMBER = r"(?:\d+\s+\d+/\d+|\d+/\d+|\d+(?:[.,]\d+)?)"
_AMOUNT = re.compile(
    rf"^(?P<first>{_NUMBER})"
    rf"(?:\s*(?P<joiner>-|\u2013|\u2014|to|or|x|\u00d7)\s*(?P<second>{_NUMBER}))?",
    re.IGNORECASE,
)
_TIMES = ("x", "\u00d7")
_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "half": 0.5,
}
_VULGAR = {unicodedata.numeric(c): c for c in "½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞"}
_TAGS = re.compile(r"<[^>]+>")
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060"), None)


@dataclass(frozen=True)
class Segment:
    """A piece of a line, with the grammar rule that found it."""

    index: int
    rule: str
    type: str
    value: str


@dataclass(frozen=True)
class ParsedLine:
    """What :func:`parse_line` made of a line."""

    text: str
    quantity: float | None = None
    unit: str | None = None
    name: str = ""
    comment: str = ""
    status: str = "INCORRECT"
    segments: tuple[Segment, ...] = field(default=())

    @property
    def rules(self) -> list[str]:
        """The rule sequence, as PatternTracker counts it."""
        return [segment.rule for segment in self.segments]


def clean(text: str) -> str:
    """The line's text as the grammar reads it (see the module's docstring)."""
    text = html.unescape(html.unescape(text))
    text = _TAGS.sub(" ", text).translate(_INVISIBLE).replace("\u00a0", " ")
    text = text.replace("\u2044", "/")  # the fraction slash
    for value, glyph in _VULGAR.items():
        fraction = Fraction(value).limit_denominator(8)
        text = re.sub(rf"(\d)\s*{glyph}", rf"\1 {fraction}", text)
        text = text.replace(glyph, f" {fraction}")
    text = re.sub(r"^\s*[-*•·▪◦]+\s*", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _value(number: str) -> float | None:
    """The number's value, or None for one that is not ("1/0")."""
    number = number.replace(",", ".").strip()
    try:
        if " " in number:
            whole, part = number.split(" ", 1)
            return float(whole) + float(Fraction(part))
        return float(Fraction(number)) if "/" in number else float(number)
    except (ValueError, ZeroDivisionError):
        return None


def canonical_unit(word: str) -> str | None:
    """The canonical name of a unit as written, or None when it is not one."""
    word = word.strip()
    if word in _CASED:
        return _CASED[word]
    return _LOOKUP.get(word.lower().rstrip("."))


def parse_line(text: str) -> ParsedLine:
    """Parse one ingredient line; never raises on odd input.

    Returns:
      The amount (a float; the first of a range or a multiplier), the unit (canonical
      name), the ingredient, the comment, the status (CORRECT; INCORRECT when no
      ingredient was found; ERROR if the parser itself failed) and the segments.
    """
    line = clean(text)
    try:
        return _Reading(line).parse()
    except Exception:  # a bug must cost one line, not the note it is in
        return ParsedLine(line, status="ERROR")


class _Reading:
    """One line being read left to right, one grammar step a method."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.rest = line
        self.segments: list[Segment] = []
        self.quantity: float | None = None
        self.unit: str | None = None
        self.aside = ""

    def take(self, rule: str, kind: str, value: str) -> None:
        self.segments.append(Segment(len(self.segments), rule, kind, value.strip()))

    def parse(self) -> ParsedLine:
        self.amount()
        bracket = re.match(r"\s*\(([^)]*)\)", self.rest)  # "1 (14 ounce) can ...": an aside
        if bracket:
            self.aside, self.rest = bracket.group(1), self.rest[bracket.end() :]
        self.unit_word()
        # An alternative measure after a slash ("/½oz", "/18fl oz"), then "of".
        rest = re.sub(rf"^\s*/\s*{_NUMBER}\s*(?:[A-Za-z]+\.?)?(?:\s+oz\b)?", "", self.rest)
        rest = re.sub(r"^\s*of\b", "", rest).strip()
        tail = _TAIL.search(rest)
        if tail:
            if not self.segments:
                self.take("vague_amount", "amount", tail.group(1))
            rest = rest[: tail.start()]
        parts = re.split(r"\s*[,(;]\s*", rest, maxsplit=1)
        name = parts[0].strip(" .-:")
        comment = ", ".join(
            c for c in (self.aside, parts[1].strip(" )") if len(parts) > 1 else "") if c
        )
        if name:
            self.take("ingredient", "ingredient", name)
        if comment:
            self.take("comment", "comment", comment)
        status = "CORRECT" if name else "INCORRECT"
        return ParsedLine(
            self.line, self.quantity, self.unit, name, comment, status, tuple(self.segments)
        )

    def amount(self) -> None:
        vague = _VAGUE.match(self.rest)
        amount = _AMOUNT.match(self.rest)
        if vague:
            self.take("vague_amount", "amount", vague.group(1))
            self.rest = self.rest[vague.end() :]
        elif amount and _value(amount.group("first")) is not None:
            joiner = (amount.group("joiner") or "").lower()
            rule = "amount" if not joiner else "multiplier" if joiner in _TIMES else "range"
            self.take(rule, "amount", amount.group(0))
            self.quantity = _value(amount.group("first"))
            self.rest = self.rest[amount.end() :]
        else:
            word, _, after = self.rest.partition(" ")
            if word.lower() in _WORDS and after:
                self.quantity = float(_WORDS[word.lower()])
                self.take("word_amount", "amount", word)
                self.rest = after

    def unit_word(self) -> None:
        glued = re.match(r"([A-Za-z]+\.?)(?=[\s/,)]|$)", self.rest)  # "400g", "10g/½oz"
        spaced = self.rest.lstrip()
        candidates = [(glued.group(1), self.rest)] if glued else []
        words = spaced.split(" ", 2)
        candidates += [(" ".join(words[:2]), spaced), (words[0], spaced)]
        for candidate, source in candidates:
            found = canonical_unit(candidate) if candidate else None
            # Without an amount, "can", "in" or "t" is a word, not a unit.
            if found and (self.segments or found not in ("can", "inch", "teaspoon")):
                self.unit = found
                self.take("unit", "unit", candidate)
                self.rest = source[len(candidate) :]
                return
