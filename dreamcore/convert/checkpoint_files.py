"""Reading and writing single-file checkpoints: ``.safetensors`` and ``.ckpt``; no conversion here.

``.ckpt`` files are read through ``safe_pickle`` (no code in the file runs) and written in the zip layout
whose member names pass the WebUI's safe-unpickler check (``WEBUI_ZIP_MEMBER``): a current torch adds
``.format_version``, ``.storage_alignment``, ``byteorder`` and ``.data/serialization_id`` members, which
AUTOMATIC1111 1.8 refuses as "may be malicious", so they are left out of the file we write.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from dreamcore.convert import safe_pickle
from dreamcore.convert.errors import ModelLoadError
from dreamcore.fileio import atomic_path

# The WebUI's (A1111 1.8) rule for the member names of a .ckpt zip.
WEBUI_ZIP_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
# Members a current torch writes that the rule refuses and torch does not need to read the file back.
_TORCH_EXTRA_MEMBERS = {".format_version", ".storage_alignment", "byteorder", ".data/serialization_id"}
CKPT_ARCHIVE_NAME = "archive"  # the folder name inside the zip, as torch writes it for in-memory buffers
CKPT_METADATA_KEY = "dreamcore_metadata"  # extra top-level key of our .ckpt files; the WebUI ignores it
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_BYTE = 0x80


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A single file's tensors and its metadata (safetensors ``__metadata__`` or our .ckpt metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes); the download or copy did not finish - copy it again")
    with open(path, "rb") as handle:
        head = handle.read(16)
    # Safetensors first: its 8-byte header length may begin with any byte, 0x80 included.
    if _looks_like_safetensors(head, size):
        tensors, metadata = _read_safetensors(path)
    elif head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL_BYTE:
        if path.suffix.lower() == ".safetensors":
            # Whoever named it meant it to be opened as safe; a pickle in disguise is not opened at all.
            raise ModelLoadError(f"{path} is a PyTorch pickle checkpoint (.ckpt format) named .safetensors, which "
                                 "never holds a pickle; it was not opened (it may be malicious, or renamed by "
                                 "mistake). If it comes from a source you trust, rename it to .ckpt; otherwise use "
                                 "a real .safetensors file of this model")
        tensors, metadata = _read_torch_file(path)
    elif path.suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path)  # reports what is wrong with the header
    else:
        raise ModelLoadError(f"{path} is not a model file (neither safetensors nor a PyTorch checkpoint); choose "
                             "a .safetensors or .ckpt Stable Diffusion model")
    _check_weight_dtypes(path, tensors)
    return tensors, metadata


def _check_weight_dtypes(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Weights and biases are floating point; integer ones are quantized weights (or damage) that training and
    conversion cannot use. (Some other entries are integers by nature: position ids, EMA step counts.)"""
    for key, tensor in tensors.items():
        if key.endswith((".weight", ".bias")) and not tensor.is_floating_point():
            count = sum(1 for k, t in tensors.items() if k.endswith((".weight", ".bias")) and not t.is_floating_point())
            raise ModelLoadError(f"{path}: weight {key!r} is {str(tensor.dtype).removeprefix('torch.')}, not "
                                 f"floating point ({count} such weights): the file holds quantized or damaged "
                                 "weights, which dreamcore cannot train or convert; use an fp16 or fp32 model")


def check_weights_file(path: str | Path) -> None:
    """Check a component's weights file (of a diffusers folder) without loading it: a pickle named
    ``.safetensors`` is refused unopened, and integer weights are named. ModelLoadError if not usable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        return  # .bin files are read by torch.load(weights_only=True), which runs no code
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head and not _looks_like_safetensors(head, path.stat().st_size) and \
            (head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL_BYTE):
        raise ModelLoadError(f"{path} is a PyTorch pickle checkpoint named .safetensors, which never holds a pickle; "
                             "it was not opened (it may be malicious, or renamed by mistake). Copy or download the "
                             "model folder again from a source you trust")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
    except SafetensorError as error:
        raise ModelLoadError(f"{path} could not be read as safetensors ({error}); it is truncated, damaged or not a "
                             "safetensors file - copy or download the model folder again") from None
    wrong = {key: dtype for key, dtype in dtypes.items()
             if key.endswith((".weight", ".bias")) and not dtype.startswith(("F", "BF"))}
    if wrong:
        key, dtype = next(iter(wrong.items()))
        raise ModelLoadError(f"{path}: weight {key!r} is {dtype}, not floating point ({len(wrong)} such weights): "
                             "the file holds quantized or damaged weights, which dreamcore cannot train or convert; "
                             "use an fp16 or fp32 model")


def write_safetensors(path: str | Path, state_dict: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str]) -> Path:
    """Write tensors and string metadata atomically (temporary name, fsync, rename)."""
    from safetensors.torch import save_file

    tensors = {key: tensor.detach().contiguous() for key, tensor in state_dict.items()}
    with atomic_path(path, expected_bytes=_tensor_bytes(tensors.values())) as temp:
        save_file(tensors, str(temp), metadata=dict(metadata))
    return Path(path)


def write_ckpt(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write a ``.ckpt`` (``{"state_dict": ..., CKPT_METADATA_KEY: ...}``) that the WebUI's check accepts."""
    payload = {"state_dict": {key: tensor.detach().contiguous() for key, tensor in state_dict.items()},
               CKPT_METADATA_KEY: dict(metadata)}
    # torch writes a scratch file that is then copied without its extra members: twice the size, for a moment.
    with atomic_path(path, expected_bytes=2 * _tensor_bytes(payload["state_dict"].values())) as temp:
        scratch = temp.with_name(temp.name + ".torch")
        try:
            torch.save(payload, scratch)
            _copy_webui_members(scratch, temp)
        finally:
            scratch.unlink(missing_ok=True)
    return Path(path)


def _tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _copy_webui_members(source: Path, destination: Path) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            member = info.filename.partition("/")[2]
            if not WEBUI_ZIP_MEMBER.match(info.filename):
                if member in _TORCH_EXTRA_MEMBERS:
                    continue
                raise AssertionError(f"torch wrote an unknown zip member {info.filename!r}; the WebUI would refuse "
                                     "it, so dreamcore's .ckpt writer needs updating for this torch version")
            # torch names the folder inside the zip after the (temporary) file; use the conventional name.
            target = zipfile.ZipInfo(f"{CKPT_ARCHIVE_NAME}/{member}", date_time=info.date_time)
            with src.open(info) as reader, dst.open(target, "w", force_zip64=info.file_size >= 2**31) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)


def _read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        loaded = torch.load(path, map_location="cpu", pickle_module=safe_pickle, weights_only=False)
    except safe_pickle.UnsafePickleError as error:
        raise ModelLoadError(f"refused to load {path}: {error}. It may be malicious and was not run. Use a "
                             ".safetensors copy of this model from a source you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile, pickle.UnpicklingError) as error:  # what a damaged pickle makes torch raise
        raise ModelLoadError(f"{path} could not be read as a PyTorch checkpoint ({error}); it is truncated or "
                             "damaged - download or copy it again") from None
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} holds a {type(loaded).__name__}, not a model state dict; it is not a "
                             "Stable Diffusion checkpoint")
    metadata = loaded.get(CKPT_METADATA_KEY, {})
    state_dict = loaded["state_dict"] if isinstance(loaded.get("state_dict"), dict) else loaded
    tensors = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            tensors[str(key)] = value
        elif state_dict is not loaded:  # top-level extras of an unwrapped file (epoch, step) are not weights
            raise ModelLoadError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                                 "the file is not a Stable Diffusion checkpoint")
    if not tensors:
        raise ModelLoadError(f"{path} contains no tensors; it is not a model checkpoint")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError(f"{path}: its {CKPT_METADATA_KEY!r} entry is not a mapping of strings; the file "
                             "is damaged")
    return tensors, dict(metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as error:
        raise ModelLoadError(f"{path} could not be read as safetensors ({error}); it is truncated, damaged or "
                             "not a safetensors file - download or copy it again") from None
    if not tensors:
        raise ModelLoadError(f"{path} contains no tensors; it is not a model")
    return tensors, metadata


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    # A header longer than the file is a truncated safetensors file: still read as one, so the error says so.
    return header_length > 0 and head[8:9] == b"{"


def metadata_json(value: Any) -> str:
    """Metadata values are strings; structured values are stored as compact JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
