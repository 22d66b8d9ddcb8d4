"""Imports inside headrace flow one way between layers (DESIGN §3).

Every module under ``src/headrace`` has a rank; a module may import only modules of a lower rank.
Exceptions: a backend may import ``_backends._base`` (and the ``_backends`` package may import
its backends); in the other layers of more than one module (``PEER_RANKS``) a module may import
one of its own layer as long as that forms no cycle; ``compat`` may import nothing private,
only the package root and other ``compat`` modules. Domains (``DOMAINS``: one package each, or
a module while it is small) sit above the core: a domain may import the core and its own
modules, never another domain, and the core never imports a domain. Imports under
``if TYPE_CHECKING:`` are ignored; imports inside functions count. A module file without a rank
fails the test: give a new module its place here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "headrace"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Module (relative to the package, "" for the package itself) -> rank, lowest first. A name
#: that is a package ranks every module inside it too.
RANKS: dict[str, int] = {
    "_errors": 0,
    "_types": 1,
    "_records": 1,  # what a run reports (not imported by process workers)
    "_memory": 1,  # a worker process's allocator settings (imports nothing)
    "_graph": 2,
    "_stages": 2,
    "_transport": 3,
    "_shm": 3,
    "_flow": 3,  # the runner's parts: window, reorder buffer, chunk sizes, source reader
    "_tempdirs": 3,
    "_backends": 4,  # and every _backends.* module
    "_runner": 5,
    "_streams": 6,
    "_run": 6,
    "_monitor": 6,
    "_adapters": 6,  # Stream.to_torch
    # The domains (DESIGN §3): each builds on the core, never on another domain.
    "_sampling": 7,  # stream sampling (DESIGN §2.4): Streamer, muxes, samplers, ZeroMQ
    "_files": 7,  # file jobs (DESIGN §2.5)
    "_arrays": 7,  # shared arrays (DESIGN §2.6)
    "": 8,  # __init__.py, the public API
    "_cli": 8,  # and every _cli.* module: one per subcommand
    "__main__": 8,
    "compat": 9,  # and every compat.* module
}
#: The top-level names of the domains: the modules of one domain may import each other, but no
#: domain may import another.
DOMAINS = frozenset({"_sampling", "_files", "_arrays"})
#: Ranks whose modules may import each other, as long as that forms no cycle. DESIGN §3 puts
#: `_graph, _stages` and `_transport, _shm` side by side in one layer; the graph is built of
#: stage descriptions, and the transport moves arrays through shared memory.
PEER_RANKS = frozenset({2, 3, 6, 7, 8, 9})
BACKENDS_BASE = "_backends._base"


def top_of(module: str) -> str:
    """``_sampling._mux`` -> ``_sampling``; ``""`` -> ``""``."""
    return module.partition(".")[0]


def rank_of(module: str) -> int | None:
    return RANKS.get(top_of(module))


def module_name(path: Path) -> str:
    """``_backends/_thread.py`` -> ``_backends._thread``; ``__init__.py`` -> ``""``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> list[ast.AST]:
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                found.append(sub)
                found.extend(_walk_runtime(sub))
            continue
        found.append(child)
        found.extend(_walk_runtime(child))
    return found


def _resolve(absolute: str, names: list[str]) -> set[str]:
    """Package-relative modules meant by ``from <absolute> import <names>``."""
    if absolute != PACKAGE and not absolute.startswith(PACKAGE + "."):
        return set()
    base = absolute[len(PACKAGE) + 1 :]
    found = set()
    for name in names:
        sub = f"{base}.{name}" if base else name
        found.add(sub if sub in MODULES else base)
    return found


@dataclass(frozen=True)
class Import:
    target: str  # package-relative module name, "" for the package root
    line: int


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.append(Import(alias.name[len(PACKAGE) + 1 :], node.lineno))
                elif alias.name == PACKAGE:
                    found.append(Import("", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute = node.module or ""
            else:
                parts = [PACKAGE, *package.split(".")] if package else [PACKAGE]
                up = node.level - 1
                assert up < len(parts), f"{path}:{node.lineno}: relative import above the package"
                parts = parts[: len(parts) - up]
                absolute = ".".join([*parts, node.module] if node.module else parts)
            names = [alias.name for alias in node.names]
            found.extend(Import(t, node.lineno) for t in _resolve(absolute, names))
    return found


def _label(module: str) -> str:
    return f"{PACKAGE}.{module}" if module else PACKAGE


def _allowed(importer: str, target: str) -> bool:
    mine, theirs = rank_of(importer), rank_of(target)
    assert mine is not None and theirs is not None
    if mine == RANKS["compat"]:
        return target == "" or theirs == mine
    if theirs < mine:
        return True
    if theirs == mine == RANKS["_backends"]:
        return target == BACKENDS_BASE or importer == "_backends" or _same_backend(importer, target)
    if top_of(importer) in DOMAINS or top_of(target) in DOMAINS:
        return top_of(importer) == top_of(target)
    return theirs == mine and mine in PEER_RANKS


def _same_backend(importer: str, target: str) -> bool:
    """The modules of one backend package (``_backends._process.*``) may import each other."""
    return importer.split(".")[:2] == target.split(".")[:2] and importer.count(".") >= 1


def test_the_package_is_found() -> None:
    assert "" in MODULES, f"no {ROOT / '__init__.py'}"


def test_every_module_has_a_rank() -> None:
    unranked = sorted(_label(m) for m in MODULES if rank_of(m) is None)
    assert not unranked, f"modules without a layer; add them to RANKS in {__file__}: {unranked}"


def test_imports_flow_one_way() -> None:
    problems = []
    for module in MODULES:
        if rank_of(module) is None:
            continue  # reported by test_every_module_has_a_rank
        for imp in imports_of(module):
            where = f"{MODULES[module].relative_to(ROOT.parent)}:{imp.line}"
            if imp.target not in MODULES:
                problems.append(f"{where}: imports {_label(imp.target)}, which does not exist")
            elif rank_of(imp.target) is None or imp.target == module:
                continue
            elif not _allowed(module, imp.target):
                problems.append(
                    f"{where}: {_label(module)} (layer {rank_of(module)}) may not import "
                    f"{_label(imp.target)} (layer {rank_of(imp.target)})"
                )
    assert not problems, "imports against DESIGN §3 layering:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    graph = {
        m: {i.target for i in imports_of(m) if i.target in MODULES and i.target != m}
        for m in MODULES
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    shown = [" -> ".join(_label(m) for m in cycle) for cycle in cycles]
    assert not cycles, "import cycles inside headrace:\n" + "\n".join(shown)


@pytest.mark.parametrize(
    ("importer", "target", "ok"),
    [
        ("_types", "_errors", True),
        ("_errors", "_types", False),
        ("_graph", "_stages", True),
        ("_stages", "_runner", False),
        ("_backends._thread", "_backends._base", True),
        ("_backends._thread", "_backends._process", False),
        ("_backends._thread", "_runner", False),
        ("_runner", "_backends._thread", True),
        ("_runner", "_monitor", False),
        ("_streams", "_monitor", True),
        ("_sampling._mux", "_sampling._streamer", True),
        ("_sampling._streamer", "_stages", True),
        ("_sampling._background", "_streams", True),
        ("_sampling._zmq", "_files", False),
        ("_files", "_sampling", False),
        ("_files._job", "_arrays._job", False),
        ("_arrays", "_sampling._streamer", False),
        ("_streams", "_sampling", False),
        ("_runner", "_files._job", False),
        ("_errors", "_arrays", False),
        ("", "_sampling", True),
        ("_cli", "", True),
        ("_cli.run", "_cli._common", True),
        ("", "_runner", True),
        ("compat.pescador", "", True),
        ("compat.pescador", "_runner", False),
    ],
)
def test_rules(importer: str, target: str, ok: bool) -> None:
    assert _allowed(importer, target) is ok
