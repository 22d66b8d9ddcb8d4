"""Samplers over arrays on disk: random windows of rows from ``.npz`` archives and from
``.npy`` files opened as memory maps (Pescador's "sampling from disk").

Owns: `sample_npz`, `sample_npy` and the Streamer behind them. Builds on `_streamer` only.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._streamer import RandomState, Streamer, check_positive

PathLike = str | os.PathLike[str]


def _seed_sequence(random_state: RandomState) -> np.random.SeedSequence:
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(2**31)))
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative seed, got {random_state}")
        return np.random.SeedSequence(int(random_state))
    raise TypeError(
        "random_state must be None, a non-negative int seed or a numpy Generator / "
        f"RandomState, got {type(random_state).__name__}"
    )


class _WindowSampler(Streamer):
    """Yields dicts of ``rows`` consecutive rows at random offsets, forever.

    Each pass (activation) opens the files afresh and draws from its own generator, spawned
    from the sampler's seed sequence: passes differ from each other, reproducibly.
    """

    def __init__(
        self,
        load: Any,
        what: str,
        rows: int,
        copy_rows: bool,
        random_state: RandomState,
    ) -> None:
        super().__init__(load)
        self._what = what
        self.rows = check_positive(rows, "rows")
        self.copy = bool(copy_rows)
        self._seeds = _seed_sequence(random_state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._what}, {self.rows} rows>"

    def _detached(self) -> Streamer:
        clone = copy.copy(self)
        clone._seeds = self._seeds.spawn(1)[0]
        return clone

    def _open(self) -> Iterator[dict[str, np.ndarray]]:
        return self._windows(np.random.default_rng(self._seeds.spawn(1)[0]))

    def _windows(self, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = self.source()
        lengths = {k: len(a) if a.ndim else 0 for k, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{self._what}: the arrays have different numbers of rows: {lengths}")
        total = next(iter(lengths.values()))
        rows = self.rows
        if total < rows:
            raise ValueError(f"{self._what} has {total} rows, fewer than rows={rows}")
        if self.copy:
            while True:
                i = int(rng.integers(total - rows + 1))
                yield {k: np.array(a[i : i + rows]) for k, a in arrays.items()}
        else:
            while True:
                i = int(rng.integers(total - rows + 1))
                yield {k: np.asarray(a[i : i + rows]) for k, a in arrays.items()}


class _NpzLoader:
    """Reads the chosen arrays of one archive into memory (picklable, unlike a closure)."""

    def __init__(self, path: str, keys: list[str] | None) -> None:
        self.path, self.keys = path, keys

    def __call__(self) -> dict[str, np.ndarray]:
        with np.load(self.path, allow_pickle=False) as data:
            return {k: data[k] for k in _pick_keys(data.files, self.keys, self.path)}


class _NpyLoader:
    """Opens each ``.npy`` file as a read-only memory map."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def __call__(self) -> dict[str, np.ndarray]:
        return {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in self.paths.items()}


def _pick_keys(found: Sequence[str], keys: Sequence[str] | None, what: str) -> list[str]:
    if keys is None:
        return list(found)
    if isinstance(keys, str):
        keys = [keys]
    missing = [k for k in keys if k not in found]
    if missing:
        raise KeyError(f"{what} has no array named {missing[0]!r}; it has {list(found)}")
    return list(keys)


def sample_npz(
    path: PathLike,
    rows: int,
    *,
    keys: Sequence[str] | None = None,
    copy: bool = True,
    random_state: RandomState = None,
) -> Streamer:
    """A Streamer of random windows of ``rows`` consecutive rows from an ``.npz`` archive.

    Each item is a dict ``{key: array[i : i + rows]}`` for the archive's arrays (or ``keys``),
    with ``i`` drawn uniformly; the stream is infinite (bound it with ``max_items`` or a mux's
    lifetimes). An ``.npz`` archive cannot be memory-mapped: each activation reads the chosen
    arrays into memory once, so a mux keeps at most ``n_active`` archives in memory. With
    ``copy=True`` (the default) every window is a copy, so the archive's memory is freed as
    soon as the streamer is deactivated rather than when the last window is dropped.

    Examples
    --------
    >>> import headrace as hr, numpy as np, tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "a.npz")
    ...     np.savez(path, X=np.arange(20).reshape(10, 2), Y=np.arange(10))
    ...     item = next(iter(hr.sample_npz(path, 4, random_state=0)))
    >>> item["X"].shape, item["Y"].shape, bool((item["X"][:, 0] == 2 * item["Y"]).all())
    ((4, 2), (4,), True)
    """
    where = os.fspath(path)
    load = _NpzLoader(where, None if keys is None else list(keys))
    return _WindowSampler(load, where, rows, copy, random_state)


def sample_npy(
    paths: Mapping[str, PathLike],
    rows: int,
    *,
    copy: bool = False,
    random_state: RandomState = None,
) -> Streamer:
    """A Streamer of random windows of rows from ``.npy`` files opened as memory maps.

    ``paths`` maps a key to the file of that array (``{"X": "x.npy", "Y": "y.npy"}``); the
    files must have the same number of rows. Files are opened read-only (``mmap_mode="r"``),
    so only the rows read are loaded. Windows are views of the map by default (cheap; the
    operating system's page cache holds the data); ``copy=True`` makes private copies.

    Examples
    --------
    >>> import headrace as hr, numpy as np, tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(os.path.join(tmp, "x.npy"), np.arange(30.0).reshape(10, 3))
    ...     files = {"X": os.path.join(tmp, "x.npy")}
    ...     shapes = [b["X"].shape for b in hr.sample_npy(files, 5, copy=True)(max_items=2)]
    >>> shapes
    [(5, 3), (5, 3)]
    """
    if not isinstance(paths, Mapping) or not paths:
        raise TypeError(
            "paths must be a non-empty dict of key -> .npy file, e.g. {'X': 'x.npy'}, got "
            f"{paths!r:.80}"
        )
    where = {str(k): os.fspath(p) for k, p in paths.items()}
    return _WindowSampler(_NpyLoader(where), ", ".join(where.values()), rows, copy, random_state)
