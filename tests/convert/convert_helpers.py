"""Helpers shared by the conversion tests."""

from __future__ import annotations

import torch

from dreamcore.components import ModelComponents

FAMILIES = ("sd1", "sd2", "sd2-v")


def module_state(components: ModelComponents) -> dict[str, torch.Tensor]:
    """Every weight of a model, keyed by component."""
    from dreamcore.convert.modules import text_encoder_state_dict

    out = {f"unet.{k}": v for k, v in components.unet.state_dict().items()}
    out.update({f"vae.{k}": v for k, v in components.vae.state_dict().items()})
    out.update({f"text.{k}": v for k, v in text_encoder_state_dict(components.text_encoder).items()})
    return out


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert sorted(first) == sorted(second)
    different = [key for key in first
                 if first[key].dtype != second[key].dtype or not torch.equal(first[key], second[key])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"
