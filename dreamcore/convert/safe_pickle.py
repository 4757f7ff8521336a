"""A restricted unpickler for ``.ckpt`` files: plain tensors and collections only, no code runs.

A pickle can name any Python function and have it called while loading (``os.system`` included). This
module is passed to ``torch.load`` as its ``pickle_module``: every global the file asks for must be one of
``ALLOWED_GLOBALS`` (tensor rebuilders, ordered dicts, dtypes, numpy scalars); anything else stops the
load with ``UnsafePickleError`` before it is called.

Allowed objects can still be abused: the pickle ``BUILD`` opcode writes arbitrary attributes into an object
(an ``OrderedDict`` whose ``items`` is no longer a method), and the tensor rebuilders take backward hooks
and metadata they attach to the tensor. So ``BUILD`` is refused on everything but the few types whose own
``__setstate__`` a checkpoint needs, and the rebuilders' arguments are checked before torch sees them.
That needs the pure-Python unpickler (the C one cannot hook ``BUILD``); only the pickled structure goes
through it, the tensor data does not, so it costs milliseconds.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something a model checkpoint never needs (a global outside the allow-list, an
    attribute write, a tensor with hooks)."""

    def __init__(self, module: str, name: str, what: str | None = None):
        self.global_name = f"{module}.{name}"
        super().__init__(what or f"the file's pickle calls {self.global_name}, which a model checkpoint never needs")


class _IgnoredTrainerObject:
    """Stands in for training-state objects some original checkpoints carry (PyTorch Lightning's
    ModelCheckpoint callback): built empty, its state kept as plain data, none of its code imported."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _refuse(callable_name: str, what: str) -> UnsafePickleError:
    module, _, name = callable_name.rpartition(".")
    return UnsafePickleError(module, name, f"the file's pickle rebuilds a tensor with {what}, which a model "
                                           "checkpoint never holds")


def _check_tensor_layout(where: str, storage_offset: Any, size: Any, stride: Any) -> None:
    def whole_numbers(value: Any) -> bool:
        return isinstance(value, tuple) and all(type(item) is int for item in value)

    if type(storage_offset) is not int or not whole_numbers(size) or not whole_numbers(stride):
        raise _refuse(where, "a layout that is not whole numbers")


def _check_hooks(where: str, requires_grad: Any, backward_hooks: Any) -> None:
    if type(requires_grad) is not bool:
        raise _refuse(where, f"requires_grad of type {type(requires_grad).__name__}")
    if backward_hooks is not None and not (isinstance(backward_hooks, dict) and not backward_hooks):
        raise _refuse(where, "backward hooks")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
    import torch._utils

    _check_storage("torch._utils._rebuild_tensor", storage)
    _check_tensor_layout("torch._utils._rebuild_tensor", storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> Any:
    import torch._utils

    where = "torch._utils._rebuild_tensor_v2"
    _check_storage(where, storage)
    _check_tensor_layout(where, storage_offset, size, stride)
    _check_hooks(where, requires_grad, backward_hooks)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            type(key) is str and type(value) is bool for key, value in metadata.items())):
        raise _refuse(where, "metadata other than flags")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                                           metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    import torch
    import torch._utils

    where = "torch._utils._rebuild_parameter"
    if type(data) is not torch.Tensor:
        raise _refuse(where, f"data of type {type(data).__name__}")
    _check_hooks(where, requires_grad, backward_hooks)
    return torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)


def _check_storage(where: str, storage: Any) -> None:
    import torch

    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _refuse(where, f"a {type(storage).__name__} in place of its storage")


def _allowed() -> dict[tuple[str, str], Any]:
    import collections

    import torch

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
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


def _buildable() -> tuple[type, ...]:
    """Types whose own ``__setstate__`` a checkpoint's pickle may call (numpy arrays and dtypes restore
    themselves that way; the stand-in keeps its state as data)."""
    try:
        import numpy
    except ImportError:
        return (_IgnoredTrainerObject,)
    return (_IgnoredTrainerObject, numpy.ndarray, numpy.dtype)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs", f"encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED_CACHE: dict[tuple[str, str], Any] = {}


class Unpickler(pickle._Unpickler):  # the pure-Python unpickler: see the module docstring
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if not _ALLOWED_CACHE:
            _ALLOWED_CACHE.update(_allowed())
        found = _ALLOWED_CACHE.get((module, name))
        if found is None:
            raise UnsafePickleError(module, name)
        return found

    def load_build(self) -> None:
        target = self.stack[-2]  # the state to apply is on top
        if not isinstance(target, _buildable()):
            kind = type(target)
            raise UnsafePickleError(kind.__module__, kind.__qualname__,
                                    f"the file's pickle sets attributes on an object of type {kind.__qualname__} (it "
                                    "could replace its methods), which a model checkpoint never does")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def load(file: BinaryIO, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return Unpickler(io.BytesIO(data), **kwargs).load()
