"""The records a run reports: the per-stage figures and the error records.

Owns: `StageSnapshot` (a frozen copy of one stage's counters), `ErrorRecord`. Imports nothing
from headrace but `_errors`. Not imported by process workers (see `_types`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._errors import MAX_RECORD_TEXT, cap_text


@dataclass(frozen=True)
class StageSnapshot:
    """Figures of one stage at one moment of a run.

    ``items_in`` counts items the stage took from its input; each of them ends as outputs,
    a drop (filter, route to None), an error or a cancellation (the run closed early), so
    ``items_in == completed + dropped + errors + cancelled`` once the stage has finished, where
    ``completed`` counts inputs whose outputs left the stage.
    """

    name: str
    kind: str
    backend: str
    workers: int
    items_in: int
    items_out: int
    completed: int
    dropped: int
    errors: int
    cancelled: int
    busy_s: float
    starved_s: float
    blocked_s: float
    items_per_s: float
    fill: int
    peak_fill: int
    capacity: int
    done: bool

    def to_dict(self) -> dict[str, Any]:
        """The figures as a plain dict, field name to value."""
        return asdict(self)


@dataclass(frozen=True)
class ErrorRecord:
    """One item that failed: the stage, the item's index, and what was raised.

    Text fields are capped when the record is made (`cap_text`: head and tail, at most about
    ``MAX_RECORD_TEXT`` characters each), so a report of many skipped items stays small.
    """

    stage: str
    index: int | None
    type: str
    message: str
    traceback: str

    def __post_init__(self) -> None:
        for field in ("stage", "type", "message", "traceback"):
            value = getattr(self, field)
            if isinstance(value, str) and len(value) > MAX_RECORD_TEXT:
                object.__setattr__(self, field, cap_text(value))

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict: stage, index, type, message, traceback."""
        return asdict(self)
