"""A base model's .yaml travels to every single file trained from it: the WebUI cannot load those without it."""

from __future__ import annotations

from pathlib import Path

from dreamcore import TrainConfig
from dreamcore.convert.original_config import original_config, original_config_yaml
from dreamcore.models import load_base_model
from dreamcore.tiny import save_tiny_model
from dreamcore.training import train


def test_outputs_carry_the_base_models_yaml(photo_dir: Path, tmp_path: Path) -> None:
    base = save_tiny_model(tmp_path / "base" / "custom-sd1.safetensors", family="sd1", fmt="safetensors")
    configs = load_base_model(str(base)).architecture
    # a config of the base's own (a comment and a key the published one lacks), kept byte for byte
    yaml_text = "# this model's own config\n" + original_config_yaml(
        original_config("sd1", configs["unet"], configs["vae"], configs["scheduler"])) + "custom_key: kept\n"
    base.with_suffix(".yaml").write_text(yaml_text, encoding="utf-8")
    config = TrainConfig(pretrained_model_name_or_path=str(base), instance_data_dir=str(photo_dir),
                         instance_prompt="photo of sks person", output_dir=str(tmp_path / "out"), resolution=64,
                         max_train_steps=2, save_interval=1, checkpointing_steps=0, n_save_sample=1,
                         save_infer_steps=1, learning_rate=1e-4, lr_warmup_steps=0)
    result = train(config)
    final = Path(result.outputs["single_file"])
    checkpoint = tmp_path / "out" / "checkpoints" / "out-step-000001.safetensors"
    for model_file in (final, checkpoint):
        assert model_file.with_suffix(".yaml").read_text(encoding="utf-8") == yaml_text, model_file
    # and a model trained from a base without one gets none (SD1 loads without it)
    plain = save_tiny_model(tmp_path / "plain" / "plain-sd1.safetensors", family="sd1", fmt="safetensors")
    result = train(config.replace(pretrained_model_name_or_path=str(plain), output_dir=str(tmp_path / "plain-out"),
                                  save_interval=0))
    assert not Path(result.outputs["single_file"]).with_suffix(".yaml").exists()
