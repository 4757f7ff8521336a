"""The weights the WebUIs' SD1 model code builds from a checkpoint's ``.yaml``: every key, its shape, and which
keys are GroupNorms (the ldm code builds each with 32 groups, so their channel counts must divide by 32).

Written from the published ldm model definitions (``openaimodel.UNetModel`` with ``SpatialTransformer``,
``autoencoder.AutoencoderKL``'s ``Encoder``/``Decoder``) and CLIP ViT-L/14's text model, which the WebUIs
build for SD1 from their own config whatever the checkpoint holds. Needs no torch: shapes are tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

GROUPNORM_GROUPS = 32
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
# CLIP ViT-L/14's text model, as the WebUIs build it for SD1 (openai/clip-vit-large-patch14's config).
CLIP_L = {"hidden": 768, "layers": 12, "intermediate": 3072, "vocab": 49408, "positions": 77}


@dataclass
class Expected:
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    groupnorms: dict[str, int] = field(default_factory=dict)  # weight key -> channels
    buffers: set[str] = field(default_factory=set)  # keys a checkpoint may leave out (rebuilt by the model)

    def linear(self, key: str, out: int, into: int, bias: bool = True) -> None:
        self.shapes[f"{key}.weight"] = (out, into)
        if bias:
            self.shapes[f"{key}.bias"] = (out,)

    def conv(self, key: str, out: int, into: int, kernel: int) -> None:
        self.shapes[f"{key}.weight"] = (out, into, kernel, kernel)
        self.shapes[f"{key}.bias"] = (out,)

    def norm(self, key: str, channels: int, group: bool = True) -> None:
        self.shapes[f"{key}.weight"] = (channels,)
        self.shapes[f"{key}.bias"] = (channels,)
        if group:
            self.groupnorms[f"{key}.weight"] = channels


def sd1_checkpoint_shapes(yaml_config: Mapping[str, Any]) -> Expected:
    """Every weight of the SD1 model the WebUI builds from this ldm config (a parsed ``.yaml``)."""
    params = yaml_config["model"]["params"]
    target = params["cond_stage_config"]["target"]
    if not target.endswith("FrozenCLIPEmbedder"):
        raise ValueError(f"not an SD1 config: its text encoder is {target}")
    expected = Expected()
    _unet(expected, UNET_PREFIX, params["unet_config"]["params"])
    _vae(expected, VAE_PREFIX, params["first_stage_config"]["params"])
    _clip_text(expected, TEXT_PREFIX)
    return expected


def _resblock(expected: Expected, key: str, channels: int, out: int, emb: int) -> None:
    expected.norm(f"{key}.in_layers.0", channels)
    expected.conv(f"{key}.in_layers.2", out, channels, 3)
    expected.linear(f"{key}.emb_layers.1", out, emb)
    expected.norm(f"{key}.out_layers.0", out)
    expected.conv(f"{key}.out_layers.3", out, out, 3)
    if out != channels:
        expected.conv(f"{key}.skip_connection", out, channels, 1)


def _spatial_transformer(expected: Expected, key: str, channels: int, unet: Mapping[str, Any]) -> None:
    if unet.get("num_head_channels", -1) == -1:
        heads, head_dim = unet["num_heads"], channels // unet["num_heads"]
    else:
        heads, head_dim = channels // unet["num_head_channels"], unet["num_head_channels"]
    inner = heads * head_dim
    context = unet["context_dim"]
    expected.norm(f"{key}.norm", channels)
    linear = unet.get("use_linear_in_transformer", False)
    for name, out, into in (("proj_in", inner, channels), ("proj_out", channels, inner)):
        if linear:
            expected.linear(f"{key}.{name}", out, into)
        else:
            expected.conv(f"{key}.{name}", out, into, 1)
    for depth in range(unet.get("transformer_depth", 1)):
        block = f"{key}.transformer_blocks.{depth}"
        for attention, source in (("attn1", inner), ("attn2", context)):
            expected.linear(f"{block}.{attention}.to_q", inner, inner, bias=False)
            expected.linear(f"{block}.{attention}.to_k", inner, source, bias=False)
            expected.linear(f"{block}.{attention}.to_v", inner, source, bias=False)
            expected.linear(f"{block}.{attention}.to_out.0", inner, inner)
        expected.linear(f"{block}.ff.net.0.proj", inner * 4 * 2, inner)  # GEGLU: value and gate
        expected.linear(f"{block}.ff.net.2", inner, inner * 4)
        for norm in ("norm1", "norm2", "norm3"):
            expected.norm(f"{block}.{norm}", inner, group=False)


def _unet(expected: Expected, prefix: str, unet: Mapping[str, Any]) -> None:
    base = unet["model_channels"]
    mults = list(unet["channel_mult"])
    res_blocks = unet["num_res_blocks"]
    res_blocks = [res_blocks] * len(mults) if isinstance(res_blocks, int) else list(res_blocks)
    attention_at = set(unet["attention_resolutions"])
    emb = base * 4
    expected.linear(f"{prefix}time_embed.0", emb, base)
    expected.linear(f"{prefix}time_embed.2", emb, emb)
    expected.conv(f"{prefix}input_blocks.0.0", base, unet["in_channels"], 3)
    skips, channels, ds, index = [base], base, 1, 1
    for level, mult in enumerate(mults):
        for _ in range(res_blocks[level]):
            _resblock(expected, f"{prefix}input_blocks.{index}.0", channels, base * mult, emb)
            channels = base * mult
            if ds in attention_at:
                _spatial_transformer(expected, f"{prefix}input_blocks.{index}.1", channels, unet)
            skips.append(channels)
            index += 1
        if level != len(mults) - 1:
            expected.conv(f"{prefix}input_blocks.{index}.0.op", channels, channels, 3)
            skips.append(channels)
            ds *= 2
            index += 1
    _resblock(expected, f"{prefix}middle_block.0", channels, channels, emb)
    _spatial_transformer(expected, f"{prefix}middle_block.1", channels, unet)
    _resblock(expected, f"{prefix}middle_block.2", channels, channels, emb)
    index = 0
    for level, mult in reversed(list(enumerate(mults))):
        for block in range(res_blocks[level] + 1):
            _resblock(expected, f"{prefix}output_blocks.{index}.0", channels + skips.pop(), base * mult, emb)
            channels = base * mult
            layer = 1
            if ds in attention_at:
                _spatial_transformer(expected, f"{prefix}output_blocks.{index}.1", channels, unet)
                layer = 2
            if level and block == res_blocks[level]:
                expected.conv(f"{prefix}output_blocks.{index}.{layer}.conv", channels, channels, 3)
                ds //= 2
            index += 1
    expected.norm(f"{prefix}out.0", channels)
    expected.conv(f"{prefix}out.2", unet["out_channels"], base, 3)


def _vae_resnet(expected: Expected, key: str, channels: int, out: int) -> None:
    expected.norm(f"{key}.norm1", channels)
    expected.conv(f"{key}.conv1", out, channels, 3)
    expected.norm(f"{key}.norm2", out)
    expected.conv(f"{key}.conv2", out, out, 3)
    if out != channels:
        expected.conv(f"{key}.nin_shortcut", out, channels, 1)


def _vae_attention(expected: Expected, key: str, channels: int) -> None:
    expected.norm(f"{key}.norm", channels)
    for name in ("q", "k", "v", "proj_out"):
        expected.conv(f"{key}.{name}", channels, channels, 1)


def _vae_middle(expected: Expected, key: str, channels: int) -> None:
    _vae_resnet(expected, f"{key}.block_1", channels, channels)
    _vae_attention(expected, f"{key}.attn_1", channels)
    _vae_resnet(expected, f"{key}.block_2", channels, channels)


def _vae(expected: Expected, prefix: str, first_stage: Mapping[str, Any]) -> None:
    dd = first_stage["ddconfig"]
    ch, mults, blocks, z = dd["ch"], list(dd["ch_mult"]), dd["num_res_blocks"], dd["z_channels"]
    attention_at = set(dd.get("attn_resolutions", []))
    encoder = f"{prefix}encoder"
    expected.conv(f"{encoder}.conv_in", ch, dd["in_channels"], 3)
    resolution = dd["resolution"]
    channels = ch
    for level, mult in enumerate(mults):
        for block in range(blocks):
            _vae_resnet(expected, f"{encoder}.down.{level}.block.{block}", channels, ch * mult)
            channels = ch * mult
            if resolution in attention_at:
                _vae_attention(expected, f"{encoder}.down.{level}.attn.{block}", channels)
        if level != len(mults) - 1:
            expected.conv(f"{encoder}.down.{level}.downsample.conv", channels, channels, 3)
            resolution //= 2
    _vae_middle(expected, f"{encoder}.mid", channels)
    expected.norm(f"{encoder}.norm_out", channels)
    expected.conv(f"{encoder}.conv_out", 2 * z if dd.get("double_z", True) else z, channels, 3)
    decoder = f"{prefix}decoder"
    channels = ch * mults[-1]
    expected.conv(f"{decoder}.conv_in", channels, z, 3)
    _vae_middle(expected, f"{decoder}.mid", channels)
    for level in reversed(range(len(mults))):
        for block in range(blocks + 1):
            _vae_resnet(expected, f"{decoder}.up.{level}.block.{block}", channels, ch * mults[level])
            channels = ch * mults[level]
            if resolution in attention_at:
                _vae_attention(expected, f"{decoder}.up.{level}.attn.{block}", channels)
        if level != 0:
            expected.conv(f"{decoder}.up.{level}.upsample.conv", channels, channels, 3)
            resolution *= 2
    expected.norm(f"{decoder}.norm_out", channels)
    expected.conv(f"{decoder}.conv_out", dd["out_ch"], channels, 3)
    embed = first_stage["embed_dim"]
    expected.conv(f"{prefix}quant_conv", 2 * embed, 2 * z, 1)
    expected.conv(f"{prefix}post_quant_conv", z, embed, 1)


def _clip_text(expected: Expected, prefix: str) -> None:
    hidden, inner = CLIP_L["hidden"], CLIP_L["intermediate"]
    expected.shapes[f"{prefix}embeddings.token_embedding.weight"] = (CLIP_L["vocab"], hidden)
    expected.shapes[f"{prefix}embeddings.position_embedding.weight"] = (CLIP_L["positions"], hidden)
    position_ids = f"{prefix}embeddings.position_ids"
    expected.shapes[position_ids] = (1, CLIP_L["positions"])
    expected.buffers.add(position_ids)  # a buffer; newer transformers neither save nor need it
    for layer in range(CLIP_L["layers"]):
        key = f"{prefix}encoder.layers.{layer}"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            expected.linear(f"{key}.self_attn.{projection}", hidden, hidden)
        expected.norm(f"{key}.layer_norm1", hidden, group=False)
        expected.linear(f"{key}.mlp.fc1", inner, hidden)
        expected.linear(f"{key}.mlp.fc2", hidden, inner)
        expected.norm(f"{key}.layer_norm2", hidden, group=False)
    expected.norm(f"{prefix}final_layer_norm", hidden, group=False)
