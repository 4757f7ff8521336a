"""Advice for a failed job: what the person should change, from the error and the job's settings."""

from __future__ import annotations

import signal

from dreamcore.config import TrainConfig
from dreamcore.memory_tiers import smaller_tiers

_GPU_OOM_MARKERS = ("cuda out of memory", "outofmemoryerror", "cuda error: out of memory", "hip out of memory",
                    "mps backend out of memory")


def is_gpu_out_of_memory(error_type: str, message: str) -> bool:
    text = f"{error_type} {message}".lower()
    return any(marker in text for marker in _GPU_OOM_MARKERS)


def advice_for_error(error_type: str, message: str, config: TrainConfig | None) -> str:
    """One paragraph saying what to change after the child raised ``error_type: message``."""
    if is_gpu_out_of_memory(error_type, message):
        return gpu_memory_advice(config)
    if error_type == "MemoryError":
        return ("The computer ran out of RAM. Close other programs, use fewer or smaller photos, or turn off "
                "cache_latents; then press Resume.")
    if error_type == "ConfigError":
        return "Fix the settings listed above, then submit the job again (Re-run)."
    if error_type == "OutputWriteError" or "no space left" in message.lower():
        return "Free disk space in the jobs folder (or choose another one), then press Resume."
    if error_type in ("FileNotFoundError", "PermissionError"):
        return "Check that the file named above exists and can be read, then Re-run the job."
    return ("See the log below for details. Resume continues from the last saved state; if the error repeats, "
            "report it with the log.")


def gpu_memory_advice(config: TrainConfig | None) -> str:
    """What to change when the GPU ran out of memory, cheapest saving first, skipping what is already on."""
    steps: list[str] = []
    if config is None or not config.gradient_checkpointing:
        steps.append("turn on gradient_checkpointing (about 2 GB less, about 40% slower)")
    if config is not None and config.optimizer_in_backward:
        if config.bf16_rounding == "kahan":  # the 16GB/24GB tiers' remainder: memory_preset 12GB drops it
            steps.append("set bf16_rounding to stochastic (2 bytes a weight less; memory_preset 12GB does)")
    elif config is None or not config.use_8bit_adam:  # the in-backward AdamW already keeps bf16 moments
        steps.append("turn on use_8bit_adam (several GB less for the optimizer)")
    if config is None or config.mixed_precision == "no":
        steps.append("set mixed_precision to fp16 (or bf16 on RTX 30xx and newer)")
    if config is None or config.train_batch_size > 1:
        steps.append("set train_batch_size to 1")
    if config is not None and config.train_text_encoder:
        steps.append("turn off train_text_encoder (the text encoder needs much memory to train)")
    if config is None or config.resolution > 512:
        steps.append("lower resolution to 512")
    text = "The GPU ran out of memory. "
    if steps:
        text += "Try, in this order: " + "; ".join(steps) + ". "
    else:
        text += "Every memory saving setting is already on; this GPU is too small for this model. "
    preset = _smaller_tier_hint(config)
    if preset:
        text += preset + " "
    return text + "Also close other programs that use the GPU (a WebUI with a model loaded holds several GB)."


def advice_for_exit(returncode: int | None) -> str:
    """Advice when the child ended without reporting an error itself (killed, or crashed in native code)."""
    if returncode is not None and returncode < 0 and -returncode == getattr(signal, "SIGKILL", 9):
        return ("The training process was killed (SIGKILL): usually the system ran out of RAM, or someone ended "
                "it. Close other programs or use fewer photos, then press Resume to continue from the last "
                "saved state.")
    return ("The training process ended unexpectedly; the log below shows its last lines. Resume continues "
            "from the last saved state.")


def describe_exit(returncode: int | None) -> str:
    """A person-readable 'how did the process end' phrase."""
    if returncode is None:
        return "the training process is gone (it ended while dreamcore was not running)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the training process was killed by {name}"
    return f"the training process exited with code {returncode} before finishing"


def _smaller_tier_hint(config: TrainConfig | None) -> str:
    """The memory tiers that need less than the run's, with what each needs."""
    tiers = smaller_tiers(config.memory_preset if config is not None else "")
    if not tiers:
        return ""
    return ("Or set memory_preset to a smaller tier (the tab's GPU presets): "
            + "; ".join(f"{tier.name} (about {tier.needs_gib:.0f} GiB free)" for tier in tiers) + ".")
