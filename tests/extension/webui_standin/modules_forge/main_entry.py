"""Forge selects a checkpoint through ``checkpoint_change(name)`` (its sd_models load calls are stubs)."""

from modules import sd_models, shared


def checkpoint_change(ckpt_name: str, save: bool = True, refresh: bool = True) -> bool:
    info = sd_models.get_closet_checkpoint_match(ckpt_name)
    if info is None:
        return False
    shared.opts.data["sd_model_checkpoint"] = info.title
    sd_models.calls.append(f"forge-change:{info.title}")
    sd_models.model_data.sd_model = info.title
    return True
