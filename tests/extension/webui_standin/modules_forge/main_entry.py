"""Forge selects a checkpoint through ``checkpoint_change(name)``: it records the choice and the loading
parameters; the model itself loads at the next generation (``sd_models.forge_model_reload``)."""

from modules import sd_models, shared


def checkpoint_change(ckpt_name: str, save: bool = True, refresh: bool = True) -> bool:
    """True if the selection changed."""
    new = sd_models.get_closet_checkpoint_match(ckpt_name)
    current = sd_models.get_closet_checkpoint_match(shared.opts.data.get("sd_model_checkpoint") or "")
    if new == current:
        return False
    shared.opts.set("sd_model_checkpoint", ckpt_name)
    if refresh:
        sd_models.model_data.forge_loading_parameters = {"checkpoint_info": sd_models.select_checkpoint()}
    sd_models.calls.append(f"forge-change:{ckpt_name}")
    return True
