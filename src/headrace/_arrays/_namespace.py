"""`Arrays`: the namespace of a job's arrays that a task receives (``arrays.X``, ``arrays["X"]``).

Imports nothing from headrace.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


class Arrays(Mapping[str, "np.ndarray[Any, Any]"]):
    """The arrays of an `ArrayJob` as a task sees them: inputs read-only, outputs writable.

    Attribute and item access are the same (``arrays.X is arrays["X"]``). During
    `ArrayJob.stack`, ``arrays.input`` is the layer's input (read-only) and ``arrays.output``
    the array the layer fills.

    Examples
    --------
    >>> import numpy as np
    >>> from headrace._arrays import Arrays
    >>> arrays = Arrays({"X": np.arange(3)})
    >>> arrays.X.tolist(), "X" in arrays, list(arrays)
    ([0, 1, 2], True, ['X'])
    """

    __slots__ = ("_views",)
    _views: dict[str, np.ndarray[Any, Any]]

    def __init__(self, views: Mapping[str, np.ndarray[Any, Any]]) -> None:
        object.__setattr__(self, "_views", dict(views))

    def __getattr__(self, name: str) -> np.ndarray[Any, Any]:
        try:
            return self._views[name]
        except KeyError:
            known = ", ".join(self._views) or "none"
            raise AttributeError(f"this job has no array {name!r} (it has: {known})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"cannot rebind arrays.{name}: write into the array instead (arrays.{name}[...] = ...)"
        )

    def __getitem__(self, name: str) -> np.ndarray[Any, Any]:
        try:
            return self._views[name]
        except KeyError:
            known = ", ".join(self._views) or "none"
            raise KeyError(f"this job has no array {name!r} (it has: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}: {v.dtype}{list(v.shape)}{'' if v.flags.writeable else ' read-only'}"
            for k, v in self._views.items()
        )
        return f"<Arrays {inner}>"
