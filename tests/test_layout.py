"""The house keeps its shape: no import circles, one-way arrows between packages and between
the gateway's rooms, no HTTP in the broker or tenancy, a client SDK that loads nothing of
the server, and modules of a readable size. Everything is read from the source (every
import counts: at module level, inside functions, and under ``if TYPE_CHECKING:``)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "partitions", "tiered_storage", "autoscaler", "lambdas")
# A module past this many lines is split along its seams (DESIGN.md, "Layout").
MAX_MODULE_LINES = 600

# Which packages each may import (DESIGN.md: gateway -> autoscaler, tiered_storage ->
# partitions; lambdas may import any of them; nothing imports gateway but lambdas).
PACKAGE_ARROWS = {
    "partitions": set(),
    "autoscaler": {"partitions"},
    "tiered_storage": {"partitions"},
    "gateway": {"partitions", "autoscaler", "tiered_storage"},
    "lambdas": {"gateway", "partitions", "autoscaler", "tiered_storage"},
}
# Which rooms of the gateway each may import; the gateway's own top-level modules are
# rooms of one module each.
ROOM_ARROWS = {
    "settings": set(),
    "logs": set(),
    "health": set(),
    "client": set(),
    "broker": set(),
    # The web console's files: served by the HTTP front door, importing nothing of ours.
    "console": set(),
    "tenancy": {"broker", "settings"},
    "config": {"settings", "tenancy"},
    "http": {"broker", "tenancy", "client", "console", "config", "health", "logs", "settings"},
    "processes": {"broker", "tenancy", "http", "config", "logs", "settings"},
    "wiring": {"broker", "tenancy", "http", "processes", "config", "health", "logs", "settings"},
    "cli": {"client", "wiring", "processes", "tenancy", "config", "logs", "settings"},
}


def _module_names() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _module_names()


def _resolve(name: str) -> str | None:
    """The module of ours an imported name lives in (a module, or its package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every name ``module`` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}"


@cache
def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_resolve(name) for name in _imported(module, path)}
        edges[module] = {t for t in targets if t is not None and t != module}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gateway"


def test_no_module_imports_its_way_back_to_itself() -> None:
    assert _cycles(graph()) == []


def test_a_circle_would_be_found() -> None:
    """The finder itself: a circle of three, and one of two, among other arrows."""
    edges = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert _cycles(edges) == [["d", "e"], ["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_packages_import_one_way() -> None:
    wrong = sorted(
        (module, target)
        for module, targets in graph().items()
        for target in targets
        if (mine := module.split(".")[0]) != (theirs := target.split(".")[0])
        and theirs not in PACKAGE_ARROWS[mine]
    )
    assert wrong == []


def test_the_gateways_rooms_import_one_way() -> None:
    rooms = {_room(m) for m in MODULES if m.startswith("gateway.")}
    assert rooms <= set(ROOM_ARROWS), f"a room without its arrows: {rooms - set(ROOM_ARROWS)}"
    wrong = sorted(
        (module, target)
        for module, targets in graph().items()
        if module.startswith("gateway.")
        for target in targets
        if target.startswith("gateway.")
        and (mine := _room(module)) != (theirs := _room(target))
        and theirs not in ROOM_ARROWS[mine]
    )
    assert wrong == []


def _closure(start: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph().get(module, ()))
    return seen


def _third_party(modules: set[str]) -> set[str]:
    """Every name imported from outside our packages by ``modules``."""
    return {
        name
        for module in modules
        for name in _imported(module, MODULES[module])
        if _resolve(name) is None
    }


def test_the_client_sdk_loads_nothing_of_the_server() -> None:
    client = [m for m in MODULES if m.startswith("gateway.client")]
    reached = _closure(client)
    ours = {m for m in reached if m.startswith("gateway.")}
    assert ours <= set(client), ours - set(client)
    # Below the gateway it needs the record batch codec and its errors, nothing more.
    assert {m.split(".")[0] for m in reached} <= {"gateway", "partitions"}
    assert {m for m in reached if m.startswith("partitions.")} <= {
        "partitions",
        "partitions.batch",
        "partitions.errors",
    }
    assert not any(name.startswith("aiohttp.web") for name in _third_party(reached))


def test_the_broker_and_tenancy_know_no_http() -> None:
    for room in ("gateway.broker", "gateway.tenancy"):
        modules = {m for m in MODULES if m.startswith(room)}
        assert not any(name.split(".")[0] == "aiohttp" for name in _third_party(modules)), room


def test_no_module_is_over_the_size_a_reader_takes_in() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}
