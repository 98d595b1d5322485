"""What a JSON input may be, declared once.

A :class:`Shape` checks a value a client sent and describes itself as JSON Schema, so the
server's validation and its OpenAPI document come from one declaration and cannot disagree:
bounds, required and unknown fields, exclusive fields, enumerations and patterns. Rules no
schema can say (one setting may not exceed another, a time may not be in the future) stay
with the code that applies them, and the document says them in words.

``parse`` answers the checked value (integers sent as ``3.0`` become ``3``; an object gets
the defaults of the fields it left out) or raises the caller's error class, or the one the
innermost shape declares, naming where the value is wrong (``records[2].value``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from partitions.errors import InvalidInputError

# Integers of the API are at most this: a 64-bit field never overflows, and a number past
# it is an answer of 400, never a failure.
MAX_INTEGER = 2**62
_DECIMAL = re.compile(r"-?[0-9]+")


class ShapeError(Exception):
    """Where a value is wrong and what it should be; ``error`` is the class to raise."""

    def __init__(self, where: str, message: str, error: type[InvalidInputError] | None = None):
        super().__init__(message)
        self.where = where
        self.message = message
        self.error = error


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@dataclass(frozen=True, kw_only=True)
class Shape:
    """A value's shape. ``error`` is the error class (its code) when this value is wrong."""

    description: str | None = None
    default: Any = None
    error: type[InvalidInputError] | None = None

    def check(self, value: Any, where: str) -> Any:
        try:
            return self._check(value, where)
        except ShapeError as exc:
            if exc.error is None:
                exc.error = self.error
            raise

    def parse(
        self, value: Any, error: type[InvalidInputError], *, where: str = "", detail: str = ""
    ) -> Any:
        """The checked value, or ``error`` (or the shape's own) naming where it is wrong;
        ``detail`` names the details field that says where (none: not in details)."""
        try:
            return self.check(value, where)
        except ShapeError as exc:
            cls = exc.error or error
            what = exc.where or "the body"
            details = {detail: exc.where} if detail and exc.where else {}
            raise cls(f"{what} {exc.message}", **details) from None

    def schema(self) -> dict[str, Any]:
        out = self._schema()
        if self.description:
            out["description"] = self.description
        if self.default is not None:
            out["default"] = self.default
        return out

    def _check(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def _schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def says(self) -> str:
        """What a value must be, in words, for error messages."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Integer(Shape):
    low: int = 0
    high: int = MAX_INTEGER

    def _check(self, value: Any, where: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON does not tell 3 from 3.0
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not self.low <= value <= self.high
        ):
            raise ShapeError(where, f"is {self.says()}")
        return value

    def from_text(self, text: str, where: str) -> int:
        """An integer in a URL: decimal digits only."""
        if not _DECIMAL.fullmatch(text):
            raise ShapeError(where, f"is {self.says()}", self.error)
        return int(self.check(int(text), where))

    def says(self) -> str:
        return f"an integer from {self.low} to {self.high}"

    def _schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True, kw_only=True)
class Number(Shape):
    """A JSON number from ``low`` to ``high``, or strictly between them (``exclusive``)."""

    low: float
    high: float
    exclusive: bool = False

    def _check(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ShapeError(where, f"is {self.says()}")
        inside = self.low < value < self.high if self.exclusive else self.low <= value <= self.high
        if not inside:
            raise ShapeError(where, f"is {self.says()}")
        return float(value)

    def says(self) -> str:
        if self.exclusive:
            return f"a number above {self.low} and below {self.high}"
        return f"a number from {self.low} to {self.high}"

    def _schema(self) -> dict[str, Any]:
        if self.exclusive:
            return {"type": "number", "exclusiveMinimum": self.low, "exclusiveMaximum": self.high}
        return {"type": "number", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True, kw_only=True)
class Text(Shape):
    """A string; ``pattern`` must match all of it (a regular expression that means the same
    in Python and in JSON Schema's ECMA dialect)."""

    pattern: str | None = None
    min_length: int = 0
    max_length: int | None = None
    excluded: tuple[str, ...] = ()  # values the pattern allows that are not allowed
    meaning: str | None = None  # what the pattern allows, in words
    # A JSON Schema format the code that reads the value holds it to (``date-time``).
    format: str | None = None

    def _check(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise ShapeError(where, f"is {self.says()}")
        if len(value) < self.min_length or (
            self.max_length is not None and len(value) > self.max_length
        ):
            raise ShapeError(where, f"is {self.says()}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ShapeError(where, f"is {self.says()}")
        if value in self.excluded:
            raise ShapeError(where, f"is {self.says()}")
        return value

    def says(self) -> str:
        if self.meaning:
            return self.meaning
        if self.max_length is not None:
            return f"a string of {self.min_length} to {self.max_length} characters"
        return "a string" if not self.min_length else f"a string of {self.min_length} or more"

    def _schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.pattern is not None:
            out["pattern"] = f"^(?:{self.pattern})$"
        if self.excluded:
            out["not"] = {"enum": list(self.excluded)}
        if self.format is not None:
            out["format"] = self.format
        return out


@dataclass(frozen=True, kw_only=True)
class Boolean(Shape):
    def _check(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise ShapeError(where, "is true or false")
        return value

    def says(self) -> str:
        return "true or false"

    def _schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True, kw_only=True)
class Choice(Shape):
    """One of some strings."""

    values: tuple[str, ...]

    def _check(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise ShapeError(where, f"is {self.says()}")
        return value

    def says(self) -> str:
        quoted = [f'"{v}"' for v in self.values]
        return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"

    def _schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True, kw_only=True)
class Nullable(Shape):
    """``null``, or a value of ``shape``."""

    shape: Shape

    def _check(self, value: Any, where: str) -> Any:
        return None if value is None else self.shape.check(value, where)

    def says(self) -> str:
        return f"{self.shape.says()}, or null"

    def _schema(self) -> dict[str, Any]:
        inner = self.shape.schema()
        kind = inner.get("type")
        if isinstance(kind, str) and "enum" not in inner:
            return {**inner, "type": [kind, "null"]}
        return {"anyOf": [inner, {"type": "null"}]}


@dataclass(frozen=True, kw_only=True)
class ListOf(Shape):
    item: Shape
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False

    def _check(self, value: Any, where: str) -> list[Any]:
        if (
            not isinstance(value, list)
            or len(value) < self.min_items
            or (self.max_items is not None and len(value) > self.max_items)
        ):
            raise ShapeError(where, f"is {self.says()}")
        out = [self.item.check(item, f"{where}[{n}]") for n, item in enumerate(value)]
        if self.unique and len({repr(v) for v in out}) != len(out):
            raise ShapeError(where, "may not name the same item twice")
        return out

    def says(self) -> str:
        count = (
            f"{self.min_items} or more"
            if self.max_items is None
            else (
                f"{self.min_items}"
                if self.min_items == self.max_items
                else f"{self.min_items} to {self.max_items}"
            )
        )
        return f"a list of {count} items, each {self.item.says()}"

    def _schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            out["minItems"] = self.min_items
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        if self.unique:
            out["uniqueItems"] = True
        return out


@dataclass(frozen=True, kw_only=True)
class MapOf(Shape):
    """An object whose names are free and whose values all have one shape."""

    value: Shape

    def _check(self, given: Any, where: str) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise ShapeError(where, f"is {self.says()}")
        return {name: self.value.check(v, _at(where, name)) for name, v in given.items()}

    def says(self) -> str:
        return f"an object whose values are each {self.value.says()}"

    def _schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.value.schema()}


@dataclass(frozen=True, kw_only=True)
class Object(Shape):
    """An object of known fields; any other is refused.

    ``required`` fields must be there; of each group in ``one_of`` exactly one must be, and
    of each in ``at_most_one`` no more than one.
    """

    fields: Mapping[str, Shape]
    required: tuple[str, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()
    at_most_one: tuple[tuple[str, ...], ...] = ()
    # Whether a field left out takes its default here (False: a patch, whose fields left
    # out keep their values; the defaults are then only documented).
    fill_defaults: bool = True

    def _check(self, given: Any, where: str) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise ShapeError(where, "is a JSON object")
        unknown = sorted(name for name in given if name not in self.fields)
        if unknown:
            raise ShapeError(
                _at(where, unknown[0]),
                f"is not a known field; known: {', '.join(self.fields)}",
            )
        for name in self.required:
            if name not in given:
                raise ShapeError(_at(where, name), "is required")
        for group in self.one_of:
            if sum(name in given for name in group) != 1:
                raise ShapeError(where, f"has exactly one of {', '.join(group)}")
        for group in self.at_most_one:
            if sum(name in given for name in group) > 1:
                raise ShapeError(where, f"has at most one of {', '.join(group)}")
        out = {
            name: shape.check(given[name], _at(where, name))
            for name, shape in self.fields.items()
            if name in given
        }
        if self.fill_defaults:
            for name, shape in self.fields.items():
                if name not in out and shape.default is not None:
                    out[name] = shape.default
        return out

    def says(self) -> str:
        return "a JSON object"

    def _schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {name: shape.schema() for name, shape in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        rules: list[dict[str, Any]] = [
            {"oneOf": [{"required": [name]} for name in group]} for group in self.one_of
        ]
        rules += [
            {"not": {"required": list(group)}} if len(group) == 2 else _at_most_one(group)
            for group in self.at_most_one
        ]
        if len(rules) == 1:
            out.update(rules[0])
        elif rules:
            out["allOf"] = rules
        return out


def _at_most_one(group: Sequence[str]) -> dict[str, Any]:
    pairs = [[a, b] for n, a in enumerate(group) for b in group[n + 1 :]]
    return {"not": {"anyOf": [{"required": pair} for pair in pairs]}}


@dataclass(frozen=True, kw_only=True)
class OneOf(Shape):
    """A value of exactly one of ``shapes``, which must not overlap (say, a string and an
    object, or objects with different required fields)."""

    shapes: tuple[Shape, ...]
    meaning: str = ""

    def _check(self, value: Any, where: str) -> Any:
        deeper: ShapeError | None = None
        for shape in self.shapes:
            try:
                return shape.check(value, where)
            except ShapeError as exc:
                if exc.where != where:
                    deeper = exc  # the value was of this kind, wrong inside: say where
        raise deeper or ShapeError(where, f"is {self.says()}")

    def says(self) -> str:
        return self.meaning or " or ".join(shape.says() for shape in self.shapes)

    def _schema(self) -> dict[str, Any]:
        return {"oneOf": [shape.schema() for shape in self.shapes]}
