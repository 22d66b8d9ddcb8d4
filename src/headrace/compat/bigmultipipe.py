"""BigMultiPipe's API on headrace: ``from headrace.compat.bigmultipipe import BigMultiPipe``.

Covers bigmultipipe 0.2 as its documentation describes it: subclass `BigMultiPipe` and override
``file_read``, ``file_write``, ``data_process``, ``data_process_meta_create`` (and, if needed,
``pre_process``, ``post_process``, ``outname_create``); ``pre_process_list`` and
``post_process_list`` (functions returning ``None`` to reject a file, a pre-processing function
returning ``{"bmp_data": data, "bmp_kwargs": {...}}`` to hand keywords on, post-processing
functions filling ``bmp_meta``), ``outdir``, ``create_outdir``, ``outname_append``,
``process_size``, ``num_processes``, ``mem_available``, control keywords at construction and per
`BigMultiPipe.pipeline` call; `prune_pout`, `bmp_cleanup`, `multi_logging`, `no_outfile`,
`num_can_process`, `assure_list`. Built only on the public ``headrace`` package (`hr.FileJob`).

Differences, all on purpose: outputs are written atomically (``file_write`` receives a
temporary name beside the output with the same suffix; its return value is not used); a file
that raises does not stop the others: its entry is ``(None, {"error": [message]})``, the
``multi_logging`` convention; ``outname_create`` runs before the file is read, so it does not
receive ``data`` or ``meta``; ``PoolClass`` and ``mem_frac`` are accepted and not used (workers
are headrace's, sized to 80% of the available memory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import headrace as hr

log = logging.getLogger("headrace")

Pout = list[tuple[str | None, dict[str, Any]]]


def assure_list(x: Any) -> list[Any]:
    """``x`` as a list: ``None`` is empty, a non-list is wrapped."""
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def num_can_process(
    num_to_process: int | None = None,
    num_processes: float | None = None,
    mem_available: int | None = None,
    mem_frac: float = 0.8,
    process_size: int | None = None,
    error_if_zero: bool = True,
) -> int:
    """How many processes can run at once: cores (or a fraction of them), memory, items.

    Examples
    --------
    >>> num_can_process(3, num_processes=8, mem_available=10_000, process_size=4_000)
    2
    """
    cores = os.cpu_count() or 1
    if num_processes is None or num_processes == 0:
        num_processes = cores
    if num_processes < 0:
        raise ValueError(f"Illegal value of num_processes {num_processes}")
    if num_processes < 1:
        num_processes = max(1, round(num_processes * cores))
    if num_to_process is None:
        num_to_process = int(num_processes)
    if mem_available is None:
        mem_available = int((_available_memory() or 0) * mem_frac)
    most = int(num_processes) if process_size is None else int(mem_available // process_size)
    if error_if_zero and most == 0:
        raise OSError(
            f"{mem_available / 2**20:.0f} MiB of memory is not enough for one process of "
            f"{(process_size or 0) / 2**20:.0f} MiB"
        )
    return min(num_to_process, int(num_processes), most)


def bmp_cleanup(data: Any, bmp_meta: dict[str, Any] | None = None, add: Any = None) -> Any:
    """Mark ``bmp_meta`` keys for removal (``add=``), or remove the marked ones (no ``add``).

    Examples
    --------
    >>> meta = {"big": [0] * 1000, "small": 1}
    >>> _ = bmp_cleanup("data", bmp_meta=meta, add="big")
    >>> _ = bmp_cleanup("data", bmp_meta=meta)
    >>> meta
    {'small': 1}
    """
    if bmp_meta is None:
        return data
    marked = assure_list(bmp_meta.get("bmp_cleanup_list"))
    if add is None:
        for key in marked:
            bmp_meta.pop(key, None)
        bmp_meta.pop("bmp_cleanup_list", None)
    else:
        bmp_meta["bmp_cleanup_list"] = marked + assure_list(add)
    return data


def no_outfile(data: Any, **kwargs: Any) -> None:
    """A last post-processing step that keeps the metadata and writes no file."""
    return None


def multi_logging(level: str, meta: dict[str, Any], message: str) -> None:
    """Append ``message`` to ``meta[level]`` (a list): logging that travels with the file.

    Examples
    --------
    >>> meta = {}
    >>> multi_logging("warning", meta, "saturated")
    >>> meta
    {'warning': ['saturated']}
    """
    meta.setdefault(level, []).append(message)


def prune_pout(pout: Pout, in_names: Sequence[str]) -> tuple[Pout, list[str]]:
    """Drop the entries of rejected files (outname ``None`` and empty metadata) from both lists.

    Examples
    --------
    >>> prune_pout([("a_bmp.npy", {}), (None, {})], ["a.npy", "b.npy"])
    ([('a_bmp.npy', {})], ['a.npy'])
    """
    kept: Pout = []
    kept_names = []
    for entry, name in zip(pout, in_names, strict=False):
        if entry[0] is None and entry[1] == {}:
            continue
        kept.append(entry)
        kept_names.append(name)
    return kept, kept_names


class BigMultiPipe:
    """Base class of a file pipeline: subclass it and override the methods that do the work.

    See the module docstring for what is covered and what differs from bigmultipipe.

    Examples
    --------
    >>> import numpy as np, tempfile, os, shutil
    >>> class Tenfold(BigMultiPipe):
    ...     def file_read(self, in_name, **kwargs):
    ...         return np.load(in_name)
    ...
    ...     def file_write(self, data, outname, **kwargs):
    ...         np.save(outname, data)
    ...         return outname
    ...
    ...     def data_process(self, data, **kwargs):
    ...         return data * 10
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "a.npy"), np.ones(3))
    >>> pout = Tenfold(outdir=folder, num_processes=1).pipeline([os.path.join(folder, "a.npy")])
    >>> [(os.path.basename(name), meta) for name, meta in pout]
    [('a_bmp.npy', {})]
    >>> shutil.rmtree(folder)
    """

    def __init__(
        self,
        num_processes: float | None = None,
        mem_available: int | None = None,
        mem_frac: float = 0.8,
        process_size: int | None = None,
        outdir: str | None = None,
        create_outdir: bool = False,
        outname_append: str = "_bmp",
        pre_process_list: Any = None,
        post_process_list: Any = None,
        PoolClass: Any = None,  # bigmultipipe's name
        **kwargs: Any,
    ) -> None:
        self.num_processes = num_processes
        self.mem_available = mem_available
        self.mem_frac = mem_frac
        self.process_size = process_size
        self.outdir = outdir
        self.create_outdir = create_outdir
        self.outname_append = outname_append
        self.pre_process_list = pre_process_list
        self.post_process_list = post_process_list
        self.PoolClass = PoolClass
        self.kwargs = kwargs

    @property
    def pre_process_list(self) -> list[Any]:
        """The pre-processing functions (set it to ``None`` to empty it)."""
        return self._pre_process_list

    @pre_process_list.setter
    def pre_process_list(self, value: Any) -> None:
        self._pre_process_list = assure_list(value)

    @property
    def post_process_list(self) -> list[Any]:
        """The post-processing functions (set it to ``None`` to empty it)."""
        return self._post_process_list

    @post_process_list.setter
    def post_process_list(self, value: Any) -> None:
        self._post_process_list = assure_list(value)

    def kwargs_merge(self, **kwargs: Any) -> dict[str, Any]:
        """The construction keywords, overridden by ``kwargs``."""
        return {**self.kwargs, **kwargs}

    # --- running ----------------------------------------------------------------------------

    def pipeline(
        self,
        in_names: Sequence[str],
        num_processes: float | None = None,
        mem_available: int | None = None,
        mem_frac: float | None = None,
        process_size: int | None = None,
        PoolClass: Any = None,  # bigmultipipe's name
        **kwargs: Any,
    ) -> Pout:
        """Run every file; one ``(outname, meta)`` per input, in input order."""
        num_processes = self.num_processes if num_processes is None else num_processes
        mem_available = self.mem_available if mem_available is None else mem_available
        process_size = self.process_size if process_size is None else process_size
        kwargs = self.kwargs_merge(**kwargs)
        outdir = self._outdir(kwargs)
        workers = num_can_process(
            len(in_names),
            num_processes=num_processes,
            mem_available=mem_available if mem_available is not None else 2**62,
            process_size=process_size if mem_available is not None else None,
        )
        job = hr.FileJob(
            self._process_file,
            read=self._read_file,
            write=self._write_file,
            outname=self._outname,
            worker_memory=process_size if mem_available is None else None,
            workers=max(1, workers),
            backend="process" if workers > 1 else "inline",
        )
        results = job.run(list(in_names), outdir, **kwargs)
        pout: Pout = []
        for result in results:
            if result.status in ("written", "skipped"):
                pout.append((result.output, result.meta))
            elif result.status == "rejected":
                pout.append((None, result.meta))
            else:
                assert result.error is not None
                log.warning(
                    "%s failed: %s: %s", result.input, result.error.type, result.error.message
                )
                pout.append(
                    (
                        None,
                        {**result.meta, "error": [f"{result.error.type}: {result.error.message}"]},
                    )
                )
        return pout

    def _outdir(self, kwargs: dict[str, Any]) -> str:
        outdir = kwargs.get("outdir") or self.outdir or os.getcwd()
        create = kwargs.get("create_outdir")
        if create is None:
            create = self.create_outdir
        if create:
            os.makedirs(outdir, exist_ok=True)
        if not os.path.isdir(outdir):
            raise ValueError(f"outdir {outdir} does not exist: create it or use create_outdir=True")
        return str(outdir)

    # The FileJob's functions: each calls the overridable methods in bigmultipipe's order.

    def _read_file(self, in_name: str, **kwargs: Any) -> Any:
        data = self.file_read(in_name, **kwargs)
        if data is None:
            return None
        return hr.FileStep(data, control={"in_name": in_name})

    def _process_file(self, data: Any, **kwargs: Any) -> Any:
        data, kwargs = self.pre_process(data, **kwargs)
        if data is None:
            return None
        data, meta = self.data_process_meta_create(data, **kwargs)
        return hr.FileStep(data, meta=meta)

    def _write_file(self, data: Any, outname: str, **kwargs: Any) -> None:
        kwargs.pop("in_name", None)
        self.file_write(data, outname, **kwargs)

    def _outname(self, in_name: str, **kwargs: Any) -> str:
        outdir = self._outdir(kwargs)
        path = self.outname_create(in_name, **kwargs)
        return os.path.relpath(path, outdir)

    # --- the methods a subclass overrides ---------------------------------------------------

    def file_read(self, in_name: str, **kwargs: Any) -> Any:
        """Read one input file (default: its bytes)."""
        return Path(in_name).read_bytes()

    def file_write(self, data: Any, outname: str, **kwargs: Any) -> str:
        """Write ``data`` to exactly ``outname`` (default: bytes)."""
        Path(outname).write_bytes(data)
        return outname

    def data_process(self, data: Any, **kwargs: Any) -> Any:
        """The main processing step (default: none)."""
        return data

    def data_process_meta_create(self, data: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """``data_process`` then ``post_process``: returns ``(data, meta)``."""
        data = self.data_process(data, **kwargs)
        if data is None:
            return None, {}
        return self.post_process(data, **kwargs)

    def pre_process(
        self, data: Any, pre_process_list: Any = None, **kwargs: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Run the pre-processing functions; returns ``(data, kwargs)``."""
        kwargs = self.kwargs_merge(**kwargs)
        for step in self.pre_process_list + assure_list(pre_process_list):
            returned = step(data, **kwargs)
            if returned is None:
                return None, {}
            if isinstance(returned, dict) and "bmp_data" in returned:
                data = returned["bmp_data"]
                kwargs.update(returned.get("bmp_kwargs") or {})
            else:
                data = returned
        return data, kwargs

    def post_process(
        self,
        data: Any,
        post_process_list: Any = None,
        no_bmp_cleanup: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """Run the post-processing functions, sharing ``bmp_meta``; returns ``(data, meta)``."""
        kwargs = self.kwargs_merge(**kwargs)
        meta: dict[str, Any] = {}
        for step in self.post_process_list + assure_list(post_process_list):
            data = step(data, bmp_meta=meta, **kwargs)
            if data is None:
                break
        if not no_bmp_cleanup:
            data = bmp_cleanup(data, bmp_meta=meta)
        return data, meta

    def outname_create(
        self,
        in_name: str,
        outdir: str | None = None,
        create_outdir: bool | None = None,
        outname_append: str | None = None,
        **kwargs: Any,
    ) -> str:
        """``<outdir>/<input stem><outname_append><suffix>``."""
        outdir = outdir or self.outdir or os.getcwd()
        append = self.outname_append if outname_append is None else outname_append
        if not isinstance(in_name, str) or not isinstance(append, str):
            raise ValueError(
                "cannot make an output name: give string input names and a string "
                "outname_append, so that an input is never overwritten"
            )
        stem, suffix = os.path.splitext(os.path.basename(in_name))
        return os.path.join(outdir, stem + append + suffix)


__all__ = [
    "BigMultiPipe",
    "assure_list",
    "bmp_cleanup",
    "multi_logging",
    "no_outfile",
    "num_can_process",
    "prune_pout",
]
