"""A route's inputs, declared once: its query parameters and its body.

Each route of the table (``routes.py``) names its inputs; the handler reads them through
the same declaration, and the OpenAPI document is written from it, so what the server
accepts and what the document says are one thing. Shapes are :mod:`partitions.shapes`.

A query parameter given twice, or given empty, is refused (a parameter left out takes its
default): ``?limit=`` is a mistake more often than a wish for the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gateway.http.params import InvalidParameterError, read_json
from partitions.errors import InvalidInputError
from partitions.shapes import Integer, Shape, ShapeError


class Body(Protocol):
    """A route's body as the document describes it (``requestBody``)."""

    def document(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Query:
    """A query parameter: its name, its shape (an integer, a string, a choice) and what it
    means."""

    name: str
    shape: Shape
    description: str

    def read(self, request: web.Request) -> Any:
        values = request.query.getall(self.name, [])
        if not values:
            return self.shape.default
        if len(values) > 1:
            raise InvalidParameterError(
                f"{self.name} is given {len(values)} times; give it once", parameter=self.name
            )
        text = values[0]
        try:
            if isinstance(self.shape, Integer):
                return self.shape.from_text(text, self.name)
            return self.shape.check(text, self.name)
        except ShapeError as exc:
            error = exc.error or InvalidParameterError
            raise error(f"{self.name} {exc.message}", parameter=self.name) from None

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "query",
            "required": False,
            "description": self.description,
            "schema": self.shape.schema(),
        }


@dataclass(frozen=True)
class Header:
    """A request header a route reads (checked by the code that reads it)."""

    name: str
    shape: Shape

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "header",
            "required": False,
            "description": self.shape.description or "",
            "schema": {k: v for k, v in self.shape.schema().items() if k != "description"},
        }


@dataclass(frozen=True)
class QueryParams:
    """A route's query parameters; of each group in ``at_most_one``, one at most may be
    given (a rule the document can only say in words)."""

    params: tuple[Query, ...]
    at_most_one: tuple[tuple[str, ...], ...] = ()

    def read(self, request: web.Request) -> dict[str, Any]:
        out = {param.name: param.read(request) for param in self.params}
        for group in self.at_most_one:
            given = [name for name in group if name in request.query]
            if len(given) > 1:
                raise InvalidParameterError(
                    f"give one of {', '.join(group)}, not several", parameter=given[-1]
                )
        return out

    def document(self) -> list[dict[str, Any]]:
        described = [param.document() for param in self.params]
        for group in self.at_most_one:
            for parameter in described:
                if parameter["name"] in group:
                    others = ", ".join(name for name in group if name != parameter["name"])
                    parameter["description"] += f". Not together with {others}"
        return described


@dataclass(frozen=True)
class JsonBody:
    """A JSON body of ``shape``. An optional body may be left out: it reads as ``{}``.

    ``error`` is the code of a body that has the wrong shape (the shapes inside may name
    their own), ``detail`` the name under which the error's details say where.
    """

    shape: Shape
    required: bool = True
    error: type[InvalidInputError] = InvalidParameterError
    detail: str = "field"

    async def read(self, request: web.Request) -> Any:
        if not self.required and not request.can_read_body:
            given: Any = {}
        else:
            given = await read_json(request)
        return self.shape.parse(given, self.error, detail=self.detail)

    def document(self) -> dict[str, Any]:
        return {
            "required": self.required,
            "content": {"application/json": {"schema": self.shape.schema()}},
        }
