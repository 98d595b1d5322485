"""What an API key may do: its role, and optionally the only topics it may touch.

A key's scope is one of three roles, ``full``, ``produce`` and ``consume``, with an optional
list of topic names. Every tenant route needs one *action*:

- ``read``: list topics, describe a topic (any role);
- ``produce``: append records (``full`` and ``produce``);
- ``consume``: read partitions and everything about consumer groups (``full`` and
  ``consume``);
- ``manage``: create, change and delete topics, split and merge partitions, read the
  tenant's usage and bill (``full`` only).

Each route names its action in the route table (``gateway/http/routes.py``); a route
that names none needs ``manage``: a new route is closed to restricted keys until someone
decides otherwise. A key with a topic list gets 403 on a route naming
any other topic, whether or not it exists, so the refusal tells nothing about other topics;
listing topics shows only the listed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.broker.names import TOPIC_NAME
from partitions.errors import EventBusError, InvalidInputError
from partitions.shapes import Choice, ListOf, Nullable, Object, OneOf

MAX_SCOPE_TOPICS = 100


class Role(StrEnum):
    FULL = "full"
    PRODUCE = "produce"
    CONSUME = "consume"


class Action(StrEnum):
    READ = "read"
    PRODUCE = "produce"
    CONSUME = "consume"
    MANAGE = "manage"


ROLE_ACTIONS: Mapping[Role, frozenset[Action]] = {
    Role.FULL: frozenset(Action),
    Role.PRODUCE: frozenset({Action.READ, Action.PRODUCE}),
    Role.CONSUME: frozenset({Action.READ, Action.CONSUME}),
}


class InvalidScopeError(InvalidInputError):
    code = "invalid_scope"


_ROLE = Choice(values=tuple(r.value for r in Role))
# A key's scope in the admin API: a role, or a role with the only topics the key may use.
SCOPE_SHAPE = Nullable(
    shape=OneOf(
        shapes=(
            _ROLE,
            Object(
                fields={
                    "role": Choice(values=_ROLE.values, default=Role.FULL.value),
                    "topics": Nullable(
                        shape=ListOf(item=TOPIC_NAME, min_items=1, max_items=MAX_SCOPE_TOPICS),
                        description="The only topics the key may use (null: all of them)",
                    ),
                }
            ),
        ),
        meaning='a role ("full", "produce", "consume") or an object {"role", "topics"}',
    ),
    description="What the key may do (null or left out: full)",
    error=InvalidScopeError,
)


class OutOfScopeError(EventBusError):
    """A key used beyond its scope: a role without the route's action, or another topic."""

    code = "out_of_scope"
    status = 403


@dataclass(frozen=True, slots=True)
class KeyScope:
    role: Role
    # None: every topic of the tenant.
    topics: frozenset[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "topics": None if self.topics is None else sorted(self.topics),
        }

    @classmethod
    def parse(cls, given: Any) -> KeyScope:
        """A scope as the admin API takes it: ``"produce"``, or ``{"role": "produce",
        "topics": ["orders"]}``; absent or null means full."""
        checked = SCOPE_SHAPE.parse(given, InvalidScopeError, where="scope", detail="field")
        if checked is None:
            return FULL
        if isinstance(checked, str):
            return cls(Role(checked))
        topics = checked.get("topics")
        return cls(Role(checked["role"]), None if topics is None else frozenset(topics))

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> KeyScope | None:
        """The scope of a stored key; None when it cannot be read (the key is refused)."""
        try:
            role = Role(stored["role"])
        except (KeyError, ValueError):
            return None
        topics = stored.get("topics")
        if topics is None:
            return cls(role)
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            return None
        return cls(role, frozenset(topics))

    def allows(self, action: Action) -> bool:
        return action in ROLE_ACTIONS[self.role]

    def allows_topic(self, name: str) -> bool:
        return self.topics is None or name in self.topics

    def check(self, action: Action, topic: str | None) -> None:
        if not self.allows(action):
            raise OutOfScopeError(
                f"this key's role is {self.role.value!r}, which may not {action.value} "
                f"(see the scope table in docs/tenancy.md)",
                role=self.role.value,
                action=action.value,
            )
        if topic is not None and not self.allows_topic(topic):
            raise OutOfScopeError(f"this key may not use topic {topic!r}", topic=topic)


FULL = KeyScope(Role.FULL)
