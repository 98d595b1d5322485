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

from gateway.broker.names import validate_topic_name
from partitions.errors import EventBusError, InvalidInputError

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
        "topics": ["orders"]}``; absent means full."""
        if given is None:
            return FULL
        if isinstance(given, str):
            given = {"role": given}
        if not isinstance(given, Mapping):
            raise InvalidScopeError('a scope is a role ("full", "produce", "consume") or an object')
        unknown = set(given) - {"role", "topics"}
        if unknown:
            raise InvalidScopeError(f"unknown scope keys: {', '.join(sorted(unknown))}")
        role = given.get("role", Role.FULL.value)
        if role not in {r.value for r in Role}:
            raise InvalidScopeError(
                f'a scope\'s role is "full", "produce" or "consume", not {role!r}'
            )
        topics = given.get("topics")
        if topics is None:
            return cls(Role(role))
        if not isinstance(topics, list) or not 1 <= len(topics) <= MAX_SCOPE_TOPICS:
            raise InvalidScopeError(
                f"a scope's topics are a list of 1 to {MAX_SCOPE_TOPICS} topic names, or null"
            )
        for name in topics:
            if not isinstance(name, str):
                raise InvalidScopeError("a scope's topics are topic names")
            validate_topic_name(name)
        return cls(Role(role), frozenset(topics))

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
