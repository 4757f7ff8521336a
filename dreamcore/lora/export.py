"""What a LoRA run saves: the WebUI's kohya file (plus its card JSON) and, at the end, the diffusers folder."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamcore.components import ModelComponents
from dreamcore.lora.adapters import ADAPTER_NAME, has_lora, trainable_state_dict
from dreamcore.lora.kohya import canonical_module_path
from dreamcore.lora.files import LoraWeights, kohya_metadata, write_kohya_file, write_peft_folder

PEFT_FOLDER_NAME = "lora_peft"


def lora_weights_from_models(components: ModelComponents) -> LoraWeights:
    """The LoRA adapters on a model's UNet and text encoders (fp32 copies), with their alphas."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for part, module in (("unet", components.unet), *components.text_encoders().items()):
        if not has_lora(module):
            continue
        state = {canonical_module_path(part, k): v.float().cpu() for k, v in trainable_state_dict(module).items()}
        parts[part] = state
        config = module.peft_config[ADAPTER_NAME]  # alpha_pattern keys match path ends: canonical or not
        for key in state:
            if key.endswith(".lora_A.weight"):
                module_path = key[:-len(".lora_A.weight")]
                alpha = config.lora_alpha
                for pattern, value in (config.alpha_pattern or {}).items():
                    if module_path == pattern or module_path.endswith("." + pattern):
                        alpha = value
                alphas[f"{part}.{module_path}"] = float(alpha)
    if "unet" not in parts:
        raise ValueError("the UNet has no LoRA adapter; train with use_lora to export a LoRA")
    return LoraWeights(parts, alphas, components.family)


def export_training_lora(components: ModelComponents, output_dir: Path, model_name: str, step: int, final: bool,
                         metadata: dict[str, str], user_metadata: dict, half: bool) -> dict[str, str]:
    """Write the LoRA of a run; returns the outputs ("lora": the kohya file, "lora_peft": the folder).

    Final: ``<output_dir>/<model_name>.safetensors`` and ``<output_dir>/lora_peft/``; during the run:
    ``<output_dir>/checkpoints/<model_name>-step-NNNNNN.safetensors``. ``<name>.json`` beside each file is
    the WebUI's card (activation text, preferred weight). ``metadata`` (the trainer's ``dreamcore.*`` keys:
    base model, trigger words, ...) goes into the file beside kohya's ``ss_*`` fields.
    """
    weights = lora_weights_from_models(components)
    weights.metadata = dict(metadata)
    file_metadata = kohya_metadata(weights, metadata.get("dreamcore.base_model", ""),
                                   metadata.get("dreamcore.trigger_words", ""), {**metadata, "ss_steps": str(step)})
    card = {"preferred weight": 1, **user_metadata}
    if final:
        path = output_dir / f"{model_name}.safetensors"
    else:
        path = output_dir / "checkpoints" / f"{model_name}-step-{step:06d}.safetensors"
    outputs = {"lora": str(write_kohya_file(path, weights, file_metadata, half=half, user_metadata=card))}
    if final:
        outputs["lora_peft"] = str(write_peft_folder(output_dir / PEFT_FOLDER_NAME, weights))
    return outputs
