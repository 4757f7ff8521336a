"""An SDXL job end to end through the job queue: a tiny SDXL base trained as LoRA with the "SDXL LoRA" preset's
settings (at 64 px and a few steps) in a real training child; what a person then sees of it. And the job's
record of its model's family, written by the child (with a stand-in for dreamcore.train)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import dreamcore
from dreamcore.cli import main
from dreamcore.config import TrainConfig
from dreamcore.convert.checkpoint_files import write_safetensors
from dreamcore.convert.errors import ModelLoadError
from dreamcore.events import Finished, Stage
from dreamcore.families import FAMILIES, get_family
from dreamcore.families.sdxl import SDXL
from dreamcore.jobs import JobManager, child
from dreamcore.jobs.command import jobs_root
from dreamcore.jobs.events_file import EventsReader
from dreamcore.jobs.folder import JobFolder
from dreamcore.jobs.generate_api import GenerateService
from dreamcore.lora.files import FAMILY_KEY
from dreamcore.presets import SDXL_LORA_PRESET, preset_overrides

from jobs_helpers import make_photos, wait_until_final


@pytest.fixture(scope="module")
def tiny_sdxl_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL as a single .safetensors file, as a WebUI keeps its checkpoints."""
    from dreamcore.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"), family=SDXL.name, fmt="safetensors", seed=2)


@pytest.fixture
def manager(tmp_path: Path):
    manager = JobManager(tmp_path / "jobs", poll_interval=0.1)
    yield manager
    manager.shutdown(stop_running=True, timeout=120)


def sdxl_lora_config(base: Path, photos: Path) -> TrainConfig:
    """The "SDXL LoRA" preset (prior preservation, LoRA of the UNet and both text encoders) at 64 px: three
    steps, two class images and one sample of two steps each."""
    return TrainConfig(**{**preset_overrides(SDXL_LORA_PRESET), "resolution": 64, "max_train_steps": 3,
                          "num_class_images": 2, "class_infer_steps": 2, "n_save_sample": 1, "save_infer_steps": 2,
                          "checkpointing_steps": 0},
                       pretrained_model_name_or_path=str(base), instance_data_dir=str(photos),
                       instance_prompt="photo of sks person", class_prompt="photo of a person")


@pytest.mark.slow  # a training child's start-up alone is 10-20 s on 2 cores
def test_an_sdxl_lora_job_finishes_with_its_kohya_lora_samples_and_family(manager, tiny_sdxl_base, tmp_path,
                                                                         capsys):
    config = sdxl_lora_config(tiny_sdxl_base, make_photos(tmp_path / "photos"))
    assert config.use_lora and config.lora_text_encoder and config.with_prior_preservation  # the preset's recipe
    manager.submit(config, "anna-xl")

    job = wait_until_final(manager, "anna-xl", timeout=300)
    assert job.status == "completed", job.error + "\n".join(job.log_tail)
    assert [step for step, _ in job.losses] == [1, 2, 3]
    lora = Path(job.outputs["lora"])
    assert lora.name == "anna-xl.safetensors" and lora.is_relative_to(manager.root / "anna-xl")
    with safe_open(str(lora), "pt") as handle:
        prefixes, metadata = {key.split(".")[0].split("_")[1] for key in handle.keys()}, handle.metadata()
    assert prefixes == {"unet", "te1", "te2"}  # lora_unet_*, lora_te1_*, lora_te2_*: the kohya layout
    assert metadata["ss_base_model_version"] == SDXL.kohya_version
    assert job.samples and all(Path(path).is_file() for path in job.samples[-1][1])
    assert len(list((manager.root / "anna-xl").rglob("class_images/*/*.png"))) == 2
    assert get_family(job.family) is SDXL
    assert manager.get("anna-xl").to_dict()["family"] == SDXL.name  # what the REST API answers
    assert jobs_root(tmp_path) == manager.root
    assert main(["jobs", "--output", str(tmp_path), "show", "anna-xl"]) == 0
    assert f"model family: {SDXL.label}\n" in capsys.readouterr().out

    # the standalone app's Generate draws with the job's LoRA on its SDXL base
    status, body = GenerateService(manager).handle({"job": "anna-xl", "prompt": config.instance_prompt, "seed": 1,
                                                    "num_inference_steps": 2, "width": 64, "height": 64})
    assert status == 200, body
    assert body["model"] == str(lora)
    with Image.open(body["images"][0]["path"]) as image:
        assert image.size == (64, 64)


def job_folder(path: Path, config: TrainConfig) -> JobFolder:
    folder = JobFolder(path)
    folder.path.mkdir()
    config.replace(output_dir=str(folder.output)).save(folder.config)
    return folder


def test_the_child_records_the_family_read_at_load_and_the_one_its_model_names(
        tiny_sdxl_base, tmp_path, monkeypatch):
    """The family shows while the job trains (read from the base's files when it loads), and is the one the
    exported model names once it ends (an SD2-v file without metadata reads as SD2 before it is loaded)."""
    other = next(family for family in FAMILIES.values() if family is not SDXL)
    lora = write_safetensors(tmp_path / "adapters.safetensors", {"w": torch.zeros(1)}, {FAMILY_KEY: other.name})
    seen = []

    def fake_train(config, callbacks, stop):
        for event in (Stage("load", config.pretrained_model_name_or_path),
                      Finished("completed", 1, {"lora": str(lora)})):
            for callback in callbacks:
                callback(event)
            seen.append(EventsReader(folder.events).read().family)

    folder = job_folder(tmp_path / "job", sdxl_lora_config(tiny_sdxl_base, make_photos(tmp_path / "photos")))
    monkeypatch.setattr(dreamcore, "train", fake_train)
    assert child.main([str(folder.path)]) == 0
    assert seen == [SDXL.name, other.name]


def test_a_base_that_cannot_be_read_fails_the_job_with_the_reason(tmp_path, monkeypatch):
    base = tmp_path / "broken.safetensors"
    base.write_bytes(b"not a model")
    config = sdxl_lora_config(base, make_photos(tmp_path / "photos"))
    folder = job_folder(tmp_path / "job", config)
    monkeypatch.setattr(dreamcore, "train", lambda config, callbacks, stop: [c(Stage("load")) for c in callbacks])
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        child.main([str(folder.path)])
    progress = EventsReader(folder.events).read()
    assert progress.family == "" and "broken.safetensors" in progress.error["message"]
