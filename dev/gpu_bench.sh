#!/usr/bin/env bash
# Runs on the lent GPU machine (from the repo root, with the wheels dreamcore needs there in .whl-bench/, or in the
# folder WHEELS names):
#   bash dev/gpu_bench.sh STEPS WARMUP [bench --preset ... flags]
#   bash dev/gpu_bench.sh sdxl STEPS WARMUP REFERENCE_SCRIPT [MODEL_SIZE]
# BENCH_NAME names the output files ($OUT/NAME.json, NAME.log; default bench), so one command can run several.
# Installs the carried diffusers/bitsandbytes wheels (unless diffusers imports already), prints the card, runs
# `dreamcore bench` and, with RUN_ACCELERATE=1, issue 10's single-GPU run of the multi-process path; with
# RUN_GPU_TESTS=1 the gpu tests (GPU_TESTS_K: a pytest -k filter). EXTRA_PYTHONPATH goes first on PYTHONPATH
# (dev/allreduce_variant).
# "sdxl": the SDXL section (below) instead: dreamcore bench of "SDXL LoRA" (as the preset, then through the recorded
# step) and "SDXL full" on the random SDXL, then
# diffusers' train_dreambooth_lora_sdxl.py (REFERENCE_SCRIPT, a path: never committed here) on the same model and
# photos with the LoRA preset's settings. MODEL_SIZE tiny checks the commands on the tiny SDXL (on a CPU too).
set -uo pipefail
SECTION=default
if [ "${1:-}" = sdxl ]; then SECTION=sdxl; shift; fi
STEPS=${1:-120}; WARMUP=${2:-20}; shift 2 || true
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
NAME=${BENCH_NAME:-bench}
export PYTHONPATH=${EXTRA_PYTHONPATH:+$EXTRA_PYTHONPATH:}/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c 'import diffusers' 2>/dev/null || [ -d /tmp/site/diffusers ] || \
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${WHEELS:-.whl-bench}"/*.whl
# Keep compiled bytecode as a user's installation does (the lent machine sets PYTHONDONTWRITEBYTECODE, so every
# process compiled ~2,800 modules again: ~6 s of each run's start-up in run K), and compile what training imports
# once before anything is timed.
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
[ -d /tmp/pycache ] || python3 -c 'import dreamcore.training.run, dreamcore.models, diffusers, transformers, peft, triton
from diffusers import StableDiffusionPipeline, UNet2DConditionModel, AutoencoderKL, DDPMScheduler, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer
import torch._dynamo, torch._higher_order_ops.triton_kernel_wrap' 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 -c 'import torch, diffusers, transformers, accelerate, peft; import importlib.util as u; print("triton", u.find_spec("triton") and __import__("triton").__version__, "torch", torch.__version__, "diffusers", diffusers.__version__, "bnb", u.find_spec("bitsandbytes") and __import__("bitsandbytes").__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__, "peft", peft.__version__)'
if [ "${RUN_GPU_TESTS:-0}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider --run-gpu -m gpu ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} tests/bench tests/training 2>&1 | tail -15 | tee "$OUT/gpu-tests.log"
fi
if [ "$SECTION" = sdxl ]; then
  # --- sdxl: dreamcore's SDXL presets, then diffusers' reference on the same random model and photos -----------
  REFERENCE=${1:?"usage: bash dev/gpu_bench.sh sdxl STEPS WARMUP REFERENCE_SCRIPT [MODEL_SIZE]"}; SIZE=${2:-sdxl}
  W=${SDXL_WORK:-/tmp/bw-sdxl}
  # Class images and samples at 2 sampling steps and one sample: they do not touch the training step, whose
  # time and memory are measured (so the projected 2000-step totals undercount those two parts).
  QUICK=class_infer_steps=2,save_infer_steps=2,n_save_sample=1
  LORA="SDXL LoRA:$QUICK"
  # LoRA, the reference, then full (whose export writes the largest files): each writes its JSON when done
  sdxl_bench() {  # NAME PRESET; the first builds the random model and photos under $W, the second reuses them
    python3 -m dreamcore bench --family sdxl --model-size "$SIZE" --work "$W" --steps "$STEPS" --warmup "$WARMUP" \
      --json "$OUT/$1.json" --preset "$2" > "$OUT/$1.log" 2>&1
    echo "dreamcore bench $1 exit $?"
    grep -v "it/s\]\|Loading\|Writing\|warn" "$OUT/$1.log" | tail -12
  }
  sdxl_bench sdxl-lora "$LORA"
  # The same LoRA through the tiers' recorded step (one CUDA graph a step), with the settings it needs: bf16 instead
  # of fp16's host-checked loss scaler, fused AdamW instead of bitsandbytes'.
  sdxl_bench sdxl-lora-recorded "$LORA,fast_step=true,cuda_graph=true,mixed_precision=bf16,use_8bit_adam=false"
  # The reference's flags from the configuration dreamcore ran "SDXL LoRA" with (one a line). Its LoRA is on the
  # attention only (to_q/k/v/out.0 and q/k/v/out_proj, alpha = rank): dreamcore's also has proj_in/out, the
  # feed-forward and fc1/fc2. The instance photos stand in as its class images (their content does not change a
  # step's time); it encodes each batch with the fp32 VAE where dreamcore caches latents.
  mapfile -t REF_ARGS < <(python3 - "$W" "$SIZE" "$STEPS" "$LORA" <<'EOF'
import sys
from pathlib import Path

import torch

from dreamcore.bench.recipe import bench_inputs, parse_preset, recipe_config
from dreamcore.families import get_family
from dreamcore.training.optim import eight_bit_adam_problem

work, size, steps, spec = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
inputs = bench_inputs(work, get_family("sdxl"), size)
c = recipe_config(parse_preset(spec), inputs.model, inputs.photos, work / "reference", steps, inputs.resolution)
assert c.use_lora and c.train_batch_size == 1 and c.gradient_accumulation_steps == 1, spec
flags = {"pretrained_model_name_or_path": c.pretrained_model_name_or_path, "instance_data_dir": c.instance_data_dir,
         "instance_prompt": c.instance_prompt, "resolution": c.resolution, "train_batch_size": 1,
         "max_train_steps": steps, "learning_rate": c.learning_rate, "lr_scheduler": c.lr_scheduler,
         "lr_warmup_steps": c.lr_warmup_steps, "rank": c.lora_rank, "mixed_precision": c.mixed_precision,
         "seed": c.seed, "max_grad_norm": c.max_grad_norm, "output_dir": work / "reference",
         "checkpointing_steps": 10**9}
if c.with_prior_preservation:
    flags.update(class_prompt=c.class_prompt, class_data_dir=inputs.photos, num_class_images=c.num_class_images,
                 prior_loss_weight=c.prior_loss_weight)
switches = {"with_prior_preservation": c.with_prior_preservation, "center_crop": c.center_crop,
            "train_text_encoder": c.lora_text_encoder, "gradient_checkpointing": c.gradient_checkpointing,
            "allow_tf32": c.allow_tf32,
            # as dreamcore, which uses plain AdamW where bitsandbytes cannot run
            "use_8bit_adam": c.use_8bit_adam and eight_bit_adam_problem(
                torch.device("cuda" if torch.cuda.is_available() else "cpu")) is None}
for name, value in flags.items():
    print(f"--{name}"); print(value)
for name, on in switches.items():
    if on:
        print(f"--{name}")
EOF
)
  [ "${#REF_ARGS[@]}" -gt 0 ] || { echo "the reference's flags could not be derived"; exit 1; }
  rm -rf "$W/reference"
  echo "reference: $REFERENCE ${REF_ARGS[*]}"
  python3 -m dreamcore.bench.reference --warmup "$WARMUP" --label "train_dreambooth_lora_sdxl.py" \
    --log "$OUT/sdxl-reference.log" --json "$OUT/sdxl-reference.json" -- python3 "$REFERENCE" "${REF_ARGS[@]}"
  echo "reference exit $?"
  tr '\r' '\n' < "$OUT/sdxl-reference.log" | grep -v "it/s\]\|Loading\|warn\|^\s*$" | tail -8
  sdxl_bench sdxl-full "SDXL full:$QUICK"
  python3 - "$OUT/sdxl-reference.json" "$OUT/sdxl-lora.json" "$OUT/sdxl-lora-recorded.json" "$OUT/sdxl-full.json" <<'EOF'
import json
import sys
from pathlib import Path

reference = json.loads(Path(sys.argv[1]).read_text())
results = [result for path in map(Path, sys.argv[2:]) if path.is_file()
           for result in json.loads(path.read_text())["results"]]
theirs = reference["steady_s_per_step"]
print(f"reference: {theirs and f'{theirs:.4f} s/step'}, training peak {reference['train_peak_device_gib']} GiB, "
      f"run peak {reference['peak_device_gib']} GiB")
for result in results:
    ours = (result.get("phases") or {}).get("steady_s_per_step")
    # the LoRA runs train what the reference trains (the recorded one at bf16 with fused AdamW)
    lora = result["label"].startswith("SDXL LoRA")
    ratio = f", {theirs / ours:.2f}x the reference's it/s" if lora and ours and theirs else ""
    print(f"{result['label']}: {result['status']}, {ours and f'{ours:.4f} s/step'}{ratio}, training peak "
          f"{result['train_peak_device_gib']} GiB, run peak {result['peak_device_gib']} GiB")
EOF
  exit 0
fi
if [ "${RUN_ACCELERATE:-0}" = 1 ]; then
  W=/tmp/acc; rm -rf $W; mkdir -p $W/photos
  python3 -m dreamcore tiny-model $W/model >/dev/null
  python3 -c "from pathlib import Path; from dreamcore.commands.demo import make_demo_photos; make_demo_photos(Path('$W/photos'), count=4, size=64)"
  SECONDS=0
  python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
    -m dreamcore train --pretrained_model_name_or_path $W/model --instance_data_dir $W/photos \
    --instance_prompt "photo of ukj person" --with_prior_preservation --class_prompt "photo of a person" \
    --num_class_images 2 --class_infer_steps 2 --resolution 64 --max_train_steps 20 --train_text_encoder \
    --mixed_precision bf16 --save_infer_steps 2 --n_save_sample 1 --checkpointing_steps 10 \
    --memory_preset none --output_dir $W/out 2>&1 | grep -v "it/s\]" | tail -12 | tee "$OUT/accelerate-launch.log"
  echo "accelerate launch exit ${PIPESTATUS[0]} in ${SECONDS} s" | tee -a "$OUT/accelerate-launch.log"
  ls $W/out | tee -a "$OUT/accelerate-launch.log"
fi
python3 -m dreamcore bench --work /tmp/bw --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/$NAME.json" "$@" \
  > "$OUT/$NAME.log" 2>&1
echo "$NAME exit $?"
grep -v "it/s\]\|Loading\|Writing\|warn" "$OUT/$NAME.log" | tail -40
