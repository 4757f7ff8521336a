"""The training loop on a tiny model: loss falls, prior term, text encoder frozen or trained, resume, stop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore import TrainConfig
from dreamcore.events import StopRequest
from dreamcore.training import TrainingError, compute_loss, train

from tiny_runs import tiny_config


def test_prior_loss_is_computed_on_the_class_half() -> None:
    target = torch.zeros(4, 4, 8, 8)
    prediction = torch.zeros(4, 4, 8, 8)
    prediction[2:] = 1.0  # error only in the class half
    total, instance, prior = compute_loss(prediction, target, with_prior=True, prior_loss_weight=0.5)
    assert instance.item() == 0.0 and prior.item() == 1.0 and total.item() == 0.5
    prediction = torch.zeros(4, 4, 8, 8)
    prediction[:2] = 2.0  # error only in the instance half
    total, instance, prior = compute_loss(prediction, target, with_prior=True, prior_loss_weight=0.5)
    assert instance.item() == 4.0 and prior.item() == 0.0 and total.item() == 4.0
    total, instance, prior = compute_loss(prediction, target, with_prior=False, prior_loss_weight=0.5)
    assert prior is None and total.item() == 2.0


def test_class_images_come_from_modules_cast_as_training_will_hold_them() -> None:
    from dreamcore.presets import MEMORY_PRESETS, preset_overrides
    from dreamcore.training.run import low_precision_modules

    lora = TrainConfig(**preset_overrides("lora-5GB"))
    assert low_precision_modules(lora, torch.float16) == {"unet": torch.float16, "text_encoder": torch.float16}
    eight = TrainConfig(**{**preset_overrides("GPU 8 GB"), **MEMORY_PRESETS["8GB"]})
    assert low_precision_modules(eight, torch.bfloat16) == {"unet": torch.bfloat16, "text_encoder": torch.bfloat16}
    # full fine-tuning keeps fp32 master weights: nothing trained may be rounded before training starts
    guide = TrainConfig(**preset_overrides("The guide's recipe"))
    assert low_precision_modules(guide, torch.float16) == {}
    assert low_precision_modules(guide.replace(train_text_encoder=False), torch.float16) == \
        {"text_encoder": torch.float16}
    assert low_precision_modules(lora, torch.float32) == {}  # no mixed precision (CPU): nothing is cast


def test_loss_falls_on_a_tiny_model(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=40, learning_rate=2e-3,
                         center_crop=True)
    result = train(config)
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert result.status == "completed" and len(result.losses) == 40
    assert last < 0.8 * first, (first, last)


def text_encoder_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "text_encoder" / "model.safetensors"))


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_text_encoder_frozen_or_trained(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path,
                                        train_text_encoder: bool) -> None:
    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=3,
                         train_text_encoder=train_text_encoder)
    result = train(config)
    before = text_encoder_weights(tiny_model_dir)
    after = text_encoder_weights(Path(result.outputs["diffusers"]))
    changed = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
    assert bool(changed) == train_text_encoder


def test_prior_preservation_generates_class_images_once(tiny_model_dir: Path, photo_dir: Path,
                                                        tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=2,
                         with_prior_preservation=True, class_prompt="photo of a person", num_class_images=3,
                         sample_batch_size=2, class_infer_steps=2)
    events = []
    result = train(config, callbacks=[events.append])
    class_dir = tmp_path / "out" / "class_images" / "photo_of_a_person"
    made = sorted(class_dir.glob("*.png"))
    assert len(made) == 3
    assert any(e.kind == "progress" and e.prior_loss is not None for e in events)
    # progress: "0 of 3" once the models are ready, then after each batch of 2
    assert [(e.done, e.total) for e in events if e.kind == "class_images"] == [(0, 3), (2, 3), (3, 3)]
    stamps = {p: p.stat().st_mtime_ns for p in made}
    (class_dir / "broken.png").write_bytes(b"not a png")  # a damaged file is skipped, never counted
    train(config.replace(output_dir=str(tmp_path / "out"), num_class_images=4))
    after = sorted(p for p in class_dir.glob("class-*.png"))
    assert len(after) == 4 and all(p.stat().st_mtime_ns == stamps[p] for p in made)
    assert (class_dir / "broken.png").read_bytes() == b"not a png"
    assert result.status == "completed"


def unet_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))


def assert_stop_and_resume_match_a_straight_run(model: Path, photos: Path, tmp_path: Path, stop_on: int,
                                                **common) -> None:
    """A run stopped at the progress of step ``stop_on`` and resumed ends as one that never stopped: same
    losses, same UNet weights."""
    straight = train(tiny_config(model, photos, tmp_path / "straight", **common))
    stop = StopRequest()
    interrupted = tiny_config(model, photos, tmp_path / "resumed", **common)
    first = train(interrupted, callbacks=[lambda e: stop.set() if e.kind == "progress" and e.step == stop_on
                                          else None], stop=stop)
    # The loop reads a step's loss while the next step runs (late_read.py), so a stop set on a step's progress
    # ends the run after the next step, the one already in flight.
    assert first.status == "stopped" and first.step == stop_on + 1
    assert Path(first.outputs["single_file"]).is_file()  # a usable checkpoint at the stop
    resumed = train(interrupted.replace(resume_from_checkpoint="latest"))
    assert resumed.status == "completed" and resumed.step == common["max_train_steps"]
    assert first.losses + resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    a, b = unet_weights(Path(straight.outputs["diffusers"])), unet_weights(Path(resumed.outputs["diffusers"]))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_reaches_the_same_weights(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    assert_stop_and_resume_match_a_straight_run(
        tiny_model_dir, photo_dir, tmp_path, stop_on=3, max_train_steps=8, train_text_encoder=True,
        gradient_accumulation_steps=2, lr_scheduler="cosine", lr_warmup_steps=2, train_batch_size=2)


def test_resume_of_an_in_backward_run_reaches_the_same_weights(tiny_model_dir: Path, photo_dir: Path,
                                                               tmp_path: Path) -> None:
    """The tiers' optimizer (AdamW inside backward, 1-D weights grouped at step()) saves and restores all of it:
    the biases and norm scales match as well as the matrices."""
    assert_stop_and_resume_match_a_straight_run(
        tiny_model_dir, photo_dir, tmp_path, stop_on=2, max_train_steps=6, train_text_encoder=True,
        optimizer_in_backward=True, max_grad_norm=0.0, mixed_precision="no")


@pytest.mark.parametrize("saves", [{"validation_steps": 2}, {"save_interval": 2}])
def test_a_stop_right_after_a_save_does_not_save_or_sample_that_step_again(
        saves: dict, tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    """Ctrl+C during a save (state and samples, or a checkpoint) ends the run at that step: what the save wrote
    is the stop's state and checkpoint, not written or drawn a second time."""
    stop, events = StopRequest(), []

    def record(event) -> None:
        events.append(event)
        if event.kind == "progress" and event.step == 2:  # announced just before step 2's save
            stop.set()

    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", checkpointing_steps=2, **saves)
    result = train(config, callbacks=[record], stop=stop)
    assert result.status == "stopped" and result.step == 2
    assert [e.step for e in events if e.kind == "samples"] == [2]
    saved = [(e.what, e.step) for e in events if e.kind == "checkpoint"]
    assert saved.count(("state", 2)) == 1 and saved.count(("checkpoint", 2)) == 1
    assert Path(result.outputs["single_file"]).is_file() and Path(result.outputs["state"]).is_dir()
    assert Path(result.outputs["samples"]) == tmp_path / "out" / "samples" / "step-000002"
    export = [e.detail for e in events if e.kind == "stage" and e.name == "export"]
    assert export == ["stopped at step 2" + ("" if "save_interval" in saves else ": saving a checkpoint")]


def test_nan_loss_stops_with_a_cause(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", learning_rate=1.0, max_train_steps=30,
                         max_grad_norm=0.0)
    with pytest.raises(TrainingError, match="loss became"):
        train(config)
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_outputs_and_events(tiny_model_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, photo_dir, tmp_path / "out", max_train_steps=4, save_interval=2,
                         checkpointing_steps=2, model_name="me")
    events = []
    result = train(config, callbacks=[events.append])
    kinds = [e.kind for e in events]
    assert kinds[-1] == "finished" and kinds.count("progress") == 4
    assert [e.step for e in events if e.kind == "samples"] == [2, 4]
    single = Path(result.outputs["single_file"])
    assert single == tmp_path / "out" / "me.safetensors"
    keys = load_file(str(single)).keys()
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert (tmp_path / "out" / "checkpoints" / "me-step-000002.safetensors").is_file()
    saved = TrainConfig.load(tmp_path / "out" / "train_config.json")
    assert saved.max_train_steps == 4 and saved == config
    progress = [e for e in events if e.kind == "progress"]
    assert all(math.isfinite(e.loss) and e.step_seconds > 0 for e in progress)
    # no rate from the warm-up steps, then one of training steps alone
    assert [e.eta_seconds is None for e in progress] == [True, True, False, False]
    assert progress[2].steps_per_second > 0 and progress[3].eta_seconds == 0
    saving = [e.detail for e in events if e.kind == "stage" and e.name == "saving"]
    assert saving == ["step 2: state, samples, checkpoint"]  # named while training pauses for it


def test_augmented_photos_load_the_same_with_loader_workers(tiny_model_dir: Path, photo_dir: Path,
                                                            tmp_path: Path) -> None:
    """hflip turns caching off; decoding in worker threads must not change what is trained."""
    common = dict(max_train_steps=4, hflip=True, train_batch_size=2)
    plain = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "plain", **common))
    threaded = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "threads", dataloader_num_workers=2,
                                 **common))
    assert plain.losses == threaded.losses


def test_bad_files_in_the_photo_folder_are_skipped_and_named(tiny_model_dir: Path, photo_dir: Path,
                                                             tmp_path: Path) -> None:
    import shutil

    from dreamcore import ConfigError

    folder = tmp_path / "photos"
    shutil.copytree(photo_dir, folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "cut.png").write_bytes((photo_dir / "photo-00.png").read_bytes()[:200])
    events = []
    result = train(tiny_config(tiny_model_dir, folder, tmp_path / "out", max_train_steps=1), callbacks=[events.append])
    warnings = " ".join(e.message for e in events if e.kind == "log" and e.level == "warning")
    assert result.status == "completed"
    for name in ("empty.jpg", "notes.png", "cut.png"):
        assert name in warnings

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "empty.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="no usable photos"):
        train(tiny_config(tiny_model_dir, only_bad, tmp_path / "out2", max_train_steps=1))


def test_in_backward_adamw_with_clipping_trains_as_adamw_after_backward(tiny_model_dir: Path, photo_dir: Path,
                                                                         tmp_path: Path) -> None:
    """The fast tiers clip: with max_grad_norm the in-backward optimizer holds the gradients, the loop clips them,
    and the run ends with the weights plain AdamW with clipping reaches (fp32, so no rounding differs)."""
    common = dict(max_train_steps=5, train_text_encoder=True, mixed_precision="no", max_grad_norm=0.05,
                  learning_rate=1e-3, save_sample_prompt="", checkpointing_steps=0)
    plain = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "plain", **common))
    held = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "held", optimizer_in_backward=True, **common))
    unclipped = train(tiny_config(tiny_model_dir, photo_dir, tmp_path / "unclipped", optimizer_in_backward=True,
                                  **{**common, "max_grad_norm": 0.0}))

    def unet(result) -> dict[str, torch.Tensor]:
        return load_file(str(Path(result.outputs["diffusers"]) / "unet" / "diffusion_pytorch_model.safetensors"))

    expected, got, other = unet(plain), unet(held), unet(unclipped)
    assert all(torch.allclose(got[k], expected[k], rtol=1e-4, atol=1e-6) for k in expected)
    assert not all(torch.allclose(other[k], expected[k], rtol=1e-4, atol=1e-6) for k in expected)
