"""Framework adapters: a PyTorch ``IterableDataset`` over a stream (``Stream.to_torch``).

Owns: `torch_dataset` and the dataset class, made on first use so that ``import headrace``
never imports torch (the class is reached as ``headrace._adapters.StreamDataset``, which keeps
it picklable). Keras needs no adapter beyond `Streamer.tuples` / `Streamer.keras_tuples`.
Imports nothing from headrace at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

_NO_TORCH = 'to_torch needs PyTorch: pip install "headrace[torch]"'
#: NumPy dtype kinds that torch holds as tensors (bool, ints, unsigned, floats, complex).
TENSOR_KINDS = frozenset("biufc")
_made: dict[str, type] = {}


def _to_tensors(item: Any, torch: Any) -> Any:
    """Arrays (also inside dicts, lists and tuples) as tensors; the rest unchanged."""
    if isinstance(item, np.ndarray):
        if item.dtype.kind not in TENSOR_KINDS:
            return item
        if not (item.flags.writeable and item.dtype.isnative):
            item = np.array(item, dtype=item.dtype.newbyteorder("="))  # torch shares memory
        return torch.from_numpy(item)
    if isinstance(item, np.generic) and item.dtype.kind in TENSOR_KINDS:
        return torch.as_tensor(item)
    if type(item) is dict:
        return {k: _to_tensors(v, torch) for k, v in item.items()}
    if type(item) is list:
        return [_to_tensors(v, torch) for v in item]
    if type(item) is tuple:
        return tuple(_to_tensors(v, torch) for v in item)
    return item


def _dataset_class() -> type:
    if "StreamDataset" in _made:
        return _made["StreamDataset"]
    try:
        import torch
        import torch.utils.data
        from torch.utils.data import IterableDataset
    except ImportError:
        raise ImportError(_NO_TORCH) from None

    class StreamDataset(IterableDataset):  # type: ignore[misc, type-arg, unused-ignore]
        """An ``IterableDataset`` that runs a headrace stream each time it is iterated.

        Use it with ``DataLoader(dataset, batch_size=None)`` (the stream batches) and
        ``num_workers=0``: the stream's stages are the workers. More DataLoader workers would
        each run the whole stream and repeat every item.
        """

        def __init__(
            self, stream: Iterable[Any], run_options: dict[str, Any], tensors: bool
        ) -> None:
            super().__init__()
            self.stream = stream
            self.run_options = run_options
            self.tensors = tensors

        def __getstate__(self) -> dict[str, Any]:
            # A stream holds closures: send it with cloudpickle (a DataLoader worker process).
            import cloudpickle

            return {"blob": cloudpickle.dumps((self.stream, self.run_options, self.tensors))}

        def __setstate__(self, state: dict[str, Any]) -> None:
            import cloudpickle

            self.stream, self.run_options, self.tensors = cloudpickle.loads(state["blob"])

        def __iter__(self) -> Iterator[Any]:
            info = torch.utils.data.get_worker_info()
            if info is not None and info.num_workers > 1:
                raise RuntimeError(
                    f"this dataset runs a headrace stream; {info.num_workers} DataLoader "
                    "workers would each run all of it and repeat every item. Use "
                    "num_workers=0 and give the stream's stages workers instead"
                )
            with self.stream.open(**self.run_options) as run:  # type: ignore[attr-defined]
                for item in run:
                    yield _to_tensors(item, torch) if self.tensors else item

    StreamDataset.__module__ = __name__
    StreamDataset.__qualname__ = "StreamDataset"
    _made["StreamDataset"] = StreamDataset
    return StreamDataset


def torch_dataset(stream: Any, run_options: dict[str, Any], tensors: bool) -> Any:
    """A ``torch.utils.data.IterableDataset`` over ``stream`` (see `Stream.to_torch`)."""
    return _dataset_class()(stream, run_options, tensors)


def __getattr__(name: str) -> Any:
    if name == "StreamDataset":  # unpickling a dataset in a DataLoader worker
        return _dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
