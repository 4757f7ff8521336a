"""The fast step computes what the plain step computes; the 8 GB preset trains UNet and text encoder.

CPU: the FastTrainer's step pieces (token cache, copies) give the plain path's losses exactly, and the 8 GB
preset's pure-bf16 in-backward path trains on a tiny model. GPU (opt-in, --run-gpu): on the same seed the
fast path's first 50 losses match the plain path's within bf16 tolerance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore import TrainConfig
from dreamcore.config import ConfigError
from dreamcore.training import train


def tiny_recipe(model: Path, photos: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(photos),
                  instance_prompt="photo of ukj person", class_prompt="photo of a person",
                  with_prior_preservation=True, num_class_images=2, class_infer_steps=1, sample_batch_size=2,
                  output_dir=str(out), resolution=64, max_train_steps=4, learning_rate=1e-3, lr_warmup_steps=0,
                  checkpointing_steps=0, n_save_sample=1, save_infer_steps=1, seed=7, center_crop=True,
                  train_text_encoder=True, memory_preset="none")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_inputs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from dreamcore.commands.demo import make_demo_photos

    photos = tmp_path_factory.mktemp("fast") / "photos"
    photos.mkdir()
    make_demo_photos(photos, count=3, size=64)
    return tiny_model_dir, photos


def test_fast_step_gives_the_plain_losses_on_cpu(tiny_inputs, tmp_path: Path) -> None:
    model, photos = tiny_inputs
    plain = train(tiny_recipe(model, photos, tmp_path / "plain"))
    fast_events = []
    fast = train(tiny_recipe(model, photos, tmp_path / "fast", fast_step=True), callbacks=[fast_events.append])
    assert len(plain.losses) == 4 and fast.losses == plain.losses  # same draws, same maths, same order
    assert any(e.kind == "stage" and e.name == "train" for e in fast_events)


def test_8gb_preset_trains_unet_and_text_encoder_in_bf16(tiny_inputs, tmp_path: Path) -> None:
    model, photos = tiny_inputs
    logs = []
    result = train(tiny_recipe(model, photos, tmp_path / "out", memory_preset="8GB", max_train_steps=3),
                   callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert result.status == "completed" and all(torch.isfinite(torch.tensor(result.losses)))
    assert any("memory preset 8GB (as asked)" in m for m in logs)
    saved = Path(result.outputs["diffusers"])
    for component in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        before, after = load_file(str(model / component)), load_file(str(saved / component))
        changed = [k for k in before if not torch.equal(before[k].float(), after[k].float())]
        # beyond the fp32 -> bf16 cast itself: compare against the base weights rounded to bf16
        moved = [k for k in before if not torch.equal(before[k].to(torch.bfloat16).float(), after[k].float())]
        assert changed and moved, component
    assert_stock_diffusers_generates(saved)


def assert_stock_diffusers_generates(folder: Path, device: str = "cpu") -> None:
    """The diffusers folder holds one dtype and stock ``from_pretrained`` at its defaults makes an image."""
    from diffusers import StableDiffusionPipeline

    files = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
             "vae/diffusion_pytorch_model.safetensors")
    dtypes = {tensor.dtype for name in files for tensor in load_file(str(folder / name)).values()
              if tensor.is_floating_point()}
    assert dtypes == {torch.float32}
    pipeline = StableDiffusionPipeline.from_pretrained(str(folder)).to(device)
    image = pipeline("photo of ukj person", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())


@pytest.mark.gpu
@pytest.mark.parametrize("tier", ["16GB", "12GB", "8GB"])
def test_every_tiers_diffusers_folder_loads_and_generates_with_stock_diffusers(tiny_inputs, tmp_path: Path,
                                                                                tier: str) -> None:
    model, photos = tiny_inputs
    result = train(tiny_recipe(model, photos, tmp_path / tier, memory_preset=tier, max_train_steps=3))
    assert_stock_diffusers_generates(Path(result.outputs["diffusers"]), "cuda")


@pytest.mark.gpu
def test_fast_path_matches_plain_path_over_50_steps_on_gpu(tiny_inputs, tmp_path: Path) -> None:
    assert torch.cuda.is_available()
    model, photos = tiny_inputs
    common = dict(max_train_steps=50, mixed_precision="bf16", allow_tf32=True, use_8bit_adam=False,
                  learning_rate=1e-6)
    plain = train(tiny_recipe(model, photos, tmp_path / "plain", **common))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    fast = train(tiny_recipe(model, photos, tmp_path / "fast", fast_step=True, **common))
    plain_losses, fast_losses = torch.tensor(plain.losses), torch.tensor(fast.losses)
    assert len(fast_losses) == 50 and torch.isfinite(fast_losses).all()
    # bf16 keeps ~3 significant digits; the noise and timesteps are identical, so each step's loss agrees
    assert torch.allclose(fast_losses, plain_losses, rtol=2e-2, atol=2e-3), (fast_losses - plain_losses).abs().max()


@pytest.mark.gpu
def test_cuda_graph_step_matches_plain_path_over_50_steps_on_gpu(tiny_inputs, tmp_path: Path) -> None:
    """The recorded step replays this step's inputs and learning rate (a warm-up schedule moves it)."""
    assert torch.cuda.is_available()
    from accelerate.state import AcceleratorState

    model, photos = tiny_inputs
    common = dict(max_train_steps=50, mixed_precision="bf16", allow_tf32=True, use_8bit_adam=False,
                  learning_rate=1e-4, lr_scheduler="constant_with_warmup", lr_warmup_steps=10,
                  save_interval=25)  # a checkpoint with samples between replays, as the guide saves every 500
    plain = train(tiny_recipe(model, photos, tmp_path / "plain", **common))
    AcceleratorState._reset_state(True)
    logs = []
    graph = train(tiny_recipe(model, photos, tmp_path / "graph", fast_step=True, cuda_graph=True, **common),
                  callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert any("recorded the training step after 3 eager steps" in m for m in logs), logs
    plain_losses, graph_losses = torch.tensor(plain.losses), torch.tensor(graph.losses)
    assert len(graph_losses) == 50 and torch.isfinite(graph_losses).all()
    assert torch.allclose(graph_losses, plain_losses, rtol=2e-2, atol=2e-3), (graph_losses - plain_losses).abs().max()
    assert (tmp_path / "graph" / "checkpoints").is_dir() and list((tmp_path / "graph" / "samples").iterdir())
    component = "unet/diffusion_pytorch_model.safetensors"
    base = load_file(str(model / component))
    a = load_file(str(Path(plain.outputs["diffusers"]) / component))
    b = load_file(str(Path(graph.outputs["diffusers"]) / component))
    # both moved the weights the same way: the replayed AdamW steps really updated them
    moved_plain = torch.cat([(a[k].float() - base[k].float()).flatten() for k in base])
    moved_graph = torch.cat([(b[k].float() - base[k].float()).flatten() for k in base])
    assert moved_graph.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(moved_plain, moved_graph, dim=0) > 0.95


def test_cuda_graph_without_a_gpu_runs_the_step_eagerly_and_says_so(tiny_inputs, tmp_path: Path) -> None:
    model, photos = tiny_inputs
    plain = train(tiny_recipe(model, photos, tmp_path / "plain", max_train_steps=3))
    logs = []
    graph = train(tiny_recipe(model, photos, tmp_path / "graph", fast_step=True, cuda_graph=True,
                              max_train_steps=3),
                  callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert graph.losses == plain.losses
    assert any("cuda_graph: CUDA graphs need a CUDA GPU" in m and "eagerly" in m for m in logs), logs


@pytest.mark.slow
def test_8gb_tier_with_cuda_graph_on_a_cpu_checkpoints_and_computes_the_same(tiny_inputs, tmp_path: Path) -> None:
    """The recorded 8GB step's set-up (capturable-ready checkpointing without RNG bookkeeping) runs eagerly here."""
    from dreamcore.presets import MEMORY_PRESETS

    model, photos = tiny_inputs
    common = dict(MEMORY_PRESETS["8GB"], memory_preset="none", max_train_steps=3)  # the tier, as fields
    plain = train(tiny_recipe(model, photos, tmp_path / "plain", **common))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    logs = []
    graph = train(tiny_recipe(model, photos, tmp_path / "graph", **{**common, "cuda_graph": True}),
                  callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert graph.losses == plain.losses
    assert any("cuda_graph: CUDA graphs need a CUDA GPU" in m for m in logs), logs
    saved = json.loads((tmp_path / "graph" / "train_config.json").read_text())
    assert not saved["cuda_graph"] and saved["optimizer_in_backward"]  # the record says what ran: eager


def test_bf16_weights_train_without_autocast_as_they_do_with_it(tiny_inputs, tmp_path: Path) -> None:
    """bf16_autocast off: the step runs every op in bf16 (no casts around the norms); samples still decode."""
    from accelerate.state import AcceleratorState

    from dreamcore.presets import MEMORY_PRESETS

    model, photos = tiny_inputs
    common = dict(MEMORY_PRESETS["12GB"], memory_preset="none", cuda_graph=False, max_train_steps=4,
                  learning_rate=1e-4)
    with_autocast = train(tiny_recipe(model, photos, tmp_path / "autocast", **{**common, "bf16_autocast": True}))
    AcceleratorState._reset_state(True)
    without = train(tiny_recipe(model, photos, tmp_path / "bf16", **common))  # the tier's setting: no autocast
    assert torch.isfinite(torch.tensor(without.losses)).all()
    # the same data, noise and timesteps; only where the norms compute differs (bf16 keeps ~3 digits)
    assert torch.allclose(torch.tensor(without.losses), torch.tensor(with_autocast.losses), rtol=5e-2, atol=5e-3)
    assert list((tmp_path / "bf16" / "samples").rglob("*.png"))  # sampling ran under autocast: the fp32 VAE
    with pytest.raises(ConfigError, match="bf16_autocast: off needs pure_bf16"):
        TrainConfig(bf16_autocast=False).validate()


@pytest.mark.slow
def test_a_compiled_unet_trains_as_the_plain_one(tiny_inputs, tmp_path: Path, monkeypatch) -> None:
    """compile_unet: the step calls the torch.compile'd UNet (on the CPU with the aot_eager backend: the same
    captured forward and backward graphs, run without generated kernels); the in-backward AdamW still updates
    every weight, the losses match, and samples and exports come from the plain UNet."""
    import torch._dynamo
    from accelerate.state import AcceleratorState

    from dreamcore.presets import MEMORY_PRESETS
    from dreamcore.training import compiling

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    model, photos = tiny_inputs
    common = dict(MEMORY_PRESETS["12GB"], memory_preset="none", max_train_steps=3, learning_rate=1e-4)
    plain = train(tiny_recipe(model, photos, tmp_path / "plain", **common))
    AcceleratorState._reset_state(True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    logs = []
    compiled = train(tiny_recipe(model, photos, tmp_path / "compiled", **common, compile_unet=True,
                                 compile_text_encoder=True),
                     callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # UNet and text encoder ran through dynamo
    assert any(m.startswith("compile: the UNet and the text encoder will be compiled") and "torchinductor" in m
               for m in logs), logs
    assert torch.allclose(torch.tensor(compiled.losses), torch.tensor(plain.losses), rtol=1e-2, atol=1e-3)
    assert Path(compiled.outputs["single_file"]).is_file() and list((tmp_path / "compiled" / "samples").rglob("*.png"))
    torch._dynamo.reset()


def test_compiling_the_text_encoder_needs_it_trained() -> None:
    problems = TrainConfig(compile_text_encoder=True, train_text_encoder=False).problems()
    assert any(p.startswith("compile_text_encoder: needs train_text_encoder") for p in problems), problems
    assert not [p for p in TrainConfig(compile_text_encoder=True, train_text_encoder=True).problems()
                if p.startswith("compile_text_encoder")]


def test_compiled_kernels_are_kept_in_dreamcores_cache_unless_the_user_chose_a_folder(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    from dreamcore.training.compiling import keep_compiled_kernels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # unset (monkeypatch restores the real value after)
    assert keep_compiled_kernels() == str(tmp_path / "cache" / "dreamcore" / "torchinductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "dreamcore" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert keep_compiled_kernels() == str(tmp_path / "mine")


@pytest.mark.gpu
def test_cuda_graph_records_the_8gb_in_backward_step_on_gpu(tiny_inputs, tmp_path: Path) -> None:
    """The 8GB tier's step (bf16 weights, AdamW inside backward, checkpointing) recorded: same losses."""
    assert torch.cuda.is_available()
    from accelerate.state import AcceleratorState

    from dreamcore.presets import MEMORY_PRESETS

    model, photos = tiny_inputs
    common = dict(MEMORY_PRESETS["8GB"], memory_preset="none", max_train_steps=30, learning_rate=1e-4)
    eager = train(tiny_recipe(model, photos, tmp_path / "eager", **common))
    AcceleratorState._reset_state(True)
    logs = []
    graph = train(tiny_recipe(model, photos, tmp_path / "graph", **{**common, "cuda_graph": True}),
                  callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert any("recorded the training step" in m for m in logs), logs
    eager_losses, graph_losses = torch.tensor(eager.losses), torch.tensor(graph.losses)
    assert torch.isfinite(graph_losses).all()
    # stochastic rounding draws differ between the two (the recorded step draws in one go), so the weights
    # drift apart by rounding noise: compare the losses, which share the data, noise and timesteps
    assert torch.allclose(graph_losses, eager_losses, rtol=5e-2, atol=5e-3), (graph_losses - eager_losses).abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("tier, overrides", [("24GB", {}), ("12GB", {}), ("8GB", {}),
                                             ("16GB", {"bf16_autocast": True}), ("16GB", {"compile_unet": True}),
                                             ("16GB", {"keep_channels_last": False}),
                                             ("12GB", {"compile_unet": True, "compile_text_encoder": True})])
def test_each_memory_tier_matches_the_plain_path_over_50_steps_on_gpu(tier: str, overrides: dict, tiny_inputs,
                                                                     tmp_path: Path) -> None:
    """Issue 7's check of the fast path, for what each tier runs (bf16 weights, fused in-backward AdamW with
    Kahan or stochastic rounding, checkpointing, the recorded step, no autocast) against fp32 AdamW at the
    guide's lr; and the step under autocast (the tiers' setting before run J), with the UNet compiled (and the
    text encoder), and without channels-last kept through diffusers' .contiguous() calls (the tiers before run T)."""
    assert torch.cuda.is_available()
    from accelerate.state import AcceleratorState

    from dreamcore.presets import MEMORY_PRESETS

    model, photos = tiny_inputs
    common = dict(max_train_steps=50, learning_rate=1e-6)
    plain = train(tiny_recipe(model, photos, tmp_path / "plain", mixed_precision="bf16", allow_tf32=True,
                              use_8bit_adam=False, **common))
    AcceleratorState._reset_state(True)
    logs = []
    fast = train(tiny_recipe(model, photos, tmp_path / tier, **{**MEMORY_PRESETS[tier], **overrides, **common}),
                 callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert any("recorded the training step" in m for m in logs), logs
    assert not any("fused kernel" in m for m in logs), logs  # the Triton kernel ran, not the PyTorch form
    plain_losses, fast_losses = torch.tensor(plain.losses), torch.tensor(fast.losses)
    assert len(fast_losses) == 50 and torch.isfinite(fast_losses).all()
    assert torch.allclose(fast_losses, plain_losses, rtol=2e-2, atol=2e-3), (fast_losses - plain_losses).abs().max()


def test_cuda_graph_problem_names_what_this_machine_lacks(monkeypatch) -> None:
    import accelerate.utils

    from dreamcore.training.graph_step import cuda_graph_problem

    config = TrainConfig(cuda_graph=True, fast_step=True, use_8bit_adam=False, mixed_precision="bf16")
    assert "need a CUDA GPU" in cuda_graph_problem(config, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine, from here on
    assert "2 processes average gradients through DistributedDataParallel" in cuda_graph_problem(config, 2)
    in_backward = config.replace(optimizer_in_backward=True, pure_bf16=True, max_grad_norm=0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda.CUDAGraph, "register_generator_state", lambda *args: None, raising=False)
    assert cuda_graph_problem(in_backward, 2) is None  # its all-reduces are recorded with the step
    assert "span several machines (2 on this one)" in cuda_graph_problem(in_backward, 4)
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu121")  # A1111 1.10's torch
    assert "torch 2.1.2+cu121 is older than 2.4" in cuda_graph_problem(config, 1)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.delattr(accelerate.utils, "AutocastKwargs")  # accelerate 0.21, as A1111 pins it
    assert "cannot turn autocast's cast cache off" in cuda_graph_problem(config, 1)


def test_recording_the_in_backward_step_needs_a_generator_api_only_without_the_fused_kernel(monkeypatch) -> None:
    pytest.importorskip("triton")
    from dreamcore.training.graph_step import cuda_graph_problem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "__version__", "2.4.1")  # records fused AdamW, has no register_generator_state
    monkeypatch.delattr(torch.cuda.CUDAGraph, "register_generator_state", raising=False)
    config = TrainConfig(cuda_graph=True, fast_step=True, use_8bit_adam=False, mixed_precision="bf16",
                         optimizer_in_backward=True, pure_bf16=True, max_grad_norm=0.0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert cuda_graph_problem(config, 1) is None  # the fused kernel keys its noise by the step: nothing to register
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # no fused kernel here
    assert "register_generator_state is missing" in cuda_graph_problem(config, 1)


def test_recordable_checkpointing_gives_the_gradients_of_plain_checkpointing() -> None:
    from dreamcore.tiny import build_components, tiny_component_configs
    from dreamcore.training.graph_step import enable_recordable_checkpointing

    def gradients(recordable: bool) -> list[torch.Tensor]:
        models = build_components(tiny_component_configs("sd1"), "sd1", seed=0)
        models.unet.train(), models.text_encoder.train()
        if recordable:
            enable_recordable_checkpointing(models.unet, models.text_encoder)
        else:
            models.unet.enable_gradient_checkpointing()
            models.text_encoder.gradient_checkpointing_enable()
        generator = torch.Generator().manual_seed(1)
        latents = torch.randn(2, 4, 8, 8, generator=generator)
        tokens = torch.randint(0, 1000, (2, 77), generator=generator)
        states = models.text_encoder(tokens)[0]
        models.unet(latents, torch.tensor([10, 500]), states).sample.square().mean().backward()
        parameters = [*models.unet.parameters(), *models.text_encoder.parameters()]
        assert models.unet.is_gradient_checkpointing
        return [p.grad.clone() for p in parameters if p.grad is not None]

    plain, recordable = gradients(False), gradients(True)
    assert len(plain) == len(recordable) > 100
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, recordable))


def test_cuda_graph_refuses_settings_a_recorded_step_cannot_replay() -> None:
    from dreamcore.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        TrainConfig(cuda_graph=True, fast_step=False, use_8bit_adam=True, mixed_precision="fp16",
                    gradient_accumulation_steps=2).validate()
    text = str(raised.value)
    for field_name in ("fast_step", "use_8bit_adam", "mixed_precision", "gradient_accumulation_steps"):
        assert f"cuda_graph: {field_name} - " in text, text
    with pytest.raises(ConfigError, match="cuda_graph: lora_dropout - "):
        TrainConfig(cuda_graph=True, fast_step=True, use_8bit_adam=False, mixed_precision="bf16", use_lora=True,
                    lora_dropout=0.1, gradient_checkpointing=True).validate()
    in_backward = TrainConfig(cuda_graph=True, fast_step=True, use_8bit_adam=False, mixed_precision="bf16",
                              optimizer_in_backward=True, pure_bf16=True, max_grad_norm=0.0)
    assert not [m for m in in_backward.problems() if "cuda_graph" in m]  # the 8GB tier's step can be recorded


def test_the_24gb_tier_records_the_step_unless_gradients_accumulate() -> None:
    from dreamcore.presets import apply_memory_preset

    tier, _ = apply_memory_preset(TrainConfig(memory_preset="24GB"), None)
    assert tier.cuda_graph and tier.fast_step and not tier.use_8bit_adam
    accumulating, message = apply_memory_preset(TrainConfig(memory_preset="24GB", gradient_accumulation_steps=4),
                                                None)
    assert not accumulating.cuda_graph and accumulating.fast_step
    assert not [m for m in accumulating.problems() if "cuda_graph" in m]  # the tier never makes a refused config


def test_train_picks_the_preset_from_free_memory_and_says_which(tiny_inputs, tmp_path: Path, monkeypatch) -> None:
    import json

    import dreamcore.presets

    model, photos = tiny_inputs
    monkeypatch.setattr(dreamcore.presets, "cuda_free_bytes", lambda: int(9.0 * 2**30))  # as a 10 GB card
    logs = []
    result = train(tiny_recipe(model, photos, tmp_path / "out", memory_preset="auto", max_train_steps=2),
                   callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert result.status == "completed"
    assert any("memory preset 8GB (picked from 9.0 GiB free GPU memory)" in m for m in logs)
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["memory_preset"] == "8GB" and saved["pure_bf16"] and saved["mixed_precision"] == "bf16"


@pytest.mark.slow
def test_8gb_preset_resumes_to_the_same_weights(tiny_inputs, tmp_path: Path) -> None:
    from accelerate.state import AcceleratorState

    from dreamcore.events import StopRequest

    model, photos = tiny_inputs
    common = dict(memory_preset="8GB", max_train_steps=4)
    straight = train(tiny_recipe(model, photos, tmp_path / "straight", **common))
    AcceleratorState._reset_state(True)
    stop = StopRequest()
    interrupted = tiny_recipe(model, photos, tmp_path / "resumed", **common)
    first = train(interrupted, callbacks=[lambda e: stop.set() if e.kind == "progress" and e.step == 2 else None],
                  stop=stop)
    assert first.status == "stopped" and first.step == 3  # after the step in flight (late_read.py)
    AcceleratorState._reset_state(True)
    resumed = train(interrupted.replace(resume_from_checkpoint="latest"))
    assert resumed.step == 4 and first.losses + resumed.losses == straight.losses
    component = "unet/diffusion_pytorch_model.safetensors"
    a = load_file(str(Path(straight.outputs["diffusers"]) / component))
    b = load_file(str(Path(resumed.outputs["diffusers"]) / component))
    assert all(torch.equal(a[key], b[key]) for key in a)  # stochastic rounding resumed exactly too


@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_step_lays_the_unet_out_as_channels_last_says(channels_last: bool) -> None:
    from dreamcore.tiny import build_components, tiny_component_configs
    from dreamcore.training.memory_layout import apply_memory_layout

    models = build_components(tiny_component_configs("sd1"), "sd1")
    config = TrainConfig(fast_step=True, channels_last=channels_last, memory_preset="none")
    apply_memory_layout(models, config, torch.device("cuda"))  # the layout step only; nothing moves to a GPU
    conv = models.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert conv.is_contiguous() != channels_last
