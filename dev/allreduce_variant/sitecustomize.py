"""Dev only (dev/multi_gpu.sh allreduce, sharded-buckets): with DREAMCORE_ALLREDUCE="BUCKET_MB,IN_FLIGHT_MB" set,
every Python process started with this folder on PYTHONPATH (the benchmark's training processes included, which a
launcher starts) uses those sizes for gradient_average's buckets (sharded or not) and in-flight limit instead of
the shipped ones."""

import os
import sys

if os.environ.get("DREAMCORE_ALLREDUCE"):
    bucket_mb, in_flight_mb = (float(part) for part in os.environ["DREAMCORE_ALLREDUCE"].split(","))
    from dreamcore.training import gradient_average

    gradient_average.BUCKET_BYTES = int(bucket_mb * 2**20)
    gradient_average.SHARDED_BUCKET_BYTES = int(bucket_mb * 2**20)  # the sharded form's (run AL)
    gradient_average.IN_FLIGHT_BYTES = int(in_flight_mb * 2**20)
    print(f"[allreduce variant] buckets {bucket_mb:g} MB, in flight {in_flight_mb:g} MB", file=sys.stderr)
