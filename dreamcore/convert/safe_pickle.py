"""A restricted unpickler for ``.ckpt`` files: plain tensors and collections only, no code runs.

A pickle can name any Python function and have it called while loading (``os.system`` included). This
module is passed to ``torch.load`` as its ``pickle_module``: every global the file asks for must be one of
``ALLOWED_GLOBALS`` (tensor rebuilders, ordered dicts, dtypes, numpy scalars); anything else stops the
load with ``UnsafePickleError`` before it is called.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""

    def __init__(self, module: str, name: str):
        self.global_name = f"{module}.{name}"
        super().__init__(f"the file's pickle calls {self.global_name}, which a model checkpoint never needs")


class _IgnoredTrainerObject:
    """Stands in for training-state objects some original checkpoints carry (PyTorch Lightning's
    ModelCheckpoint callback): built empty, its state kept as plain data, none of its code imported."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _allowed() -> dict[tuple[str, str], Any]:
    import collections

    import torch
    import torch._utils

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): _IgnoredTrainerObject,
    }
    for dtype_name in ("float16", "float32", "float64", "bfloat16", "int8", "uint8", "int16", "int32", "int64",
                       "bool"):
        allowed[("torch", dtype_name)] = getattr(torch, dtype_name)
    try:
        import numpy
        import numpy.core.multiarray as multiarray  # numpy 2 keeps this path as an alias of numpy._core
    except ImportError:
        return allowed  # no numpy: files that hold numpy scalars are then refused as unknown globals
    for module_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module_name, "scalar")] = multiarray.scalar
        allowed[(module_name, "_reconstruct")] = multiarray._reconstruct
    allowed[("numpy", "dtype")] = numpy.dtype
    allowed[("numpy", "ndarray")] = numpy.ndarray
    allowed[("_codecs", "encode")] = _latin1_encode  # how protocol-2 pickles store numpy's raw bytes
    dtype_classes = getattr(numpy, "dtypes", None)  # numpy >= 1.25 pickles dtypes through these classes
    for dtype_class in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType"):
        if dtype_classes is not None and hasattr(dtype_classes, dtype_class):
            allowed[("numpy.dtypes", dtype_class)] = getattr(dtype_classes, dtype_class)
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs", f"encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED_CACHE: dict[tuple[str, str], Any] = {}


class Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not _ALLOWED_CACHE:
            _ALLOWED_CACHE.update(_allowed())
        found = _ALLOWED_CACHE.get((module, name))
        if found is None:
            raise UnsafePickleError(module, name)
        return found


def load(file: BinaryIO, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return Unpickler(io.BytesIO(data), **kwargs).load()
