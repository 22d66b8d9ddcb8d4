"""The workloads, in the order the suite runs and reports them.

Each module defines one or two `Workload`s: the same work written for headrace and for each
peer (a `Case` per system and configuration). Peers are imported inside the cases. Modules are
imported on demand: worker processes started by spawn or forkserver import the module of the
function they run, and should not pay for the others (or for NumPy, where the work needs none).
"""

from __future__ import annotations

import importlib

from .._core import Workload

#: Workload name -> (module, attribute).
_WHERE = {
    "W1": ("w1", "WORKLOAD"),
    "W1t": ("w1t", "WORKLOAD"),
    "W2a": ("w2", "W2A"),
    "W2b": ("w2", "W2B"),
    "W3": ("w3", "WORKLOAD"),
    "W4": ("w4", "WORKLOAD"),
    "W5a": ("w5", "W5A"),
    "W5b": ("w5", "W5B"),
    "W6": ("w6", "WORKLOAD"),
    "W7": ("w7", "WORKLOAD"),
    "P1": ("p1", "WORKLOAD"),
    "C1": ("compat", "C1"),
    "C2": ("compat", "C2"),
}
#: The physical references: run beside every suite run, not a workload of their own.
REFERENCES = "REF"
NAMES = tuple(_WHERE)


def get(name: str) -> Workload:
    """A workload by name, case-insensitively (``"w2a"`` is W2a), or the references ("REF")."""
    where = {**_WHERE, REFERENCES: ("references", "WORKLOAD")}
    for known, (module, attribute) in where.items():
        if known.lower() == name.lower():
            workload: Workload = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
            return workload
    raise KeyError(name)
