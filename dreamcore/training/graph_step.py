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
  foreach kernels, gradient checkpointing without host-side RNG bookkeeping, one process (the gradient
  all-reduce of several processes is left eager), no gradient accumulation.
- Lazily created state exists before recording: the first ``EAGER_STEPS`` steps run eagerly on a side stream
  (cuBLAS workspaces, the optimizer's moments), as PyTorch's CUDA-graph notes prescribe.
- Gradients are allocated by the recorded backward and never set to None afterwards (the optimizer step
  inside the graph reads them at the recorded addresses); backward writes them afresh each replay.
- Autocast does not cache its weight casts (a cached cast made outside the recording would be read stale).

Where the graph cannot run (no CUDA, several processes) the step runs eagerly, with one warning: the same
maths, only slower.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from dreamcore.training.fast_step import FastTrainer
from dreamcore.training.loop import StepBatch

EAGER_STEPS = 3  # eager steps before recording (PyTorch's examples warm up with 3)


class GraphTrainer(FastTrainer):
    """A FastTrainer that replays its whole step (forward, backward, clip, AdamW) from one CUDA graph."""

    def accelerator_kwargs_handlers(self) -> list:
        from accelerate.utils import AutocastKwargs

        return [AutocastKwargs(cache_enabled=False)]

    def enable_gradient_checkpointing(self) -> None:
        # A recorded recomputation must not save and restore the RNG state on the host. SD's forward draws no
        # random numbers (dropout 0; config.py refuses LoRA dropout here), so there is no state to preserve.
        import functools

        from torch.utils.checkpoint import checkpoint

        kwargs = {"use_reentrant": False, "preserve_rng_state": False}
        self.models.unet.enable_gradient_checkpointing(functools.partial(checkpoint, **kwargs))
        if self.config.train_text_encoder:
            self.models.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def prepare_models(self) -> None:
        super().prepare_models()
        problem = self.graph_problem()
        if problem is not None:
            self.emit.log(f"cuda_graph: {problem}; running the step eagerly (same results, slower).", "warning")
        self.graph_enabled = problem is None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps_done = 0
        self.side_stream = torch.cuda.Stream() if self.graph_enabled else None

    def graph_problem(self) -> str | None:
        """Why this run cannot replay a recorded step, or None when it can."""
        if self.device.type != "cuda":
            return f"CUDA graphs need a CUDA GPU; training runs on {self.device.type}"
        if self.accelerator.num_processes > 1:
            return f"{self.accelerator.num_processes} processes average gradients between steps"
        optimizer = self.raw_optimizer()
        if not optimizer.defaults.get("capturable", False):
            return "the optimizer cannot be recorded (it is not a capturable AdamW)"
        if hasattr(optimizer, "rounding_generators") and \
                not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            return ("this torch cannot record the stochastic rounding's own generator "
                    "(torch.cuda.CUDAGraph.register_generator_state is missing)")
        return None

    def raw_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer

    # --- the step ------------------------------------------------------------------------------------
    def micro_step(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.graph_enabled:
            return super().micro_step(index)
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
        return self.recorded_loss.detach().clone(), prior

    def optimizer_step(self) -> None:
        if not self.graph_enabled:
            super().optimizer_step()
        elif self.graph is None:  # an eager warm-up step
            with self._on_side_stream():
                super().optimizer_step()
            self.eager_steps_done += 1
        else:  # clipping and AdamW ran inside the replayed graph; only the schedule moves, on the host
            self.lr_scheduler.step()

    def save_checkpoint(self, step: int, final: bool) -> dict[str, str]:
        if final and self.graph is not None:
            # No step follows: give back the graph's memory pool and its gradients before the export samples.
            self.graph.reset()
            self.graph = None
            self.recorded_inputs = self.recorded_loss = self.recorded_prior_loss = None
            self.raw_optimizer().zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        return super().save_checkpoint(step, final)

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
        for name in ("latent_distribution", "sample_noise", "noise", "timesteps", "encoder_input"):
            target, source = getattr(recorded, name), getattr(batch, name)
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
