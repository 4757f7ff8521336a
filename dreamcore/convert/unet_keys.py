"""Key table of the SD UNet: diffusers ``UNet2DConditionModel`` <-> original ``model.diffusion_model.*``.

The original UNet numbers its blocks flat: ``input_blocks.0`` is the first convolution, then every ResNet
(with its cross-attention as sub-module ``.1`` where the level has one) and every downsampler gets the
next ``input_blocks`` index. ``output_blocks`` run the same way upwards, with the upsampler as the last
sub-module of a level's last block. diffusers nests the same modules by level. The table is generated from
the UNet config (levels, ResNets per level, which levels attend), so it also fits the tiny test models.
"""

from __future__ import annotations

from typing import Any, Mapping

from dreamcore.convert.errors import ModelLoadError
from dreamcore.convert.key_table import KeyTable, ModuleEntry

UNET_PREFIX = "model.diffusion_model."

# A diffusers ResNet's sub-modules and where the original ResBlock keeps them.
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # block type -> has cross-attention
UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
MID_TYPE = "UNetMidBlock2DCrossAttn"


def unet_key_table(config: Mapping[str, Any]) -> KeyTable:
    """The UNet key table for a diffusers UNet config with SD's block layout."""
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    unknown = [t for t in down_types if t not in DOWN_TYPES] + [t for t in up_types if t not in UP_TYPES]
    if config.get("mid_block_type", MID_TYPE) != MID_TYPE:
        unknown.append(config["mid_block_type"])
    if unknown or len(down_types) != len(up_types):
        raise ModelLoadError(f"UNet blocks {unknown or down_types} are not Stable Diffusion 1.x/2.x blocks; "
                             "only SD1.x/SD2.x UNets can be converted")
    per_level = int(config["layers_per_block"])
    levels = len(down_types)
    entries = [
        ModuleEntry("conv_in", "input_blocks.0.0"),
        ModuleEntry("time_embedding.linear_1", "time_embed.0"),
        ModuleEntry("time_embedding.linear_2", "time_embed.2"),
        ModuleEntry("mid_block.resnets.0", "middle_block.0", RESNET_NAMES),
        ModuleEntry("mid_block.attentions.0", "middle_block.1"),
        ModuleEntry("mid_block.resnets.1", "middle_block.2", RESNET_NAMES),
        ModuleEntry("conv_norm_out", "out.0"),
        ModuleEntry("conv_out", "out.2"),
    ]
    index = 1
    for level, block_type in enumerate(down_types):
        for resnet in range(per_level):
            entries.append(ModuleEntry(f"down_blocks.{level}.resnets.{resnet}", f"input_blocks.{index}.0",
                                       RESNET_NAMES))
            if DOWN_TYPES[block_type]:
                entries.append(ModuleEntry(f"down_blocks.{level}.attentions.{resnet}", f"input_blocks.{index}.1"))
            index += 1
        if level < levels - 1:
            entries.append(ModuleEntry(f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{index}.0.op"))
            index += 1
    index = 0
    for level, block_type in enumerate(up_types):
        attends = UP_TYPES[block_type]
        for resnet in range(per_level + 1):
            entries.append(ModuleEntry(f"up_blocks.{level}.resnets.{resnet}", f"output_blocks.{index}.0",
                                       RESNET_NAMES))
            if attends:
                entries.append(ModuleEntry(f"up_blocks.{level}.attentions.{resnet}", f"output_blocks.{index}.1"))
            if resnet == per_level and level < levels - 1:
                upsampler_slot = 2 if attends else 1
                entries.append(ModuleEntry(f"up_blocks.{level}.upsamplers.0.conv",
                                           f"output_blocks.{index}.{upsampler_slot}.conv"))
            index += 1
    return KeyTable(entries, "UNet")
