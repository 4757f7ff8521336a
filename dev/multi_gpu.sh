#!/usr/bin/env bash
# Issue 10 on a machine with 2 GPUs (from the repo root, with .whl-bench/ beside it):
#   bash dev/multi_gpu.sh [class-images | class-images-200 | training | training-batch1 | allreduce | nccl-proto |
#                           nccl-channels | nccl-sweep | scaling | sharded |
#                           sharded-bucketed | sharded-buckets | shipped | overlap | final]
# 1. Class images: 64 from one GPU and from two. A first one-GPU run warms the machine (page cache, cuDNN),
#    so the one-GPU figure compared is a warm repeat.
# 2. One job per GPU: one 16GB-tier job alone on GPU 0, then two jobs at once with `jobs run --gpus 0,1`.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ "${1:-}" = training ]; then  # the 16GB tier at global batches 2 and 4: one GPU, then two (in-backward
  # AdamW averaging each gradient across the processes, the step recorded with its all-reduces), then two eager
  RUN_GPU_TESTS=1 GPU_TESTS_K=two_gpus BENCH_NAME=train1 bash dev/gpu_bench.sh 60 15 --preset 16GB:train_batch_size=2 --preset 16GB:train_batch_size=4
  BENCH_NAME=train2 bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB:train_batch_size=1 \
    --preset 16GB:train_batch_size=2 --preset 16GB:train_batch_size=1,cuda_graph=false
  exit 0
fi
if [ "${1:-}" = training-batch1 ]; then  # one GPU at batch 1 against two at batch 1 each, the latter profiled
  BENCH_NAME=train1-b1 bash dev/gpu_bench.sh 60 15 --preset 16GB
  BENCH_NAME=train2-prof bash dev/gpu_bench.sh 60 15 --num-processes 2 --profile --preset 16GB
  exit 0
fi
if [ "${1:-}" = scaling ]; then  # the 16GB tier at global batches 2, 4 and 8: one GPU, then two
  BENCH_NAME=scale1 bash dev/gpu_bench.sh 60 15 --preset 16GB:train_batch_size=2 --preset 16GB:train_batch_size=4 \
    --preset 16GB:train_batch_size=8
  BENCH_NAME=scale2 bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB:train_batch_size=1 \
    --preset 16GB:train_batch_size=2 --preset 16GB:train_batch_size=4
  # fewer NCCL channels (SMs) for the all-reduces that run beside backward's kernels
  NCCL_MAX_NCHANNELS=4 BENCH_NAME=scale2-ch4 bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB
  exit 0
fi
if [ "${1:-}" = sharded ]; then  # runs AC-AE: shard_optimizer (each process updates half of every weight and keeps
  # that half's AdamW state) against the default, two GPUs at batch 1 and 2 each, beside one GPU at 2 and 4; the
  # 2-GPU tests. (Runs AC and AD set the sharding through a variant of dev/allreduce_variant, now the config field.)
  RUN_GPU_TESTS=1 GPU_TESTS_K=two_gpus BENCH_NAME=one bash dev/gpu_bench.sh 60 15 --preset 16GB:train_batch_size=2 \
    --preset 16GB:train_batch_size=4
  # --profile: 5 late warm-up steps of each (the steady steps timed stay unprofiled), with each stream's busy time
  BENCH_NAME=sharded bash dev/gpu_bench.sh 60 15 --num-processes 2 --profile --preset 16GB:shard_optimizer=true \
    --preset 16GB:train_batch_size=2,shard_optimizer=true
  BENCH_NAME=unsharded bash dev/gpu_bench.sh 60 15 --num-processes 2 --profile --preset 16GB \
    --preset 16GB:train_batch_size=2
  (cd "$OUT" && tar czf /tmp/sharded.tgz ./* && rm -f ./* && mv /tmp/sharded.tgz .)
  exit 0
fi
if [ "${1:-}" = sharded-bucketed ]; then  # runs AI, AJ: shard_optimizer with small gradients' reduce-scatters and
  # all-gathers bucketed (8 MB) against the default, two GPUs at batch 1 and 2 each (profiled), beside one GPU at 2
  # and 4; the 2-GPU tests (the step recorded with the bucketed collectives)
  RUN_GPU_TESTS=1 GPU_TESTS_K=two_gpus BENCH_NAME=one bash dev/gpu_bench.sh 60 15 --preset 16GB:train_batch_size=2 \
    --preset 16GB:train_batch_size=4 | grep -E "^\| [^p-]|exit|passed|failed"
  BENCH_NAME=two bash dev/gpu_bench.sh 60 15 --num-processes 2 --profile --preset 16GB \
    --preset 16GB:shard_optimizer=true --preset 16GB:train_batch_size=2 \
    --preset 16GB:train_batch_size=2,shard_optimizer=true | grep -E "^\| [^p-]|exit"
  tail -n 2 "$OUT"/profile-*.txt
  (cd "$OUT" && tar czf /tmp/bucketed.tgz ./* && rm -f ./* && mv /tmp/bucketed.tgz .)
  exit 0
fi
if [ "${1:-}" = shipped ]; then  # run AK: the tier as shipped (shard_optimizer on by default), two GPUs at batch
  # 1 and 4 each, beside one GPU at 8
  BENCH_NAME=one-b8 bash dev/gpu_bench.sh 60 15 --preset 16GB:train_batch_size=8 | grep -E "^\| [^p-]|exit"
  BENCH_NAME=two-shipped bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB \
    --preset 16GB:train_batch_size=4 | grep -E "^\| [^p-]|exit"
  exit 0
fi
if [ "${1:-}" = final ]; then  # run AM: the code as shipped, all on one machine: the 2-GPU tests; one GPU at
  # batch 1, 2 and 4; two GPUs at 1 and 2 each - the speed-up at a global batch of 2 and 4 (against one GPU at that
  # batch) and at a batch of 1 and 2 a GPU (against one GPU at that batch)
  RUN_GPU_TESTS=1 GPU_TESTS_K=two_gpus BENCH_NAME=one bash dev/gpu_bench.sh 60 15 --preset 16GB \
    --preset 16GB:train_batch_size=2 --preset 16GB:train_batch_size=4 | grep -E "^\| [^p-]|exit|passed|failed"
  BENCH_NAME=two bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB --preset 16GB:train_batch_size=2 \
    | grep -E "^\| [^p-]|exit"
  exit 0
fi
if [ "${1:-}" = sharded-buckets ]; then  # run AL: the sharded form's bucket size (MB) and in-flight limit, two
  # GPUs at batch 1 each; the first pair is the shipped one
  for sizes in 8,128 32,128 32,256; do
    DREAMCORE_ALLREDUCE=$sizes EXTRA_PYTHONPATH=$PWD/dev/allreduce_variant BENCH_NAME=sb-${sizes/,/-} \
      bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB | grep -E "^\| [^p-]|exit"
  done
  exit 0
fi
if [ "${1:-}" = overlap ]; then  # two GPUs at batch 1 each, profiled: how much of the step the step's kernels,
  # NCCL's alone and nothing fill (bench --profile's last line), without and with shard_optimizer
  BENCH_NAME=overlap bash dev/gpu_bench.sh 40 15 --num-processes 2 --profile --preset 16GB \
    --preset 16GB:shard_optimizer=true
  tail -n 2 "$OUT"/profile-*.txt
  exit 0
fi
if [ "${1:-}" = nccl-proto ]; then  # two GPUs at batch 1 each: NCCL's own protocol choice (run Y's profile: every
  # all-reduce ran RING_LL), then each protocol forced
  BENCH_NAME=proto-auto bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB
  for proto in Simple LL128; do
    NCCL_PROTO=$proto BENCH_NAME=proto-$proto bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB
  done
  NCCL_PROTO=Simple BENCH_NAME=proto-prof bash dev/gpu_bench.sh 60 15 --num-processes 2 --profile --preset 16GB
  (cd "$OUT" && mv profile-*.txt proto-profile.txt; tar czf /tmp/proto.tgz ./* && rm -f ./* && mv /tmp/proto.tgz .)
  exit 0
fi
if [ "${1:-}" = nccl-channels ]; then  # two GPUs at batch 1 each: NCCL's channel count logged, then at least 32
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT BENCH_NAME=ch-auto bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB
  grep -h "nChannels\|channels" "$OUT/ch-auto.log" | sort | uniq -c | head -8
  NCCL_MIN_NCHANNELS=32 BENCH_NAME=ch-32 bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB
  exit 0
fi
if [ "${1:-}" = nccl-sweep ]; then  # run AH: two GPUs at batch 1 each with NCCL's 24 channels, then capped at 16,
  # 12 and 8 (fewer SMs taken from backward's kernels; 4 was too slow in run AA), then NCCL's CTA-efficiency policy;
  # one GPU at batch 2 for the speed-up on this machine
  python3 -c 'import torch; print("NCCL", torch.cuda.nccl.version())'
  BENCH_NAME=sweep-1gpu-b2 bash dev/gpu_bench.sh 60 15 --preset 16GB:train_batch_size=2 | grep -E "^\| [^p-]|exit"
  BENCH_NAME=sweep-auto bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB | grep -E "^\| [^p-]|exit"
  for channels in 16 12 8; do
    NCCL_MAX_NCHANNELS=$channels BENCH_NAME=sweep-ch$channels bash dev/gpu_bench.sh 60 15 --num-processes 2 \
      --preset 16GB | grep -E "^\| [^p-]|exit"
  done
  NCCL_CTA_POLICY=1 NCCL_DEBUG=WARN BENCH_NAME=sweep-cta1 bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB \
    | grep -E "^\| [^p-]|exit"
  (cd "$OUT" && tar czf /tmp/sweep.tgz ./* && rm -f ./* && mv /tmp/sweep.tgz .)
  exit 0
fi
if [ "${1:-}" = allreduce ]; then  # one GPU at batch 1, then two at batch 1 each with several bucket and
  # in-flight sizes for the gradients' all-reduces (MB; the first pair is the shipped one), then that one profiled
  BENCH_NAME=train1-b1 bash dev/gpu_bench.sh 60 15 --preset 16GB
  for sizes in 8,128 0,128 8,16 32,512 2,128; do
    DREAMCORE_ALLREDUCE=$sizes EXTRA_PYTHONPATH=$PWD/dev/allreduce_variant BENCH_NAME=ar-${sizes/,/-} \
      bash dev/gpu_bench.sh 60 15 --num-processes 2 --preset 16GB
    grep -m1 "allreduce variant" "$OUT/ar-${sizes/,/-}.log"
  done
  BENCH_NAME=ar-prof bash dev/gpu_bench.sh 60 15 --num-processes 2 --profile --preset 16GB
  (cd "$OUT" && mv profile-*.txt ar-profile.txt; tar czf /tmp/allreduce.tgz ./* && rm -f ./* && mv /tmp/allreduce.tgz .)
  exit 0
fi
# class images with the settings several processes used until commit 0789f1d (gradients held, DistributedDataParallel);
# the one-GPU runs get the same settings
H=optimizer_in_backward=false,pure_bf16=false,cuda_graph=false,max_grad_norm=1.0,bf16_rounding=stochastic
H=$H,bf16_autocast=true,num_class_images=64
if [ "${1:-}" = class-images-200 ]; then  # 200 class images on two GPUs and on one, after a run that warms both
  BENCH_NAME=warm-up bash dev/gpu_bench.sh 12 10 --num-processes 2 --preset "24GB:${H/num_class_images=64/num_class_images=8}"
  H=${H/num_class_images=64/num_class_images=200}
  BENCH_NAME=cls2-200 bash dev/gpu_bench.sh 12 10 --num-processes 2 --preset "24GB:$H"
  BENCH_NAME=cls1-200 bash dev/gpu_bench.sh 12 10 --preset "24GB:$H"
  exit 0
fi
BENCH_NAME=cls1-first bash dev/gpu_bench.sh 12 10 --preset "24GB:$H"
BENCH_NAME=cls2 bash dev/gpu_bench.sh 12 10 --num-processes 2 --preset "24GB:$H"
BENCH_NAME=cls1 bash dev/gpu_bench.sh 12 10 --preset "24GB:$H"
[ "${1:-}" = class-images ] && exit 0  # part 1 only

export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPYCACHEPREFIX=/tmp/pycache
unset PYTHONDONTWRITEBYTECODE  # as in gpu_bench.sh
J=/tmp/jobs; rm -rf $J; mkdir -p $J
python3 - "$J" <<'EOF'
import sys
from pathlib import Path
from dreamcore.bench.recipe import parse_preset, recipe_config
jobs = Path(sys.argv[1])
for name in ("alone", "gpu-a", "gpu-b"):
    config = recipe_config(parse_preset("16GB"), Path("/tmp/bw/model-sd1"), Path("/tmp/bw/photos-512"),
                           jobs / "unused", steps=600, resolution=512)
    config.save(jobs / f"{name}.json")
EOF
python3 -m dreamcore jobs --output $J submit alone --config $J/alone.json >/dev/null
SECONDS=0; python3 -m dreamcore jobs --output $J run --gpus 0 > $OUT/jobs-alone.log 2>&1
echo "one job of 600 steps on one GPU: ${SECONDS} s (exit $?)" | tee $OUT/jobs.txt
python3 -m dreamcore jobs --output $J submit gpu-a --config $J/gpu-a.json >/dev/null
python3 -m dreamcore jobs --output $J submit gpu-b --config $J/gpu-b.json >/dev/null
SECONDS=0; python3 -m dreamcore jobs --output $J run --gpus 0,1 > $OUT/jobs-two.log 2>&1
echo "two jobs of 600 steps on GPUs 0 and 1: ${SECONDS} s (exit $?)" | tee -a $OUT/jobs.txt
python3 -m dreamcore jobs --output $J list | tee -a $OUT/jobs.txt
for name in alone gpu-a gpu-b; do python3 -m dreamcore jobs --output $J show $name --json > $OUT/job-$name.json; done
grep -h "it/s\|Training completed\|steps on" $J/jobs/*/log.txt | tail -12 | tee -a $OUT/jobs.txt
