"""DreamBooth-LoRA through the fast step and the recorded (CUDA-graph) step, for SD1 and SDXL.

An eager LoRA step launches thousands of small kernels (the base model's plus each adapter's), so on a fast GPU
it waits on Python as the full model's eager step does; the tiers' answer, one recorded step replayed, applies
to LoRA when it computes what the plain LoRA step computes. CPU: the fast step gives the plain LoRA losses. GPU
(opt-in, --run-gpu): the recorded LoRA step, with gradient checkpointing, gives the eager losses and moves the
adapters the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamcore.tiny import save_tiny_model
from dreamcore.training import train

from tiny_runs import tiny_config


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / request.param, family=request.param,
                           fmt="diffusers", seed=3)


def lora_run(base: Path, photos: Path, out: Path, callbacks=(), **overrides):
    values = dict(use_lora=True, train_text_encoder=True, lora_rank=4, lora_alpha=4.0, learning_rate=1e-3,
                  with_prior_preservation=True, class_prompt="photo of a person", num_class_images=2,
                  class_infer_steps=2, save_half=False, memory_preset="none")
    values.update(overrides)
    return train(tiny_config(base, photos, out, **values), callbacks=list(callbacks))


def test_the_fast_step_trains_lora_to_the_plain_steps_losses(base: Path, photo_dir: Path, tmp_path: Path) -> None:
    plain = lora_run(base, photo_dir, tmp_path / "plain", max_train_steps=4)
    fast = lora_run(base, photo_dir, tmp_path / "fast", max_train_steps=4, fast_step=True)
    assert plain.status == fast.status == "completed"
    assert len(plain.losses) == 4 and fast.losses == plain.losses  # same draws, same maths, same order
    a, b = load_file(plain.outputs["lora"]), load_file(fast.outputs["lora"])
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.gpu
def test_the_recorded_lora_step_gives_the_eager_losses_and_adapters_on_gpu(base: Path, photo_dir: Path,
                                                                          tmp_path: Path) -> None:
    """The settings a recorded LoRA step needs (config.py, cuda_graph): bf16, fused AdamW, no dropout."""
    assert torch.cuda.is_available()
    from accelerate.state import AcceleratorState

    common = dict(max_train_steps=30, mixed_precision="bf16", use_8bit_adam=False, gradient_checkpointing=True,
                  fast_step=True, lora_dropout=0.0, lr_scheduler="constant_with_warmup", lr_warmup_steps=5)
    eager = lora_run(base, photo_dir, tmp_path / "eager", **common)
    AcceleratorState._reset_state(True)
    logs: list[str] = []
    graph = lora_run(base, photo_dir, tmp_path / "graph", cuda_graph=True, **common,
                     callbacks=[lambda e: logs.append(e.message) if e.kind == "log" else None])
    assert any("recorded the training step after 3 eager steps" in m for m in logs), logs
    eager_losses, graph_losses = torch.tensor(eager.losses), torch.tensor(graph.losses)
    assert len(graph_losses) == 30 and torch.isfinite(graph_losses).all()
    assert torch.allclose(graph_losses, eager_losses, rtol=2e-2, atol=2e-3), (graph_losses - eager_losses).abs().max()
    a, b = load_file(eager.outputs["lora"]), load_file(graph.outputs["lora"])
    assert a.keys() == b.keys()
    # lora_up starts at zero: after training it holds what the replayed AdamW steps wrote
    ups = [key for key in a if "lora_up" in key]
    moved_eager = torch.cat([a[key].float().flatten() for key in ups])
    moved_graph = torch.cat([b[key].float().flatten() for key in ups])
    assert moved_graph.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(moved_eager, moved_graph, dim=0) > 0.95
