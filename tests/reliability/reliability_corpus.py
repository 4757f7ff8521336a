"""A corpus of bad model files, built in code from a tiny model: each case is a file that a person could
plausibly hand dreamcore (damaged, renamed, quantized, hostile) and the words its error must contain."""

from __future__ import annotations

import collections
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class BadFile:
    name: str  # the case, as the table in docs/reliability.md names it
    make: Callable[[Path, dict[str, torch.Tensor], dict[str, str], Path], Path]  # (folder, tensors, metadata, good)
    message: str  # a regular expression the error must match (besides the file's name)


class RunsShell:
    """What a malicious checkpoint carries: unpickling it calls os.system, which would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class MethodsOverridden(collections.OrderedDict):
    """Pickles as an OrderedDict whose BUILD state replaces its methods (``items`` becomes a number)."""

    def __reduce__(self):
        return (collections.OrderedDict, (), {"items": 1, "keys": 2, "get": 3}, None, iter(self.items()))


class TensorWithHooks:
    """Pickles as torch's tensor rebuilder called with backward hooks that are not empty."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __reduce__(self):
        import torch._utils

        storage = torch.storage.TypedStorage(wrap_storage=self.tensor.untyped_storage(), dtype=self.tensor.dtype,
                                             _internal=True)
        return (torch._utils._rebuild_tensor_v2, (storage, 0, tuple(self.tensor.shape), self.tensor.stride(), False,
                                                  {"hook": 1}))


def _safetensors(folder: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from dreamcore.convert.checkpoint_files import write_safetensors

    return write_safetensors(folder / name, tensors, metadata)


def _bytes(name: str, data: bytes) -> Callable[..., Path]:
    def make(folder: Path, tensors, metadata, good) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return make


def _truncated(folder: Path, tensors, metadata, good: Path) -> Path:
    path = folder / "truncated.safetensors"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def _truncated_ckpt(folder: Path, tensors, metadata, good: Path) -> Path:
    whole = folder / "whole.ckpt"
    torch.save({"state_dict": tensors}, whole)
    path = folder / "truncated.ckpt"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return path


def _pickle_named_safetensors(folder: Path, tensors, metadata, good) -> Path:
    path = folder / "pickle.safetensors"
    torch.save({"state_dict": tensors}, path)
    return path


def _legacy_pickle_named_safetensors(folder: Path, tensors, metadata, good) -> Path:
    path = folder / "legacy-pickle.safetensors"
    torch.save({"state_dict": tensors}, path, _use_new_zipfile_serialization=False)
    return path


def _runs_shell(folder: Path, tensors, metadata, good) -> Path:
    path = folder / "runs-shell.ckpt"
    torch.save({"state_dict": tensors, "payload": RunsShell(folder / "pwned")}, path)
    return path


def _overrides_methods(folder: Path, tensors, metadata, good) -> Path:
    path = folder / "overrides-methods.ckpt"
    torch.save({"state_dict": MethodsOverridden(tensors)}, path)
    return path


def _tensor_hooks(folder: Path, tensors, metadata, good) -> Path:
    path = folder / "tensor-hooks.ckpt"
    key = next(iter(tensors))
    torch.save({"state_dict": {**tensors, key: TensorWithHooks(tensors[key])}}, path)
    return path


def _not_a_dict(folder: Path, tensors, metadata, good) -> Path:
    path = folder / "a-list.ckpt"
    torch.save([1, 2, 3], path)
    return path


def _dtype(name: str, dtype: torch.dtype) -> Callable[..., Path]:
    def make(folder: Path, tensors, metadata, good) -> Path:
        return _safetensors(folder, name, {k: v.to(dtype) if v.is_floating_point() else v
                                           for k, v in tensors.items()}, metadata)
    return make


def _one_int8(folder: Path, tensors, metadata, good) -> Path:
    return _safetensors(folder, "one-int8.safetensors", {k: v.to(torch.int8) if k.endswith("conv_in.weight") else v
                                                         for k, v in tensors.items()}, metadata)


def _keys(name: str, change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Callable[..., Path]:
    def make(folder: Path, tensors, metadata, good) -> Path:
        return _safetensors(folder, name, change(dict(tensors)), metadata)
    return make


def _flattened(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.flatten().contiguous() if v.dim() > 1 else v for k, v in tensors.items()}


def _without_vae(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")}


def _renamed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"x." + k: v for k, v in tensors.items()}


def _lora_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}


SINGLE_FILES = (
    BadFile("empty file", _bytes("empty.safetensors", b""), "empty"),
    BadFile("photo renamed .ckpt", _bytes("photo.ckpt", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "not a model file"),
    BadFile("text renamed .safetensors", _bytes("notes.safetensors", b"just some notes, renamed"),
            "could not be read as safetensors"),
    BadFile("safetensors header only", _bytes("header.safetensors", b"\x10\0\0\0\0\0\0\0{\"a\": 1}"),
            "could not be read as safetensors"),
    BadFile("truncated .safetensors", _truncated, "truncated"),
    BadFile("truncated .ckpt", _truncated_ckpt, "truncated"),
    BadFile("pickle named .safetensors", _pickle_named_safetensors, "pickle.*named .safetensors.*not opened"),
    BadFile("legacy pickle named .safetensors", _legacy_pickle_named_safetensors, "named .safetensors.*not opened"),
    BadFile(".ckpt that runs a shell command", _runs_shell, "refused.*system.*not run"),
    BadFile(".ckpt whose pickle overrides methods", _overrides_methods, "refused.*sets attributes.*OrderedDict"),
    BadFile(".ckpt whose tensor carries hooks", _tensor_hooks, "refused.*backward hooks"),
    BadFile(".ckpt holding a list", _not_a_dict, "not a model state dict"),
    BadFile("int8 weights", _dtype("int8.safetensors", torch.int8), "is int8, not floating point"),
    BadFile("one int8 weight", _one_int8, "is int8, not floating point"),
    BadFile("bool weights", _dtype("bool.safetensors", torch.bool), "is bool, not floating point"),
    BadFile("flattened weights", _keys("flat.safetensors", _flattened), "shape"),
    BadFile("VAE keys missing", _keys("no-vae.safetensors", _without_vae), "missing VAE key"),
    BadFile("every key renamed", _keys("renamed.safetensors", _renamed), "unknown architecture"),
    BadFile("a LoRA given as the model", _keys("lora.safetensors", _lora_only), "LoRA, not a full model"),
)


def diffusers_damage(folder: Path, case: str) -> None:
    """Damage a copy of a diffusers model folder the way ``case`` says."""
    from safetensors.torch import load_file, save_file

    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if case == "int8 UNet weights":
        save_file({k: v.to(torch.int8) for k, v in load_file(unet).items()}, unet)
    elif case == "pickle as the UNet's .safetensors":
        tensors = load_file(unet)
        unet.unlink()
        torch.save(tensors, unet)
    elif case == "truncated VAE weights":
        vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
        vae.write_bytes(vae.read_bytes()[:1000])
    elif case == "empty text encoder weights":
        (folder / "text_encoder" / "model.safetensors").write_bytes(b"")
    elif case == "UNet config not JSON":
        (folder / "unet" / "config.json").write_text("{not json")
    elif case == "UNet keys renamed":
        save_file({"x" + k: v for k, v in load_file(unet).items()}, unet)
    elif case == "UNet weights flattened":
        save_file(_flattened(load_file(unet)), unet)
    elif case == "UNet folder missing":
        shutil.rmtree(folder / "unet")
    else:
        raise AssertionError(case)


DIFFUSERS_DAMAGE = {  # case -> what the error must say
    "int8 UNet weights": "is I8, not floating point",
    "pickle as the UNet's .safetensors": "pickle.*named .safetensors.*not opened",
    "truncated VAE weights": "could not be read as safetensors",
    "empty text encoder weights": "could not be read as safetensors",
    "UNet config not JSON": "not a valid JSON",
    "UNet keys renamed": "weights do not fit its config.json",
    "UNet weights flattened": "shape",
    "UNet folder missing": "lacks its unet",
}


def no_pickle_ran(folder: Path) -> bool:
    return not (folder / "pwned").exists()

