#!/usr/bin/env bash
# The reference beside dreamcore on the same card: diffusers' examples/dreambooth/train_dreambooth.py with the
# guide's flags (fp16, 8-bit Adam, text encoder trained, 12 class images) on the random SD1.5-shaped model and
# photos that `dreamcore bench` wrote under WORK. Prints its steady rate and peak device memory.
#   bash dev/guide_reference.sh REFERENCE_SCRIPT WORK STEPS
# Runs on the lent GPU machine after dev/gpu_bench.sh (which installs the carried wheels and builds WORK).
set -uo pipefail
REFERENCE=$1; WORK=$2; STEPS=${3:-300}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN=$WORK/reference; rm -rf "$RUN"; mkdir -p "$RUN"
(while sleep 0.2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) > "$RUN/memory.txt" &
SAMPLER=$!
SECONDS=0
python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision fp16 --dynamo_backend no "$REFERENCE" \
  --pretrained_model_name_or_path "$WORK/model-sd1" --instance_data_dir "$WORK/photos-512" \
  --class_data_dir "$RUN/class" --output_dir "$RUN/out" --with_prior_preservation --prior_loss_weight 1.0 \
  --instance_prompt "photo of ukj person" --class_prompt "photo of a person" --resolution 512 \
  --train_batch_size 1 --train_text_encoder --mixed_precision fp16 --use_8bit_adam \
  --gradient_accumulation_steps 1 --learning_rate 1e-6 --lr_scheduler constant --lr_warmup_steps 0 \
  --num_class_images 12 --sample_batch_size 4 --max_train_steps "$STEPS" --checkpointing_steps 100000 \
  --seed 1337 > "$RUN/log.txt" 2>&1
STATUS=$?
kill $SAMPLER
echo "reference exit $STATUS in $SECONDS s ($STEPS steps, class images and load included)" | tee "$OUT/reference.txt"
# tqdm's last "N/STEPS [mm:ss<..., X it/s]" line: the run's own rate, smoothed over its last steps
tr '\r' '\n' < "$RUN/log.txt" | grep -E "Steps: +100%|Steps:.*$STEPS/$STEPS" | tail -1 | tee -a "$OUT/reference.txt"
echo "peak device memory $(sort -n "$RUN/memory.txt" | tail -1) MiB" | tee -a "$OUT/reference.txt"
tr '\r' '\n' < "$RUN/log.txt" | grep -iE "error|Traceback" | tail -5
