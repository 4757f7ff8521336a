"""The whole training step as one CUDA graph: recorded once, then replayed with one launch a step.

An eager step of SD1.5 launches thousands of small kernels from Python (forward, backward, clipping, AdamW);
on a fast GPU the host cannot launch them as fast as the GPU runs them, so the GPU idles most of the step
(BENCHMARKS.md: batch 4 takes as long as batch 1). A CUDA graph records the kernels of one step with their
memory addresses; replaying it costs one launch, and the GPU runs the step back to back.

What must hold for the replay to compute the eager step (each is arranged here or checked in config.py):
- Inputs live in the same tensors every step: each step's batch (drawn on the host from the run's generator,
  in the eager order, see ``Trainer.draw_batch``) is copied into the tensors the graph was recorded with.
- Nothing inside the step talks to the host: bf16 autocast (fp16's GradScaler checks for inf on the host),
  fused AdamW with ``capturable=True`` (its step count on the GPU) or the in-backward AdamW in its capturable
  form, a learning rate held in a GPU tensor that the schedule overwrites in place (optim.py), clipping with
  foreach kernels, gradient checkpointing without host-side RNG bookkeeping, no gradient accumulation. With
  several processes only the in-backward AdamW's step is recorded: its per-weight all-reduces are NCCL calls
  the graph captures (gradient_average.py); DistributedDataParallel's bucket logic runs on the host.
- Lazily created state exists before recording: the first ``EAGER_STEPS`` steps run eagerly on a side stream
  (cuBLAS workspaces, the optimizer's moments), as PyTorch's CUDA-graph notes prescribe.
- Gradients are allocated by the recorded backward and never set to None afterwards (the optimizer step
  inside the graph reads them at the recorded addresses); backward writes them afresh each replay.
- Autocast does not cache its weight casts (a cached cast made outside the recording would be read stale).

Where the graph cannot run (no CUDA, several processes holding gradients or spanning machines, a torch or
accelerate too old: ``cuda_graph_problem``)
``train()`` turns ``cuda_graph`` off before anything is built and says why: the same maths, only slower.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from dreamcore.config import TrainConfig
from dreamcore.training.fast_step import FastTrainer
from dreamcore.training.trainer import StepBatch

EAGER_STEPS = 3  # eager steps before recording (PyTorch's examples warm up with 3)
OLDEST_TORCH = (2, 4)  # fused AdamW recorded with a tensor lr that LR schedulers refill in place


def cuda_graph_problem(config: TrainConfig, num_processes: int) -> str | None:
    """Why this environment cannot record ``config``'s step, or None when it can. Checked before anything is
    built: where it says no, the run trains eagerly with ``cuda_graph`` off (train_config.json records that)."""
    if not torch.cuda.is_available():
        return "CUDA graphs need a CUDA GPU; training runs on the CPU"
    if num_processes > 1 and not config.optimizer_in_backward:
        return (f"{num_processes} processes average gradients through DistributedDataParallel, whose buckets the "
                "host manages (with optimizer_in_backward the step, all-reduces included, is recorded)")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    if num_processes > local:
        # NCCL collectives between machines may go through host memory (no GPUDirect RDMA), which a graph
        # cannot capture; only one machine's processes were measured (BENCHMARKS.md, run V).
        return (f"the {num_processes} processes span several machines ({local} on this one), and all-reduces "
                "between machines are not recorded")
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < OLDEST_TORCH:
        return (f"torch {torch.__version__} is older than {'.'.join(map(str, OLDEST_TORCH))}, whose AdamW can be "
                "recorded with a learning rate that changes")
    try:
        from accelerate.utils import AutocastKwargs  # noqa: F401
    except ImportError:
        import accelerate

        return f"accelerate {accelerate.__version__} cannot turn autocast's cast cache off (0.24 or newer can)"
    if config.optimizer_in_backward and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        from dreamcore.training.fused_adamw_kernel import fused_kernel_problem

        if fused_kernel_problem(torch.device("cuda")) is not None:  # the fused kernel's noise needs no generator
            return ("this torch cannot record the stochastic rounding's own generator "
                    "(torch.cuda.CUDAGraph.register_generator_state is missing)")
    return None


def enable_recordable_checkpointing(unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
    """Gradient checkpointing whose recomputation can be recorded: no host-side RNG-state bookkeeping. SD's
    forward draws no random numbers (dropout 0; config.py refuses LoRA dropout here): nothing to preserve."""
    import functools

    from torch.utils.checkpoint import checkpoint

    kwargs = {"use_reentrant": False, "preserve_rng_state": False}
    unet.enable_gradient_checkpointing(functools.partial(checkpoint, **kwargs))
    if text_encoder is not None:
        text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class GraphTrainer(FastTrainer):
    """A FastTrainer that replays its whole step (forward, backward, clip, AdamW) from one CUDA graph."""

    def accelerator_kwargs_handlers(self) -> list:
        from accelerate.utils import AutocastKwargs

        return [AutocastKwargs(cache_enabled=False)]

    def enable_gradient_checkpointing(self) -> None:
        enable_recordable_checkpointing(self.models.unet,
                                        self.models.text_encoder if self.config.text_encoder_trains else None)

    def prepare_models(self) -> None:
        super().prepare_models()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps_done = 0
        self.side_stream = torch.cuda.Stream()

    # --- the step ------------------------------------------------------------------------------------
    def micro_step(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.graph is None and self.eager_steps_done < EAGER_STEPS:
            with self._on_side_stream():
                return super().micro_step(index)
        batch = self.draw_batch(index)
        if self.graph is None:
            self._record(batch)
        else:
            self._copy_into_inputs(batch)
        self.graph.replay()
        prior = None if self.recorded_prior_loss is None else self.recorded_prior_loss.detach().clone()
        return self.global_losses(self.recorded_loss.detach().clone(), prior)

    def optimizer_step(self) -> None:
        if self.graph is None:  # an eager warm-up step
            with self._on_side_stream():
                super().optimizer_step()
            self.eager_steps_done += 1
        else:  # clipping and AdamW ran inside the replayed graph; only the schedule moves, on the host
            self.lr_scheduler.step()

    def release_step_memory(self) -> None:
        if self.graph is not None:
            # No step follows: give back the graph's memory pool (its gradients go with the optimizer's
            # state in the base class) before the export samples.
            self.graph.reset()
            self.graph = None
            self.recorded_inputs = self.recorded_loss = self.recorded_prior_loss = None
        super().release_step_memory()

    def _record(self, batch: StepBatch) -> None:
        """Record forward, backward, clipping and the AdamW step on ``batch``'s tensors (the graph's inputs)."""
        optimizer = self.raw_optimizer()
        for group in optimizer.param_groups:  # the recorded AdamW must read a GPU tensor the schedule refills
            rate = group["lr"]
            if not (isinstance(rate, torch.Tensor) and rate.device == self.device):
                group["lr"] = torch.tensor(float(rate), dtype=torch.float32, device=self.device)
        optimizer.zero_grad(set_to_none=True)  # the recorded backward allocates the gradients in its pool
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the eager steps' cached activations; the graph keeps its own pool
        parameters = [p for module in self.wrapped.values() for p in module.parameters() if p.requires_grad]
        self.recorded_inputs = batch
        self.graph = torch.cuda.CUDAGraph()
        for generator in getattr(optimizer, "rounding_generators", list)():
            # in-backward AdamW's rounding noise: each replay must draw fresh numbers, not repeat the recorded ones
            if not hasattr(self.graph, "register_generator_state"):
                raise RuntimeError("cuda_graph: a weight took the PyTorch form of the in-backward AdamW, whose "
                                   "rounding noise this torch cannot record; set cuda_graph false")
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            loss, prior_loss = self.forward_backward(batch)
            if self.config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm, foreach=True)
            optimizer.step()
        self.recorded_loss, self.recorded_prior_loss = loss, prior_loss
        self.emit.log(f"cuda_graph: recorded the training step after {self.eager_steps_done} eager steps; "
                      "replaying it from now on.")

    def _copy_into_inputs(self, batch: StepBatch) -> None:
        recorded = self.recorded_inputs
        if batch.with_prior != recorded.with_prior:
            raise RuntimeError("cuda_graph: a batch without class images after one with them; the recorded "
                               "step cannot change its shape")
        pairs = [(name, getattr(recorded, name), getattr(batch, name))
                 for name in ("latent_distribution", "sample_noise", "noise", "timesteps")]
        pairs += [(f"encoder_input[{i}]", target, source)
                  for i, (target, source) in enumerate(zip(recorded.encoder_input, batch.encoder_input))]
        for name, target, source in pairs:
            if target.shape != source.shape:
                raise RuntimeError(f"cuda_graph: {name} has shape {tuple(source.shape)} but the step was "
                                   f"recorded with {tuple(target.shape)}")
            target.copy_(source, non_blocking=True)

    @contextlib.contextmanager
    def _on_side_stream(self) -> Iterator[None]:
        """Run the block on the side stream, ordered after the main stream's work and before what follows."""
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream):
            yield
        torch.cuda.current_stream().wait_stream(self.side_stream)
