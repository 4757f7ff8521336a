"""Dev only (dev/multi_gpu.sh allreduce, sharded): every Python process started with this folder on PYTHONPATH
(the benchmark's training processes included, which a launcher starts) uses other settings for gradient_average
than the shipped ones:
- DREAMCORE_ALLREDUCE="BUCKET_MB,IN_FLIGHT_MB": the buckets' size and the in-flight limit;
- DREAMCORE_SHARD_UPDATES=0 or 1: each weight updated by its owner only (1), or by every process (0)."""

import os
import sys

if os.environ.get("DREAMCORE_ALLREDUCE") or os.environ.get("DREAMCORE_SHARD_UPDATES"):
    from dreamcore.training import gradient_average

    if os.environ.get("DREAMCORE_ALLREDUCE"):
        bucket_mb, in_flight_mb = (float(part) for part in os.environ["DREAMCORE_ALLREDUCE"].split(","))
        gradient_average.BUCKET_BYTES = int(bucket_mb * 2**20)
        gradient_average.IN_FLIGHT_BYTES = int(in_flight_mb * 2**20)
        print(f"[allreduce variant] buckets {bucket_mb:g} MB, in flight {in_flight_mb:g} MB", file=sys.stderr)
    if os.environ.get("DREAMCORE_SHARD_UPDATES"):
        gradient_average.SHARD_UPDATES = os.environ["DREAMCORE_SHARD_UPDATES"] == "1"
        print(f"[allreduce variant] shard updates {gradient_average.SHARD_UPDATES}", file=sys.stderr)
