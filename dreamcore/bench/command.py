"""``python -m dreamcore bench``: the guide's recipe (or named presets) through dreamcore's trainer, timed per preset,
on a random model of one family's published shapes (``--family``: SD1.5 by default, SDXL, ...).

Each preset runs in its own process (so one preset's cached GPU memory or an out-of-memory error never
colours the next), while this process samples the device's memory with nvidia-smi. The table reports the
steady step time, warm-up, peak memory and the projected end-to-end time of the guide's 2,000 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dreamcore.families.registry import DEFAULT_FAMILY, FAMILIES, FAMILY_NAMES, get_family
from dreamcore.memory_tiers import TIER_NAMES, auto_tiers

HELP = ("Benchmark training on this GPU (random weights of a model family's published shapes, SD1.5 by default; "
        "offline): speed and memory.")
# for the default family; any other family's default is the preset a run of its models starts from
DEFAULT_PRESETS = ("guide", *(tier.name for tier in auto_tiers()))  # not 24GB: the 16GB settings again


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", action="append", default=None, metavar="NAME[:field=value,...]",
                        help="preset to run (repeatable): 'guide' (the guide's fp16 + 8-bit AdamW recipe, plain "
                             "step), 'guide-verbatim' (the guide's command end to end: single-file base and VAE, "
                             "its flags under memory_preset auto, saves every 500 steps; use --steps 2000) or a "
                             f"memory preset {'/'.join(TIER_NAMES)}, optionally with TrainConfig overrides, "
                             f"e.g. 16GB:cuda_graph=false, or a named preset such as 'SDXL LoRA' (default: "
                             f"{' '.join(DEFAULT_PRESETS)}; for another --family, the preset its runs start from)")
    parser.add_argument("--steps", type=int, default=120, help="training steps per preset (default 120)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="steps counted as warm-up, not in the steady-state time (default 20)")
    parser.add_argument("--family", choices=FAMILY_NAMES, default=DEFAULT_FAMILY.name,
                        help=f"the model family whose shapes are benchmarked (default {DEFAULT_FAMILY.name}: "
                             f"{DEFAULT_FAMILY.label})")
    parser.add_argument("--model-size", choices=(*FAMILY_NAMES, "tiny"), default=None,
                        help="the family's name (the default): its published shapes at its default resolution ("
                             + ", ".join(f"{f.name} {f.default_resolution} px" for f in FAMILIES.values())
                             + "); tiny: the family's test model at 64 px (plumbing only)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the random model, photos and run outputs (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="train each preset data-parallel in this many processes, one per GPU (torchrun); "
                             "the global batch is train_batch_size x this. Memory is sampled on GPU 0.")
    parser.add_argument("--profile", action="store_true",
                        help="also profile 5 late warm-up steps of each preset (torch.profiler; outside the "
                             "timed steady state): GPU kernel time a step against the step's wall time, and the top "
                             "kernels; written beside --json. Needs --warmup 10 or more.")
    parser.add_argument("--python-profile", action="store_true",
                        help="also profile each preset's whole run on the host (cProfile; the 60 functions of most "
                             "cumulative time): where start-up, class images and export spend their seconds; "
                             "written beside --json")
    parser.add_argument("--profile-out", type=Path, default=None, help=argparse.SUPPRESS)  # the child's file
    parser.add_argument("--python-profile-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one preset, in this process
    parser.add_argument("--build-inputs", action="store_true", help=argparse.SUPPRESS)  # the model and photos


def run(args: argparse.Namespace) -> int:
    from dreamcore.bench.recipe import GUIDE_VERBATIM, bench_inputs, check_model_size, parse_preset
    from dreamcore.presets import default_preset

    family = get_family(args.family)
    size = args.model_size or family.name
    try:
        check_model_size(family, size)
    except ValueError as error:
        print(f"dreamcore bench: {error}.", file=sys.stderr)
        return 2
    specs = args.preset or (list(DEFAULT_PRESETS) if family is DEFAULT_FAMILY else [default_preset(family.name)])
    try:
        presets = [parse_preset(spec) for spec in specs]
    except ValueError as error:
        print(f"dreamcore bench: {error}", file=sys.stderr)
        return 2
    if family is not DEFAULT_FAMILY and any(preset.name == GUIDE_VERBATIM for preset in presets):
        print(f"dreamcore bench: --preset {GUIDE_VERBATIM} is the guide's {DEFAULT_FAMILY.label} command (its "
              f"single-file base and VAE); run it with --family {DEFAULT_FAMILY.name}, or use 'guide' for the "
              f"guide's recipe on {family.label}.", file=sys.stderr)
        return 2
    if args.num_processes < 1:
        print(f"dreamcore bench: --num-processes {args.num_processes} must be 1 or more.", file=sys.stderr)
        return 2
    if args.profile and args.warmup < 10:
        print("dreamcore bench: --profile profiles 5 late warm-up steps (ending one before the steady state), which "
              "must come after the CUDA-graph step is recorded (at step 4); use --warmup 10 or more.", file=sys.stderr)
        return 2
    if args.steps < args.warmup + 2:
        print(f"dreamcore bench: --steps {args.steps} leaves no steady state after --warmup {args.warmup}; "
              f"use at least {args.warmup + 2}.", file=sys.stderr)
        return 2
    if args.build_inputs:
        if args.work is None:
            print("dreamcore bench --build-inputs needs --work", file=sys.stderr)
            return 2
        _build_inputs(bench_inputs(args.work, family, size))
        return 0
    if args.child:
        if len(presets) != 1 or args.work is None or args.json is None:
            print("dreamcore bench --child needs one --preset, --work and --json", file=sys.stderr)
            return 2
        return _run_child(presets[0], args, size)
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="dreamcore-bench-") as work:
            return _run_parent(presets, args, size, Path(work))
    return _run_parent(presets, args, size, args.work)


def _run_parent(presets, args: argparse.Namespace, size: str, work: Path) -> int:
    from dreamcore.bench.measure import DeviceMemorySampler, describe_card
    from dreamcore.bench.recipe import GUIDE_STEPS, GUIDE_VERBATIM, bench_inputs, single_file_inputs
    from dreamcore.bench.report import PresetResult, format_parts, format_table

    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    inputs = bench_inputs(work, get_family(args.family), size)
    if not _inputs_ready(inputs):
        # in a process of its own, which builds on the GPU where there is one: the build's memory and CUDA context
        # must not count in the presets' device peaks
        command = [sys.executable, "-m", "dreamcore", "bench", "--build-inputs", "--family", args.family,
                   "--model-size", size, "--work", str(work)]
        if subprocess.run(command, env=os.environ.copy()).returncode != 0:
            print(f"dreamcore bench: building the random {inputs.family.label} model and photos under {work} "
                  "failed (its error is above)", file=sys.stderr)
            return 1
    if any(preset.name == GUIDE_VERBATIM for preset in presets):  # once, not timed in the run
        single_file_inputs(inputs.model)
    print(f"bench inputs ready in {time.perf_counter() - started:.0f} s (random {inputs.family.label} model "
          f"{inputs.model}, photos {inputs.photos} at {inputs.resolution} px)", flush=True)
    results: list[PresetResult] = []
    for index, preset in enumerate(presets):
        result_file = work / f"result-{index}.json"
        result_file.unlink(missing_ok=True)
        # fresh: the class images are generated in every run (removed here, not by the processes, which race)
        shutil.rmtree(work / "runs" / _folder_name(preset.spec()), ignore_errors=True)
        launcher = [sys.executable] if args.num_processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.num_processes}"]
        command = [*launcher, "-m", "dreamcore", "bench", "--child", "--preset", preset.spec(),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--family", args.family,
                   "--model-size", size, "--work", str(work), "--json", str(result_file)]
        folder = args.json.parent if args.json is not None else work
        if args.profile:
            command += ["--profile-out", str(folder / f"profile-{index}-{_folder_name(preset.spec())}.txt")]
        if args.python_profile:
            command += ["--python-profile-out",
                        str(folder / f"python-profile-{index}-{_folder_name(preset.spec())}.txt")]
        print(f"== {_label(preset, args.num_processes)}", flush=True)
        with DeviceMemorySampler() as sampler:
            returncode = subprocess.run(command, env=os.environ.copy()).returncode
        if result_file.is_file():
            result = PresetResult.from_dict(json.loads(result_file.read_text()))
        else:
            result = PresetResult(preset.label, f"error: the run exited with code {returncode}")
        result.label = _label(preset, args.num_processes)
        if sampler.peak_mib is not None:
            result.peak_device_gib = sampler.peak_mib / 1024
        if result.train_window is not None:
            train_peak = sampler.peak_mib_between(*result.train_window)
            result.train_peak_device_gib = None if train_peak is None else train_peak / 1024
        results.append(result)
        print(f"   {result.status}" + (f", {result.phases.steady_it_per_s:.2f} it/s" if result.phases else ""),
              flush=True)
        _write_json(args.json, results, None)  # after every preset, so a cut-off run keeps what it measured
    card = describe_card()
    text = "\n".join([
        "card: " + ", ".join(f"{k} {v}" for k, v in card.items()),
        f"recipe: {inputs.family.label} shapes ({size}, {inputs.resolution} px), batch 1 + 1 prior "
        f"image, 12 class images (unless a preset overrides them), {args.steps} steps timed, first {args.warmup} "
        "= warm-up"
        + (f"; {args.num_processes} processes, one per GPU" if args.num_processes > 1 else ""),
        format_table(results, GUIDE_STEPS), format_parts(results, GUIDE_STEPS)])
    print("\n" + text, flush=True)
    _write_json(args.json, results, {"card": card, "table": text})
    return 0 if all(r.status == "ok" for r in results) else 1


def _write_json(path: Path | None, results, extra: dict | None) -> None:
    if path is None:
        return
    from dreamcore.fileio import atomic_write_text

    atomic_write_text(path, json.dumps({"command": sys.argv, **(extra or {}),
                                        "results": [r.to_dict() for r in results]}, indent=2) + "\n")


def _model_ready(inputs) -> bool:
    return (inputs.model / "model_index.json").is_file()


def _photos_ready(inputs) -> bool:
    from dreamcore.bench.recipe import GUIDE_PHOTOS

    return len(list(inputs.photos.glob("*.png"))) >= GUIDE_PHOTOS


def _inputs_ready(inputs) -> bool:
    """True when an earlier run under the same --work left the random model and the photos."""
    return _model_ready(inputs) and _photos_ready(inputs)


def _build_inputs(inputs) -> None:
    """The random model and the photos, each built unless an earlier run under the same --work left it."""
    from dreamcore.bench.recipe import GUIDE_PHOTOS, build_random_model, make_photos

    if not _model_ready(inputs):
        build_random_model(inputs.model, inputs.size, family=inputs.family)
    if not _photos_ready(inputs):
        make_photos(inputs.photos, GUIDE_PHOTOS, inputs.resolution)


def _run_child(preset, args: argparse.Namespace, size: str) -> int:
    from dreamcore.bench.measure import RunTimes, phases
    from dreamcore.bench.recipe import bench_inputs, recipe_config
    from dreamcore.bench.report import PresetResult
    from dreamcore.fileio import atomic_write_text

    times = RunTimes()  # started now: imports of torch/diffusers below count as start-up, as for a user
    import torch

    from dreamcore.training import TrainingError, leave_process_group, train

    output = args.work / "runs" / _folder_name(preset.spec())
    inputs = bench_inputs(args.work, get_family(args.family), size)
    config = recipe_config(preset, inputs.model, inputs.photos, output, args.steps, inputs.resolution)

    def show_logs(event) -> None:
        if event.kind == "log":
            print(("WARNING: " if event.level == "warning" else "") + event.message, flush=True)
        elif event.kind == "stage" and event.detail:
            print(f"{event.name}: {event.detail}", flush=True)

    callbacks = [times, show_logs]
    if args.profile_out is not None:
        from dreamcore.bench.profile import PROFILED_STEPS, StepProfiler, profile_start_step

        # late warm-up steps (the CUDA-graph step is recorded by then): the steady timing stays unprofiled
        callbacks.append(StepProfiler(args.profile_out, first_step=profile_start_step(args.warmup),
                                      steps=PROFILED_STEPS, label=preset.label))
    result = PresetResult(preset.label, "ok")
    python_profile = None
    if args.python_profile_out is not None:
        import cProfile

        python_profile = cProfile.Profile()
        python_profile.enable()
    try:
        train(config, callbacks=callbacks)
        leave_process_group()
    except TrainingError as error:
        result.status = "NaN" if "the loss became" in str(error) else f"error: {error}"
    except torch.cuda.OutOfMemoryError:
        result.status = "out of memory"
    finally:
        if python_profile is not None:
            python_profile.disable()
            rank = os.environ.get("RANK", "0")
            out = args.python_profile_out  # one file a process: each spends its start-up differently
            if rank != "0":
                out = out.with_name(f"{out.stem}-rank{rank}{out.suffix}")
            _write_python_profile(python_profile, out, preset.label + ("" if rank == "0" else f" (rank {rank})"))
    if os.environ.get("RANK", "0") != "0":  # only the main process receives events, times and reports
        return 0 if result.status == "ok" else 1
    result.steps = len(times.steps)
    result.train_window = times.train_window
    result.train_peak_allocated_gib = times.train_peak_allocated_gib
    result.first_losses = tuple(times.losses[:50])
    result.last_loss = times.losses[-1] if times.losses else None
    if result.status == "ok":
        result.phases = phases(times, args.warmup)
    if torch.cuda.is_available():
        result.peak_allocated_gib = torch.cuda.max_memory_allocated() / 2**30
    atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def _label(preset, processes: int) -> str:
    return preset.label + (f" x{processes} processes" if processes > 1 else "")


def _folder_name(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def _write_python_profile(profile, path: Path, label: str) -> None:
    import io
    import pstats

    from dreamcore.fileio import atomic_write_text

    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(60)
    atomic_write_text(path, f"{label}: the whole run on the host (cProfile, by cumulative time)\n{text.getvalue()}")
