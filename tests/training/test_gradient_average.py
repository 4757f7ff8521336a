"""gradient_average.py in 2 CPU processes (gloo): GradientQueue gives every gradient back averaged over the
processes, in the order it went in, small ones sent together and the in-flight limit kept; the weight check finds
a weight that differs between processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dreamcore.training.gradient_average import GradientQueue, ProcessAverage

# (shape, dtype, layout): element counts chosen around the 64-byte bucket of the test
WEIGHTS = [((4,), torch.float32, "plain"),            # 16 bytes: bucketed
           ((2, 3), torch.float32, "plain"),          # 24: bucketed (40)
           ((5, 5), torch.float32, "plain"),          # 100: the bucket is sent, then this alone
           ((2, 2, 2, 2), torch.float32, "channels_last"),  # 64: alone, in place
           ((3,), torch.bfloat16, "plain"),           # 6, bf16: a bucket of its own
           ((6,), torch.float32, "plain"),            # 24, fp32: the bf16 bucket is sent, a new one begun
           ((3, 4), torch.float32, "transposed"),     # 48, not one dense block: the bucket is sent, then a copy
           ((10,), torch.float32, "plain"),           # 40: bucketed
           ((6,), torch.float32, "plain"),            # 24: the bucket reaches 64 and is sent
           ((2,), torch.float32, "plain")]            # 8: in the bucket until drain()


def gradient(index, shape, dtype, layout, rank):
    count = torch.Size(shape).numel()
    # small integers and halves: exact in bf16, so the average can be compared exactly
    values = (torch.arange(count, dtype=torch.float32) + 10 * index + 3 * rank).reshape(shape).to(dtype)
    if layout == "channels_last":
        return values.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return values.t().contiguous().t()
    return values


def worker(rank, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    sends = []

    class CountingAverage(ProcessAverage):
        def start(self, tensor, owner=None):
            sends.append(tensor.numel())
            return super().start(tensor, owner)

    order = []
    queue = GradientQueue(CountingAverage(bucket_bytes=64, in_flight_bytes=100, shard_updates=False), order.append)
    weights, most_in_flight = [], 0
    for index, (shape, dtype, layout) in enumerate(WEIGHTS):
        weight = torch.zeros(shape, dtype=dtype, requires_grad=True)
        weight.grad = gradient(index, shape, dtype, layout, rank)
        weights.append(weight)
        queue.put(weight)
        most_in_flight = max(most_in_flight, queue._in_flight_bytes)
    queue.drain()
    exact = all(torch.equal(w.grad, (gradient(i, *spec, 0).float() + 1.5).to(w.dtype))
                for i, (w, spec) in enumerate(zip(weights, WEIGHTS)))
    layouts_kept = [w.grad.stride() == gradient(i, *spec, 0).stride()
                    for i, (w, spec) in enumerate(zip(weights, WEIGHTS))]
    json.dump(dict(order=[[id(x) for x in weights].index(id(w)) for w in order], sends=sends, exact=exact,
                   left=len(queue), layouts_kept=layouts_kept, most_in_flight=most_in_flight),
              open(f"{result_file}-{rank}", "w"))
    dist.destroy_process_group()

'''


def run_in_two_processes(worker_source: str, tmp_path: Path) -> list[dict]:
    """Runs ``worker(rank, init_file, result_prefix)`` from ``worker_source`` in 2 gloo processes; returns what each
    wrote to ``{result_prefix}-{rank}`` (JSON)."""
    script = tmp_path / "worker.py"
    script.write_text(worker_source + SPAWN_TWO)
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "init"), str(tmp_path / "result")],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=python_path, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((tmp_path / f"result-{rank}").read_text()) for rank in (0, 1)]


SPAWN_TWO = """

if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_gradient_queue_averages_every_gradient_in_order(tmp_path: Path) -> None:
    result = run_in_two_processes(WORKER, tmp_path)[0]
    assert result["exact"]  # each gradient is the mean of the two processes' (rank 1's are 3 higher)
    assert all(result["layouts_kept"])
    assert result["order"] == list(range(10))  # given back in the order backward finished them
    assert result["left"] == 0
    # the all-reduces, by elements: small gradients together, large ones alone, a bucket never mixing dtypes
    assert result["sends"] == [4 + 6, 25, 16, 3, 6, 12, 10 + 6, 2]
    assert result["most_in_flight"] <= 100  # the limit held (nothing larger than it was sent)


SHARDED_WORKER = WORKER.split("def worker(")[0] + r'''
def worker(rank, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from dreamcore.training.gradient_average import owners_by_size
    reduces, updated = [], []

    class CountingAverage(ProcessAverage):
        def start(self, tensor, owner=None):
            reduces.append([tensor.numel(), owner])
            return super().start(tensor, owner)

    weights = [torch.zeros(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
               if layout == "channels_last" else torch.zeros(shape, dtype=dtype) for shape, dtype, layout in WEIGHTS]
    weights[6] = weights[6].t().contiguous().t()  # a weight that is not one dense block either
    weights = [w.requires_grad_() for w in weights]
    owners = owners_by_size(weights, 2)
    exact = []

    def update(weight):  # the owner's update: the averaged gradient, as the tests know it, plus 100
        index = [id(w) for w in weights].index(id(weight))
        exact.append(torch.equal(weight.grad, (gradient(index, *WEIGHTS[index], 0).float() + 1.5).to(weight.dtype)))
        updated.append(index)
        with torch.no_grad():
            weight.copy_(weight.grad + 100)
        weight.grad = None

    queue = GradientQueue(CountingAverage(bucket_bytes=64, in_flight_bytes=100, shard_updates=True), update, owners)
    for index, (shape, dtype, layout) in enumerate(WEIGHTS):
        weights[index].grad = gradient(index, shape, dtype, layout, rank)
        queue.put(weights[index])
    queue.drain()
    expected = [torch.equal(w.detach(), (gradient(i, *spec, 0).float() + 101.5).to(w.dtype))
                for i, (w, spec) in enumerate(zip(weights, WEIGHTS))]
    json.dump(dict(owners=[owners[w] for w in weights], updated=updated, exact=exact, expected=expected,
                   grads_left=[i for i, w in enumerate(weights) if w.grad is not None], reduces=reduces,
                   left=len(queue), strides_kept=[w.stride() for w in weights],
                   elements=sum(w.numel() for w in weights)),
              open(f"{result_file}-{rank}", "w"))
    dist.destroy_process_group()

'''


def test_sharded_updates_run_in_the_owner_and_reach_every_process(tmp_path: Path) -> None:
    """With owners, each gradient is reduced into its owner, only the owner updates the weight, and the other
    process receives the updated weight, whatever its layout."""
    results = run_in_two_processes(SHARDED_WORKER, tmp_path)
    owners = results[0]["owners"]
    assert owners == results[1]["owners"] and set(owners) == {0, 1}
    for rank, result in enumerate(results):
        assert sorted(result["updated"]) == [i for i, owner in enumerate(owners) if owner == rank]
        assert result["exact"] and all(result["exact"])  # the owner saw the mean of both processes' gradients
        assert all(result["expected"])  # every weight updated, in both processes (sent by its owner)
        assert result["grads_left"] == [] and result["left"] == 0
        assert result["reduces"] == results[0]["reduces"]  # the same collectives, in the same order
    assert results[0]["strides_kept"] == results[1]["strides_kept"]
    # every gradient reduced once, into one owner; buckets per owner
    assert all(owner in (0, 1) for _, owner in results[0]["reduces"])
    assert sum(n for n, _ in results[0]["reduces"]) == results[0]["elements"]


CHECK_WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dreamcore.training.gradient_average import first_weight_differing_across_processes


def worker(rank, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same weights in both processes
    modules = {"unet": torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)),
               "text_encoder": torch.nn.Linear(2, 2)}
    with torch.no_grad():
        modules["unet"][0].bias[1] = float("nan")  # NaN in both: the same weight
    same = first_weight_differing_across_processes(modules)
    if rank == 1:
        with torch.no_grad():
            modules["unet"][1].weight[0, 0] += 1e-3
            modules["text_encoder"].bias[0] += 1.0
    differing = first_weight_differing_across_processes(modules)
    json.dump(dict(same=same, differing=differing), open(f"{result_file}-{rank}", "w"))
    dist.destroy_process_group()

'''


def test_the_weight_check_names_the_first_weight_that_differs_between_processes(tmp_path: Path) -> None:
    for result in run_in_two_processes(CHECK_WORKER, tmp_path):  # both processes learn the answer
        assert result == {"same": None, "differing": "unet.1.weight"}
