"""Server settings declared once: each carries its help, and from its name its flag and its
environment variable.

A setting is a field of a frozen dataclass (:class:`~gateway.config.ServerConfig`, and the
groups nested in it) whose metadata is a :class:`Setting`. The command line is generated
from these fields (``gateway/cli/serve.py``): the flag is ``--`` and the field's name with
dashes, the environment variable ``EVENTBUS_`` and the flag's name in capitals, and the
help ends with the default as :func:`say` writes it. A running server logs its settings
the same way (:func:`describe`), so the help can never disagree with the code.

A field whose type is itself a dataclass of settings (the default quotas, the default price
plan) is a *group*: each of its own fields becomes a flag, named with the group's
``prefix``. A group may also have a flag of its own that reads the whole group from a file
(``--price-plan FILE``); flags of its members win over the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "EVENTBUS_"


@dataclass(frozen=True, slots=True)
class Setting:
    """How one field is set from outside, and how its value is said."""

    help: str
    # Reads the flag's text (or the environment variable's) into the field's value.
    parse: Callable[[str], Any] = int
    # False: only the environment sets it (a secret never goes on a command line).
    has_flag: bool = True
    # The section of ``--help`` it is listed in.
    section: str = "server"
    metavar: str | None = None
    # What None means, in ``--help`` and in the settings a server logs.
    none_means: str = "none"
    # A group of settings: the prefix of its members' flags, and whether its own flag
    # (when ``has_flag``) reads the whole group from a file.
    prefix: str | None = None
    # Switches (``--metrics-public``) take no value.
    switch: bool = False
    # The flag's name when it is not the field's (``--price-plan`` for the default plan).
    name: str | None = None


def setting(default: Any = dataclasses.MISSING, help: str = "", **options: Any) -> Any:  # noqa: A002
    """A dataclass field that is a setting; ``default`` may be a zero-argument factory
    given as ``factory=...`` instead."""
    factory = options.pop("factory", dataclasses.MISSING)
    meta = {"setting": Setting(help, **options)}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Flag:
    """One flag of the command line: which field (``path`` through groups) it sets."""

    path: tuple[str, ...]
    name: str  # without the dashes: "max-request-bytes"
    setting: Setting
    default: Any
    # The section of ``--help``: a group's members are listed with the group.
    section: str

    @property
    def option(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return "_".join(self.path)


def setting_of(f: dataclasses.Field[Any]) -> Setting | None:
    found = f.metadata.get("setting")
    return found if isinstance(found, Setting) else None


def flags(config_type: type[Any], instance: Any = None) -> Iterator[Flag]:
    """Every flag of ``config_type`` (a dataclass of settings), groups expanded, in field
    order; defaults are taken from ``instance`` (default: a fresh one)."""
    defaults = config_type() if instance is None else instance
    yield from _flags(config_type, defaults, (), "", None)


def _flags(
    config_type: type[Any],
    defaults: Any,
    path: tuple[str, ...],
    prefix: str,
    section: str | None,
) -> Iterator[Flag]:
    for f in dataclasses.fields(config_type):
        found = setting_of(f)
        if found is None:
            continue
        value = getattr(defaults, f.name)
        name = found.name or prefix + f.name.replace("_", "-")
        listed = section or found.section
        if found.prefix is not None:
            if found.has_flag:
                yield Flag((*path, f.name), name, found, value, listed)
            yield from _flags(type(value), value, (*path, f.name), found.prefix, listed)
        elif found.has_flag:
            yield Flag((*path, f.name), name, found, value, listed)


def say(value: Any, setting: Setting) -> str:
    """A value as ``--help`` and the logged settings write it."""
    if value is None:
        return setting.none_means
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def describe(config: Any) -> dict[str, str]:
    """Every flag's value in ``config``, said as ``--help`` says defaults (secrets, which
    have no flag, are left out)."""
    out: dict[str, str] = {}
    for flag in flags(type(config), config):
        if flag.setting.prefix is None:
            out[flag.name] = say(flag.default, flag.setting)
    return out
