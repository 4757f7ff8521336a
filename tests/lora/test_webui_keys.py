"""The exported kohya keys land on real layers of the model as the WebUI loads it, for SD1 and SD2.

The oracle below restates, from the host facts (the WebUI's built-in Lora extension, networks.py), how the
WebUI turns a kohya key into one of its own module names: diffusers' down/mid/up block attentions become
LDM's input/middle/output blocks; SD1's text keys gain the ``transformer_`` prefix of its CLIP wrapper;
SD2's go to OpenCLIP's ``model_transformer_resblocks_N_attn`` (q, k, v fused in ``in_proj_weight``,
applied only when a layer has all four projections), ``mlp_c_fc`` and ``mlp_c_proj``. The WebUI's module
names come from dreamcore's single-file layout (the checkpoint the WebUI loads), so both sides are checked
against what the WebUI actually holds, and each LoRA's shapes must fit the layer it lands on.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
import torch

from dreamcore.convert import components_state_dict
from dreamcore.lora.adapters import LoraSettings, LoraSetupError, add_lora_adapters
from dreamcore.lora.export import lora_weights_from_models
from dreamcore.lora.kohya import peft_to_kohya
from dreamcore.tiny import build_tiny_model


def webui_module_name(kohya: str, is_sd2: bool, modules: set[str]) -> str | None:
    """The WebUI layer a kohya LoRA name applies to (None: it would report the key as unmatched)."""
    name = None
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)", kohya):
        name = f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    elif m := re.fullmatch(r"lora_unet_mid_block_attentions_(\d+)_(.+)", kohya):
        name = f"diffusion_model_middle_block_1_{m[2]}"
    elif m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)", kohya):
        name = f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    elif m := re.fullmatch(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", kohya):
        if is_sd2:
            rest = m[2].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
            name = f"model_transformer_resblocks_{m[1]}_{rest}"
        else:
            name = f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if name is None:
        return None
    if name in modules:
        return name
    fused = re.fullmatch(r"(.*)_[qkv]_proj", name)
    return fused[1] if fused and fused[1] in modules else None


def webui_layers(components) -> dict[str, torch.Tensor]:
    """Module name (as the WebUI flattens it) -> that layer's weight, from the single-file checkpoint."""
    layers = {}
    for key, tensor in components_state_dict(components).items():
        if key.startswith("model.diffusion_model.") and key.endswith(".weight"):
            layers[key[len("model."):-len(".weight")].replace(".", "_")] = tensor
        elif key.startswith("cond_stage_model.") and key.endswith(("weight", "in_proj_weight")):
            path = key[len("cond_stage_model."):].rsplit(".", 1)[0]
            layers[path.replace(".", "_")] = tensor
    return layers


def exported_keys(family: str, targets: str = "") -> tuple[dict[str, torch.Tensor], object]:
    model = build_tiny_model(family)
    settings = LoraSettings(rank=2, alpha=2.0, target_modules=tuple(t for t in targets.split(",") if t))
    add_lora_adapters(model.unet, model.text_encoder, settings, family)
    weights = lora_weights_from_models(model)
    base = build_tiny_model(family)
    return peft_to_kohya(weights.parts, weights.alphas), base


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("targets", ["", "to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,"
                                         "q_proj,k_proj,v_proj,out_proj,fc1,fc2"])
def test_every_exported_key_lands_on_a_webui_layer_of_the_right_shape(family: str, targets: str) -> None:
    state, base = exported_keys(family, targets)
    layers = webui_layers(base)
    is_sd2 = any(name.startswith("model_transformer_resblocks") for name in layers)
    assert is_sd2 == (family == "sd2")  # how the WebUI itself tells SD2 apart
    fused_parts = defaultdict(set)
    names = {key.split(".", 1)[0] for key in state}
    assert names and any(n.startswith("lora_te_text_model_encoder_layers_") for n in names)
    for name in names:
        target = webui_module_name(name, is_sd2, set(layers))
        assert target is not None, f"the WebUI would not match {name}"
        weight = layers[target]
        down, up = state[name + ".lora_down.weight"], state[name + ".lora_up.weight"]
        assert state[name + ".alpha"].ndim == 0
        fused = target != name and target.endswith("_attn") and name.endswith(("q_proj", "k_proj", "v_proj"))
        if fused:
            fused_parts[target].add(name.rsplit("_", 2)[-2])
            assert up.shape[0] * 3 == weight.shape[0] and down.shape[1] == weight.shape[1]
        else:
            assert up.shape[0] == weight.shape[0] and down.shape[1] == weight.shape[1], name
            assert down.ndim == weight.ndim  # SD1's proj_in/proj_out are 1x1 convs on both sides
    assert bool(fused_parts) == is_sd2  # SD2's q/k/v really went to the fused layer
    for target, parts in fused_parts.items():  # the WebUI needs q, k and v (and out) of a fused layer
        assert parts == {"q", "k", "v"}, target
        assert target + "_out_proj" in layers


def test_sd1_keys_are_the_kohya_names_the_webui_reads() -> None:
    state, _ = exported_keys("sd1")
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in state
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in state


def test_sd2_text_encoder_lora_needs_all_four_attention_projections() -> None:
    model = build_tiny_model("sd2")
    with pytest.raises(LoraSetupError, match="go together"):
        add_lora_adapters(model.unet, model.text_encoder, LoraSettings(target_modules=("to_q", "q_proj")), "sd2")


def test_unknown_target_module_names_the_field() -> None:
    model = build_tiny_model("sd1")
    with pytest.raises(LoraSetupError, match="lora_target_modules: to_qq"):
        add_lora_adapters(model.unet, None, LoraSettings(target_modules=("to_q", "to_qq")), "sd1")
