"""The checkpoint list and the loaded model, as the host exposes them to extensions.

Loading reads the file's safetensors header, so a damaged file fails as it does in the host. With a
``<same name>.yaml`` beside the file (which the host builds its model from), the header's tensors must also
fit the SD1 model that config describes, as the host's ``load_state_dict`` needs: every GroupNorm of
32 groups, each tensor of the model's shape (``ldm_shapes``). Without one the host guesses a config from the
keys; the stand-in does not, and accepts any header. A failed load
then goes as in each host: A1111 keeps the model it had and raises (``opts.set`` shows the error, records it
and returns False); SD.Next has dropped its model before loading and only logs the error; Forge raises from
``forge_model_reload`` after dropping its model.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")

checkpoints_list: dict[str, "CheckpointInfo"] = {}
checkpoint_aliases: dict[str, "CheckpointInfo"] = {}
calls: list[str] = []  # stand-in only: what happened to the loaded model, for tests to read


class CheckpointInfo:
    def __init__(self, filename: str, root: str):
        self.filename = filename
        relative = os.path.relpath(filename, root) if filename.startswith(root) else os.path.basename(filename)
        self.name = relative
        self.model_name = os.path.splitext(relative.replace("/", "_").replace("\\", "_"))[0]
        self.hash = None
        self.shorthash = None
        self.title = relative  # a fresh file shows no hash until it is first loaded

    def register(self) -> None:
        checkpoints_list[self.title] = self
        for alias in (self.title, self.model_name, self.name):
            checkpoint_aliases[alias] = self


class LoadedModel:
    """The host's model object, reduced to what tells which file it came from."""

    def __init__(self, info: CheckpointInfo):
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.on_gpu = True


class ModelData:
    def __init__(self) -> None:
        self.sd_model: LoadedModel | None = None
        self.forge_loading_parameters: dict[str, Any] = {}  # Forge: what the next generation loads
        self.forge_hash = ""


model_data = ModelData()


def checkpoint_folder() -> str:
    from modules import paths, shared

    if shared.FLAVOR == "sdnext":
        return shared.opts.data["ckpt_dir"]
    return shared.cmd_opts.ckpt_dir or os.path.join(paths.models_path, "Stable-diffusion")


def list_models() -> None:
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    root = checkpoint_folder()
    found = []
    for folder, _dirs, files in os.walk(root):
        for file in files:
            if file.endswith(CHECKPOINT_SUFFIXES) and ".vae." not in file:
                found.append(os.path.join(folder, file))
    for filename in sorted(found):
        CheckpointInfo(filename, root).register()


def get_closet_checkpoint_match(search: str) -> CheckpointInfo | None:
    if search in checkpoint_aliases:
        return checkpoint_aliases[search]
    found = sorted((info for info in checkpoints_list.values() if search in info.title),
                   key=lambda info: len(info.title))
    return found[0] if found else None


def select_checkpoint() -> CheckpointInfo | None:
    """The checkpoint the sd_model_checkpoint option names, else the first one listed."""
    from modules import shared

    info = checkpoint_aliases.get(shared.opts.data.get("sd_model_checkpoint"))
    return info if info is not None else next(iter(checkpoints_list.values()), None)


def read_checkpoint(filename: str) -> dict[str, Any]:
    """The host's loader, reduced to what fails without torch: the file must open and hold a safetensors
    header (8 bytes of little-endian length, then that many bytes of JSON) and fit its ``.yaml``, if any."""
    header = _read_header(filename)
    config = os.path.splitext(filename)[0] + ".yaml"
    if os.path.isfile(config):
        _check_against_config(header, config)
    return header


def _check_against_config(header: dict[str, Any], config: str) -> None:
    """What building the model from ``config`` and loading the file into it raise in the host."""
    import yaml
    from ldm_shapes import GROUPNORM_GROUPS, sd1_checkpoint_shapes

    with open(config, encoding="utf-8") as file:
        expected = sd1_checkpoint_shapes(yaml.safe_load(file))
    for key, channels in expected.groupnorms.items():
        if channels % GROUPNORM_GROUPS:  # torch.nn.GroupNorm's own message, raised while the model is built
            raise ValueError(f"num_channels must be divisible by num_groups ({key}: {channels} channels, "
                             f"{GROUPNORM_GROUPS} groups)")
    mismatches = [f"size mismatch for {key}: copying a param with shape {list(header[key]['shape'])} from "
                  f"checkpoint, the shape in current model is {list(shape)}."
                  for key, shape in expected.shapes.items()
                  if key in header and tuple(header[key]["shape"]) != shape]
    if mismatches:
        raise RuntimeError("Error(s) in loading state_dict for LatentDiffusion:\n\t" + "\n\t".join(mismatches))


def _read_header(filename: str) -> dict[str, Any]:
    with open(filename, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise OSError(f"Error while deserializing header: HeaderTooSmall ({filename})")
        size = struct.unpack("<Q", head)[0]
        if size > 100_000_000:
            raise OSError(f"Error while deserializing header: HeaderTooLarge ({filename})")
        try:
            return json.loads(file.read(size))
        except ValueError as error:
            raise OSError(f"Error while deserializing header: InvalidHeader ({filename}: {error})") from error


def start_with_model(title: str) -> None:
    """Stand-in only: what the WebUI does at start, select ``title`` and load it."""
    from modules import shared

    info = checkpoint_aliases[title]
    read_checkpoint(info.filename)
    shared.opts.data["sd_model_checkpoint"] = info.title
    model_data.sd_model = LoadedModel(info)
    if shared.FLAVOR == "forge":
        model_data.forge_loading_parameters = {"checkpoint_info": info}
        model_data.forge_hash = str(model_data.forge_loading_parameters)


def unload_model_weights(sd_model: Any = None, info: Any = None) -> None:
    calls.append("unload")
    if model_data.sd_model is not None:
        model_data.sd_model.on_gpu = False  # A1111 moves it to CPU memory; it stays the loaded model


def reload_model_weights(sd_model: Any = None, info: CheckpointInfo | None = None) -> LoadedModel | None:
    from modules import shared

    if shared.FLAVOR == "forge":
        return None  # Forge keeps these as empty stubs
    info = info or select_checkpoint()
    if info is None:
        raise FileNotFoundError("stand-in: no checkpoint to load")
    current = model_data.sd_model
    if current is not None and current.sd_checkpoint_info.filename == info.filename:
        current.on_gpu = True
        calls.append(f"load:{info.title}")
        return current
    if shared.FLAVOR == "sdnext":
        model_data.sd_model = None  # SD.Next drops the old model before it loads the new one
        try:
            read_checkpoint(info.filename)
        except Exception as error:  # SD.Next catches every load error, logs it and returns
            shared.log.error(f'Load model: file="{info.filename}" {error}')
            calls.append(f"load-failed:{info.title}")
            return None
        finally:
            shared.opts.data["sd_model_checkpoint"] = info.title  # set whether or not the load worked
    else:
        try:
            read_checkpoint(info.filename)
        except Exception:
            calls.append(f"load-failed:{info.title}")
            raise  # A1111 keeps the weights it had and raises to opts.set
    model_data.sd_model = LoadedModel(info)
    calls.append(f"load:{info.title}")
    return model_data.sd_model


def forge_model_reload() -> tuple[LoadedModel | None, bool]:
    """Forge: load what checkpoint_change selected, unless it is loaded already."""
    parameters = model_data.forge_loading_parameters
    if model_data.forge_hash == str(parameters):
        return model_data.sd_model, False
    model_data.sd_model = None  # Forge drops the model it had before it loads
    info = parameters.get("checkpoint_info")
    if info is None:
        raise ValueError("You do not have any model! Please download at least one model in "
                         "[models/Stable-diffusion].")
    try:
        read_checkpoint(info.filename)
    except Exception:
        calls.append(f"forge-load-failed:{info.title}")
        raise
    model_data.sd_model = LoadedModel(info)
    model_data.forge_hash = str(parameters)
    calls.append(f"forge-load:{info.title}")
    return model_data.sd_model, True
