"""Key table of the SD VAE: diffusers ``AutoencoderKL`` <-> original ``first_stage_model.*``.

The original decoder numbers its levels from the bottom (``decoder.up.3`` runs first); diffusers numbers
them in running order. The mid-block attention is a set of 1x1 convolutions in the original and Linear
layers in diffusers: the same numbers, reshaped (losslessly) between ``[C, C, 1, 1]`` and ``[C, C]``.
"""

from __future__ import annotations

from typing import Any, Mapping

from dreamcore.convert.key_table import KeyTable, ModuleEntry

VAE_PREFIX = "first_stage_model."

RESNET_NAMES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                "conv_shortcut": "nin_shortcut"}
ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
ATTENTION_LINEARS = frozenset({"to_q", "to_k", "to_v", "to_out.0"})


def vae_key_table(config: Mapping[str, Any]) -> KeyTable:
    """The VAE key table for a diffusers AutoencoderKL config with SD's layout."""
    levels = len(config["block_out_channels"])
    per_level = int(config["layers_per_block"])
    entries = [ModuleEntry("quant_conv", "quant_conv"), ModuleEntry("post_quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        entries += [
            ModuleEntry(f"{part}.conv_in", f"{part}.conv_in"),
            ModuleEntry(f"{part}.conv_norm_out", f"{part}.norm_out"),
            ModuleEntry(f"{part}.conv_out", f"{part}.conv_out"),
            ModuleEntry(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", RESNET_NAMES),
            ModuleEntry(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", RESNET_NAMES),
            ModuleEntry(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", ATTENTION_NAMES, ATTENTION_LINEARS),
        ]
    for level in range(levels):
        for resnet in range(per_level):
            entries.append(ModuleEntry(f"encoder.down_blocks.{level}.resnets.{resnet}",
                                       f"encoder.down.{level}.block.{resnet}", RESNET_NAMES))
        if level < levels - 1:
            entries.append(ModuleEntry(f"encoder.down_blocks.{level}.downsamplers.0.conv",
                                       f"encoder.down.{level}.downsample.conv"))
    for level in range(levels):
        original_level = levels - 1 - level
        for resnet in range(per_level + 1):
            entries.append(ModuleEntry(f"decoder.up_blocks.{level}.resnets.{resnet}",
                                       f"decoder.up.{original_level}.block.{resnet}", RESNET_NAMES))
        if level < levels - 1:
            entries.append(ModuleEntry(f"decoder.up_blocks.{level}.upsamplers.0.conv",
                                       f"decoder.up.{original_level}.upsample.conv"))
    return KeyTable(entries, "VAE")
