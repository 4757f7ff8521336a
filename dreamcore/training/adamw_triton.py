"""The Triton source of the fused in-backward AdamW update; see fused_adamw_kernel.py, which launches it.

Its own module, imported only when the kernel first runs: importing dreamcore needs no Triton, and Triton's
CPU interpreter (TRITON_INTERPRET=1, read when this module is imported) can run the kernel in tests.
"""

import triton
import triton.language as tl


@triton.jit
def nearest_bf16(values):
    """fp32 -> bf16, round to nearest even, spelled out: a plain cast's rounding mode differs between Triton's
    GPU backends and its CPU interpreter (which truncates)."""
    bits = values.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)  # exact: the low bits are zero


@triton.jit
def adamw_kernel(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, compensation_ptr, step_ptr, lr_ptr,
                 lr_value, seed_ptr, counter_base, numel, beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay,
                 LR_ON_DEVICE: tl.constexpr, ROUND_WEIGHTS: tl.constexpr, ROUND_MOMENTS: tl.constexpr,
                 KAHAN: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = index < numel
    step = tl.load(step_ptr) + 1.0  # the count holds the updates before this one (InBackwardAdamW.step adds it)
    if LR_ON_DEVICE:
        lr = tl.load(lr_ptr)
    else:
        lr = lr_value
    grad = tl.load(grad_ptr + index, mask=inside, other=0.0).to(tl.float32)
    exp_avg = tl.load(exp_avg_ptr + index, mask=inside, other=0.0).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + index, mask=inside, other=0.0).to(tl.float32)
    weights = tl.load(param_ptr + index, mask=inside, other=0.0).to(tl.float32)
    if KAHAN:  # the weight as fp32 sees it: the bf16 value plus what earlier roundings dropped
        weights += tl.load(compensation_ptr + index, mask=inside, other=0.0).to(tl.float32)

    exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    bias_correction1 = 1 - tl.exp2(step * log2_beta1)
    bias_correction2 = 1 - tl.exp2(step * log2_beta2)
    denominator = tl.sqrt(exp_avg_sq / bias_correction2) + eps
    weights = weights * (1 - lr * weight_decay) - exp_avg / denominator * (lr / bias_correction1)

    # One Philox counter per (step, element of the model): fresh noise every step, no state to keep.
    counter = (step.to(tl.int64) << 32) + counter_base + index
    noise_weights, noise_avg, noise_avg_sq, _ = tl.randint4x(tl.load(seed_ptr), counter)
    # Stochastic rounding to bf16: adding 16 random low bits, then truncating, rounds up with a
    # probability equal to the dropped fraction (unbiased). Exact in the final cast: the low bits are zero.
    if ROUND_MOMENTS:
        bits = (exp_avg.to(tl.uint32, bitcast=True) + (noise_avg & 0xFFFF)) & 0xFFFF0000
        tl.store(exp_avg_ptr + index, bits.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=inside)
        bits = (exp_avg_sq.to(tl.uint32, bitcast=True) + (noise_avg_sq & 0xFFFF)) & 0xFFFF0000
        tl.store(exp_avg_sq_ptr + index, bits.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=inside)
    else:
        tl.store(exp_avg_ptr + index, exp_avg, mask=inside)
        tl.store(exp_avg_sq_ptr + index, exp_avg_sq, mask=inside)
    if KAHAN:  # nearest bf16, and the remainder (exact to bf16 precision) kept for the next update
        stored = nearest_bf16(weights)
        tl.store(param_ptr + index, stored, mask=inside)
        tl.store(compensation_ptr + index, nearest_bf16(weights - stored.to(tl.float32)), mask=inside)
    elif ROUND_WEIGHTS:
        bits = (weights.to(tl.uint32, bitcast=True) + (noise_weights & 0xFFFF)) & 0xFFFF0000
        tl.store(param_ptr + index, bits.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=inside)
    else:
        tl.store(param_ptr + index, weights, mask=inside)

