#!/usr/bin/env bash
# Runs on the lent GPU machine (from the repo root, with .whl-bench/ beside it):
#   bash dev/gpu_bench.sh STEPS WARMUP [bench --preset ... flags]
# BENCH_NAME names the output files ($OUT/NAME.json, NAME.log; default bench), so one command can run several.
# Installs the carried diffusers/bitsandbytes wheels, prints the card, runs `dreamcore bench` and, with
# RUN_ACCELERATE=1, issue 10's single-GPU run of the multi-process path; with RUN_GPU_TESTS=1 the gpu tests
# (GPU_TESTS_K: a pytest -k filter). EXTRA_PYTHONPATH goes first on PYTHONPATH (dev/allreduce_variant).
set -uo pipefail
STEPS=${1:-120}; WARMUP=${2:-20}; shift 2 || true
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
NAME=${BENCH_NAME:-bench}
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-bench/*.whl
export PYTHONPATH=${EXTRA_PYTHONPATH:+$EXTRA_PYTHONPATH:}/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Keep compiled bytecode as a user's installation does (the lent machine sets PYTHONDONTWRITEBYTECODE, so every
# process compiled ~2,800 modules again: ~6 s of each run's start-up in run K), and compile what training imports
# once before anything is timed.
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache
[ -d /tmp/pycache ] || python3 -c 'import dreamcore.training.run, dreamcore.models, diffusers, transformers, peft, triton
from diffusers import StableDiffusionPipeline, UNet2DConditionModel, AutoencoderKL, DDPMScheduler, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer
import torch._dynamo, torch._higher_order_ops.triton_kernel_wrap' 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 -c 'import torch, diffusers, bitsandbytes, transformers, accelerate; import importlib.util as u; print("triton", u.find_spec("triton") and __import__("triton").__version__, "torch", torch.__version__, "diffusers", diffusers.__version__, "bnb", bitsandbytes.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__)'
if [ "${RUN_GPU_TESTS:-0}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider --run-gpu -m gpu ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} tests/bench tests/training 2>&1 | tail -15 | tee "$OUT/gpu-tests.log"
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
