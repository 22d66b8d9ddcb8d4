"""Per-stage Ray resources: ``RayEngine(actor_options={stage: {...}})``, checked when the
engine is made (keys, amounts) and when a run starts (stage names, what the cluster can place).
Imports no Ray."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._base import StageWork

#: The Ray resources a stage's actors may ask for (``RayEngine(actor_options=...)``), as
#: ``ActorClass.options(...)`` takes them.
ACTOR_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources")

_OPTIONS_HINT = (
    'e.g. actor_options={"embed": {"num_gpus": 1, "resources": {"ssd": 1}}}; the keys are '
    + ", ".join(ACTOR_OPTIONS)
)


def check_actor_options(
    actor_options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """``actor_options`` checked (stage name -> Ray resources), as plain dicts."""
    if actor_options is None:
        return {}
    if not isinstance(actor_options, Mapping):
        raise TypeError(
            f"actor_options must map stage names to Ray resources ({_OPTIONS_HINT}), "
            f"got {actor_options!r}"
        )
    checked: dict[str, dict[str, Any]] = {}
    for stage, options in actor_options.items():
        where = f"actor_options[{stage!r}]"
        if not isinstance(stage, str):
            raise TypeError(f"actor_options: a stage name must be a string, got {stage!r}")
        if not isinstance(options, Mapping):
            raise TypeError(f"{where} must be a dict of Ray resources ({_OPTIONS_HINT})")
        for key, value in options.items():
            if key not in ACTOR_OPTIONS:
                raise ValueError(f"{where}: unknown key {key!r}; {_OPTIONS_HINT}")
            if key == "resources":
                if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and _amount(v) for k, v in value.items()
                ):
                    raise TypeError(
                        f"{where}['resources'] must map resource names to amounts >= 0, "
                        f'e.g. {{"ssd": 1}}; got {value!r}'
                    )
            elif not _amount(value):
                raise TypeError(f"{where}[{key!r}] must be a number >= 0, got {value!r}")
        checked[stage] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in options.items()}
    return checked


def _amount(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and value >= 0
        and math.isfinite(value)
    )


def check_stage_names(actor_options: Mapping[str, Any], work: StageWork) -> None:
    """Every stage named in ``actor_options`` is a process stage of this run (a misspelt
    name would otherwise leave its stage on Ray's defaults, silently)."""
    execution = getattr(work, "execution", None)
    plan = getattr(execution, "plan", None)
    if not actor_options or plan is None:
        return
    stages = {plan.names[n] for n in plan.nodes if n.options.backend == "process"}
    unknown = sorted(set(actor_options) - stages)
    if unknown:
        raise ValueError(
            f"RayEngine(actor_options=...) names {', '.join(map(repr, unknown))}, which this "
            f"run has no process stage of; its process stages are "
            f"{', '.join(map(repr, sorted(stages))) or 'none'} (a stage's name is its name= "
            "option, or its function's name)"
        )


def ray_resources(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources an actor made with ``options`` holds, by Ray's names."""
    wanted = {k: float(v) for k, v in options.get("resources", {}).items()}
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        if key in options:
            wanted[name] = float(options[key])
    return {k: v for k, v in wanted.items() if v > 0}


def check_placeable(ray: Any, stage: str, options: Mapping[str, Any], workers: int) -> None:
    """Fail at once when the cluster's nodes cannot hold the stage's actors, all at once: Ray
    would leave such an actor pending for ever (a run that never ends). An autoscaling cluster
    that would add such a node is refused too (see KNOWN_GAPS)."""
    wanted = ray_resources(options)
    if not wanted:
        return
    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # e.g. a Ray Client connection that cannot list nodes: Ray decides
        return
    fits = sum(
        min(int(node.get(name, 0.0) // amount) for name, amount in wanted.items()) for node in nodes
    )
    if fits < workers:
        have = [{k: v for k, v in node.items() if not k.startswith("node:")} for node in nodes]
        raise ValueError(
            f"stage {stage!r}: its {workers} actor(s) ask Ray for {wanted} each, and the "
            f"cluster's nodes can hold {fits} of them (its nodes have {have}); ask for less "
            "in RayEngine(actor_options=...), use fewer workers, or add nodes that have them"
        )
