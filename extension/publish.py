"""Put a finished model where the WebUI's txt2img finds it, with the card text its Extra Networks show.

``<checkpoint folder>/dreamcore/<name>.safetensors`` is written atomically (a half-copied file never
appears in the checkpoint list), then ``<name>.json``, the WebUI's "user metadata" (activation text =
the instance prompt), and ``<name>.yaml`` when the export has one (SD2 v-prediction needs it).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from dreamcore.fileio import atomic_path, atomic_write_text


@dataclass(frozen=True)
class PublishedModel:
    path: Path            # the checkpoint in the WebUI's folder
    metadata_path: Path   # its user-metadata JSON
    activation_text: str  # what to type in the prompt to call the subject
    prompt_snippet: str = ""  # for a LoRA: "<lora:name:1> activation text", to paste into any prompt


def publish_checkpoint(exported: str | Path, checkpoint_dir: str | Path, name: str, activation_text: str,
                       description: str = "") -> PublishedModel:
    exported = Path(exported)
    target = _copy_into(exported, checkpoint_dir, name, "model")
    yaml_config = exported.with_suffix(".yaml")
    if yaml_config.is_file():
        with atomic_path(target.with_suffix(".yaml")) as temporary:
            shutil.copyfile(yaml_config, temporary)
    metadata = {
        "description": description or f"DreamBooth model trained by dreamcore; call the subject with "
                                      f"'{activation_text}'.",
        "activation text": activation_text,
        "notes": f"Trained by dreamcore from {exported}.",
    }
    metadata_path = atomic_write_text(target.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    return PublishedModel(target, metadata_path, activation_text)


def publish_lora(exported: str | Path, lora_dir: str | Path, name: str, activation_text: str) -> PublishedModel:
    """Copy a trained LoRA (kohya layout) and its card into ``<Lora folder>/dreamcore/<name>.safetensors``."""
    from dreamcore.lora.files import webui_prompt_snippet

    exported = Path(exported)
    target = _copy_into(exported, lora_dir, name, "LoRA")
    metadata = {"description": f"DreamBooth LoRA trained by dreamcore; call the subject with '{activation_text}'.",
                "activation text": activation_text, "preferred weight": 1.0,
                "notes": f"Trained by dreamcore ({exported})."}
    metadata_path = atomic_write_text(target.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    return PublishedModel(target, metadata_path, activation_text, webui_prompt_snippet(target))


def _copy_into(exported: Path, models_dir: str | Path, name: str, what: str) -> Path:
    """Atomically copy a job's exported file to ``<models_dir>/dreamcore/<name><suffix>``; returns the copy."""
    if not exported.is_file():
        raise FileNotFoundError(f"The trained {what} {exported} is missing; the job's folder may have been moved "
                                "or deleted. Run the job again.")
    target = Path(models_dir) / "dreamcore" / f"{name}{exported.suffix}"
    with atomic_path(target) as temporary:
        shutil.copyfile(exported, temporary)
    return target
