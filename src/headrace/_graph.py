"""The graph: nodes, their input ports, validation, unique names and DOT text.

Owns: `Node` (one stage: kind, callable, options, inputs), `Plan` (the nodes a run needs, in
topological order, with their consumers), the checks that raise `GraphError`, and `to_dot`.
Inert: nothing here runs a stage. Imports only `_errors`, `_types` and `_stages`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._errors import GraphError
from ._stages import KEY_KEEPING, ONE_TO_ONE, StageOptions

_ids = itertools.count()


class Node:
    """One stage of a graph. ``inputs`` are (node, port) pairs; ``ports`` its output count.

    Equal only to itself. A plain class, not a dataclass: building a graph is on the way to a
    process stage's forkserver start (`_streams`), and `dataclasses` imports `inspect`."""

    __slots__ = ("args", "fn", "id", "inputs", "kind", "label", "options", "ports")

    def __init__(
        self,
        kind: str,
        fn: Any,
        options: StageOptions,
        inputs: tuple[tuple[Node, int], ...] = (),
        ports: int = 1,
        label: str = "",
        args: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.options = options
        self.inputs = inputs
        self.ports = ports
        self.label = label
        self.args: dict[str, Any] = {} if args is None else args
        self.id = next(_ids)

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"Node({self.kind!r}, {self.label!r}, id={self.id})"


class Plan:
    """The nodes one run executes, in topological order, with each node's consumers."""

    __slots__ = ("consumers", "names", "nodes", "position")

    def __init__(
        self,
        nodes: list[Node],
        names: dict[Node, str],
        position: dict[Node, int],
        consumers: dict[Node, list[list[tuple[Node, int]]]],
    ) -> None:
        self.nodes = nodes
        self.names = names
        self.position = position
        #: consumers[node][port] = list of (consumer node, index of this edge among its inputs)
        self.consumers = consumers


def compile_plan(terminals: Sequence[tuple[Node, int]]) -> Plan:
    """Collect the ancestors of ``terminals``, order them and check the graph."""
    order = _topological(node for node, _ in terminals)
    consumers: dict[Node, list[list[tuple[Node, int]]]] = {
        node: [[] for _ in range(node.ports)] for node in order
    }
    for node in order:
        for slot, (parent, port) in enumerate(node.inputs):
            if parent.kind == "sink":
                raise GraphError(
                    f"stage {node.label!r} reads the output of sink {parent.label!r}, which "
                    "yields nothing; put the sink last"
                )
            consumers[parent][port].append((node, slot))
    for node in order:
        if node.kind == "zip":
            check_zip(node)
    return Plan(
        nodes=order,
        names=_unique_names(order),
        position={node: i for i, node in enumerate(order)},
        consumers=consumers,
    )


def _topological(terminals: Iterable[Node]) -> list[Node]:
    order: list[Node] = []
    state: dict[Node, int] = {}  # 1: on the current path, 2: done
    for root in terminals:
        stack: list[tuple[Node, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node) == 2:
                    continue
                state[node] = 1
            if i < len(node.inputs):
                stack.append((node, i + 1))
                parent = node.inputs[i][0]
                if state.get(parent) == 1:
                    raise GraphError(f"the graph has a cycle through stage {parent.label!r}")
                if state.get(parent) != 2:
                    stack.append((parent, 0))
            else:
                state[node] = 2
                order.append(node)
    return order


def _key_origin(node: Node, port: int) -> tuple[Node, int] | None:
    """Walk up 1 -> 1 stages to the output whose item indices a zip input carries;
    None when a stage on the way may drop items."""
    while True:
        if node.kind in ONE_TO_ONE:
            if node.options.on_error == "skip":
                return None
        elif node.kind != "zip":
            return None if node.kind in KEY_KEEPING else (node, port)
        node, port = node.inputs[0]


def check_zip(node: Node) -> None:
    origins = []
    for parent, port in node.inputs:
        origin = _key_origin(parent, port)
        if origin is None:
            raise GraphError(
                f"zip {node.label!r}: input {parent.label!r} is not 1 -> 1 with the other inputs "
                "(a filter, route, take or a stage with on_error='skip' lies on it); zip joins "
                "the outputs of one item, so every input must keep every item"
            )
        origins.append(origin)
    if len(set(origins)) > 1:
        names = sorted({o.label for o, _ in origins})
        raise GraphError(
            f"zip {node.label!r} joins streams that do not come from one common stream "
            f"({', '.join(names)}); zip pairs the results of the same item, so its inputs must "
            "be branches of one stream; use hr.merge to interleave unrelated streams"
        )


def _unique_names(order: list[Node]) -> dict[Node, str]:
    names: dict[Node, str] = {}
    seen: dict[str, int] = {}
    for node in order:
        count = seen.get(node.label, 0) + 1
        seen[node.label] = count
        names[node] = node.label if count == 1 else f"{node.label}#{count}"
    return names


def to_dot(
    plan: Plan,
    figures: Mapping[str, Mapping[str, Any]] | None = None,
    bottleneck: str | None = None,
) -> str:
    """Graphviz DOT text of ``plan``; with ``figures`` (stage name -> to_dict() of its
    snapshot), each stage is annotated with its counts and times, and the ``bottleneck``
    stage is filled in orange."""
    lines = [
        "digraph headrace {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor="#f4f6fb", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in plan.nodes:
        name = plan.names[node]
        opts = node.options
        parts = [f"<b>{_esc(name)}</b>", f"{node.kind} · {opts.backend} x {opts.workers}"]
        fig = (figures or {}).get(name)
        if fig:
            parts.append(
                f"in {fig['items_in']:,} · out {fig['items_out']:,} · err {fig['errors']:,}"
            )
            parts.append(f"busy {fig['busy_s']:.2f}s · {fig['items_per_s']:,.0f}/s")
        label = "<" + "<br/>".join(parts) + ">"
        fill = ', fillcolor="#ffd8a8"' if name == bottleneck else ""
        lines.append(f"  n{node.id} [label={label}{fill}];")
    for node in plan.nodes:
        for parent, port in node.inputs:
            attrs = [f'label="cap {parent.options.capacity}"']
            if parent.ports > 1:
                attrs = [f'label="branch {port} · cap {parent.options.capacity}"']
            lines.append(f"  n{parent.id} -> n{node.id} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
