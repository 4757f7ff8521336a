"""Likeness in the quality lab: train dreamcore (and diffusers' train_dreambooth.py beside it) on lab subjects,
score every run with the lab's evaluator, and write one table.

The lab is a folder (its README says what it is): ``lab.py``, ``models.py``, ``synth.py`` and ``base/``, the
parts of a tar holding a tiny SD-layout model (``ret_pipe``) and the evaluator (``evaluator.pt``). This script
takes that folder as its first argument and names no path outside the repository.

    python dev/quality_lab.py LAB --work /tmp/qlab --reference train_dreambooth.py \\
        --subjects 5 6 7 --seeds 1 2 --variants reference exact default default-8GB lora --jobs 14

Every run trains at the lab's scale of the guide's recipe: 64 px, batch 1, prior preservation with the same class
images, lr constant, 800 steps; the guide's text encoder training and lr 5e-5 (its 1e-6) come with the variant:
"reference" (diffusers' script), "exact" and "guide" (dreamcore) take them, "default" takes dreamcore's
default recipe at the lab's scale. ``--variant NAME="--flag value ..."`` defines a variant on the command line:
the guide's flags plus the given ones (or, if they name --learning_rate, the given ones alone). Results go to WORK/results.jsonl, one
line a run; a run already there is not repeated, so a second call adds variants to the same table. The table
(mean and standard deviation over subjects x seeds) is printed and written to WORK/table.md.

Runs are separate processes, ``--jobs`` at a time: the model is tiny, so one GPU trains a dozen at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # dreamcore, from this checkout
INSTANCE_PROMPT = "a photo of sks person"
CLASS_PROMPT = "a photo of a person"
PHOTOS_PER_SUBJECT = 5
METRICS = ("fidelity", "prompt", "pres", "cat", "div")

# The lab's scale of the guide's recipe, for both trainers: the lab's learning rate stands for the guide's 1e-6
# (SD1.5 at 512 px); learning rates do not transfer, ratios to it do (the lab's README).
LAB_GUIDE_LR = 5e-5
LAB_RECIPE = {"resolution": 64, "train_batch_size": 1, "lr_scheduler": "constant", "lr_warmup_steps": 0,
              "max_train_steps": 800, "num_class_images": 100}
GUIDE_FLAGS = ["--train_text_encoder", "--learning_rate", str(LAB_GUIDE_LR)]


def lab_learning_rate(sd_rate: float) -> str:
    """A learning rate of dreamcore's at SD1.5 scale, in the lab's (the same ratio to the guide's rate)."""
    from dreamcore.config import GUIDE_LEARNING_RATE

    return f"{sd_rate / GUIDE_LEARNING_RATE * LAB_GUIDE_LR:g}"


def default_flags() -> list[str]:
    """dreamcore's default recipe: nothing but its default learning rate, carried to the lab's scale."""
    from dreamcore.config import DEFAULT_LEARNING_RATE

    return ["--learning_rate", lab_learning_rate(DEFAULT_LEARNING_RATE)]


EXACT = ["--memory_preset", "none", "--mixed_precision", "no"]  # fp32 weights and AdamW, as the reference runs
# Named variants: dreamcore flags added to the lab recipe ("reference" is diffusers' script itself, which gets
# the guide's flags). A variant defined with --variant gets the guide's flags unless it names its own rate.
VARIANTS: dict[str, list[str]] = {
    "reference": GUIDE_FLAGS,
    # the guide's flags on dreamcore's exact path, as dreamcore trained them before its default recipe
    "exact": [*GUIDE_FLAGS, *EXACT, "--no-train_token_embedding"],
    # the guide's flags as dreamcore runs them now (memory_preset auto on a GPU)
    "guide": GUIDE_FLAGS,
    # dreamcore's default recipe: what `dreamcore train` does with nothing but photos, prompts and prior
    # preservation (memory_preset auto on a GPU: the 16GB tier on a large card)
    "default": default_flags(),
    "default-exact": [*default_flags(), *EXACT],
    "default-24GB": [*default_flags(), "--memory_preset", "24GB"],
    "default-16GB": [*default_flags(), "--memory_preset", "16GB"],
    "default-12GB": [*default_flags(), "--memory_preset", "12GB"],
    "default-8GB": [*default_flags(), "--memory_preset", "8GB"],
    # LoRA with its defaults; its rate in the lab, as LoRA presets' 1e-4 is in practice, is set by hand
    "lora": ["--use_lora", "--train_text_encoder", "--learning_rate", "5e-4"],
}


@dataclass(frozen=True)
class Run:
    variant: str
    subject: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}/s{self.subject}-seed{self.seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", type=Path, help="the quality lab's folder (lab.py, base/)")
    parser.add_argument("--work", type=Path, required=True, help="working folder: models, subjects, runs, results")
    parser.add_argument("--reference", type=Path, help="diffusers' examples/dreambooth/train_dreambooth.py, for "
                                                         "the 'reference' variant")
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3], help="subject seeds (1-100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="training seeds")
    parser.add_argument("--variants", nargs="+", default=["reference", "exact", "default"],
                        help=f"variants to run: {', '.join(VARIANTS)}, or names given with --variant")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                        help="define a variant: dreamcore flags added to the lab recipe")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 2),
                        help="runs at once (each is a process)")
    parser.add_argument("--samples", type=int, default=64, help="samples a prompt when scoring (the lab's 64)")
    parser.add_argument("--class-images", type=int, default=LAB_RECIPE["num_class_images"],
                        help="class images generated once and used by every run")
    parser.add_argument("--steps", type=int, default=LAB_RECIPE["max_train_steps"], help="training steps a run")
    parser.add_argument("--keep", action="store_true", help="keep each run's trained model (default: delete it "
                                                           "once scored; its config and log stay)")
    parser.add_argument("--score-every", type=int, default=0, metavar="N",
                        help="also score dreamcore's checkpoints every N steps (full fine-tuning; rows VARIANT@STEP), "
                             "to see where along the run the likeness is best (default 0: the final model only)")
    parser.add_argument("--only-table", action="store_true", help="print the table of the results so far")
    args = parser.parse_args(argv)

    variants = dict(VARIANTS)
    for definition in args.variant:
        name, _, flags = definition.partition("=")
        if not name or not flags:
            parser.error(f"--variant {definition!r}: write NAME=\"--flag value ...\"")
        flags = shlex.split(flags)
        variants[name] = flags if "--learning_rate" in flags else [*GUIDE_FLAGS, *flags]
    unknown = [v for v in args.variants if v not in variants]
    if unknown and not args.only_table:
        parser.error(f"unknown variants {', '.join(unknown)}; known: {', '.join(variants)}")
    if "reference" in args.variants and not args.only_table and (args.reference is None or
                                                                  not args.reference.is_file()):
        parser.error("the reference variant needs --reference, the path of diffusers' train_dreambooth.py")
    reference = args.reference.resolve() if args.reference else None
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_file = work / "results.jsonl"
    if args.only_table:
        print(write_table(results_file, work / "table.md", args.variants))
        return 0

    recipe = {**LAB_RECIPE, "max_train_steps": args.steps, "num_class_images": args.class_images}
    if args.score_every:  # a checkpoint every N steps, with one cheap sample (samples are not scored)
        recipe.update(save_interval=args.score_every, n_save_sample=1, save_infer_steps=5)
    lab = Lab(args.lab.resolve(), work, recipe)
    lab.prepare(args.subjects, args.class_images)
    done = {(r["variant"], r["subject"], r["seed"]) for r in read_results(results_file)}
    # subject and seed outermost: a call cut short has the same runs of every variant
    runs = [Run(v, s, seed) for s in args.subjects for seed in args.seeds for v in args.variants
            if (v, s, seed) not in done]
    print(f"{len(runs)} runs to do ({len(done)} already in {results_file}), {args.jobs} at a time", flush=True)
    started = time.perf_counter()

    def do(run: Run) -> None:
        for result in lab.train_and_score(run, variants[run.variant], reference, args.samples, args.keep):
            with open(results_file, "a", encoding="utf-8") as out:
                out.write(json.dumps(result) + "\n")
            shown = " ".join(f"{k}={result[k]}" for k in METRICS if k in result) or result.get("error", "")
            print(f"[{time.perf_counter() - started:6.0f} s] {result['variant']}/s{run.subject}-seed{run.seed}: "
                  f"{shown}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(do, run) for run in runs]:
            future.result()
    print(write_table(results_file, work / "table.md", args.variants))
    return 0


class Lab:
    """The lab's folder and the working folder: the base model, the subjects, the shared class images."""

    def __init__(self, folder: Path, work: Path, recipe: dict):
        self.folder, self.work, self.recipe = folder, work, recipe
        self.base = work / "base"  # the lab's model in fp32 (both trainers load it; see prepare)
        self.evaluator = work / "lab-base" / "evaluator.pt"
        self.class_dir = work / "class-person"

    def prepare(self, subjects: list[int], class_images: int) -> None:
        parts = sorted((self.folder / "base").glob("lab-base.tar.part-*"))
        if not parts:
            raise SystemExit(f"{self.folder}/base has no lab-base.tar.part-* files: is {self.folder} the lab?")
        if not self.evaluator.is_file():
            unpacked = self.work / "lab-base"
            unpacked.mkdir(exist_ok=True)
            joined = self.work / "lab-base.tar"
            with open(joined, "wb") as out:
                for part in parts:
                    out.write(part.read_bytes())
            with tarfile.open(joined) as tar:
                tar.extractall(unpacked, filter="data")
            joined.unlink()
        if not (self.base / "model_index.json").is_file():
            # The lab's model is stored in fp16. diffusers' script refuses a text encoder that loads in fp16 (as
            # transformers 5 loads it), so both trainers start from the same weights cast to fp32.
            self._python(["-c", "import sys, torch; from diffusers import StableDiffusionPipeline; "
                          "StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, "
                          "torch_dtype=torch.float32).save_pretrained(sys.argv[2])",
                          str(self.work / "lab-base" / "ret_pipe"), str(self.base)], self.work / "base.log")
        for subject in subjects:
            folder = self.subject_dir(subject)
            if not (folder / "identity.json").is_file():
                self._python([str(self.folder / "lab.py"), "instance", str(folder), str(PHOTOS_PER_SUBJECT),
                              str(subject)], self.work / f"subject-{subject}.log")
        if len(list(self.class_dir.glob("*.png"))) < class_images:
            print(f"generating {class_images} class images in {self.class_dir}", flush=True)
            self._python(["-c", _CLASS_IMAGES, str(self.base), str(self.class_dir), CLASS_PROMPT, str(class_images)],
                         self.work / "class-images.log")

    def subject_dir(self, subject: int) -> Path:
        return self.work / "subjects" / f"subject-{subject}"

    def train_and_score(self, run: Run, flags: list[str], reference: Path | None, samples: int,
                        keep: bool) -> list[dict]:
        """The run's result (its final model), then one a scored checkpoint (variant VARIANT@STEP)."""
        out = self.work / "runs" / run.variant / f"s{run.subject}-seed{run.seed}"
        out.parent.mkdir(parents=True, exist_ok=True)
        result: dict = {"variant": run.variant, "subject": run.subject, "seed": run.seed, "flags": flags}
        log = out.parent / f"{out.name}.log"
        started = time.perf_counter()
        if run.variant == "reference":
            command = [str(reference), *self._reference_flags(run, out)]
        else:
            command = ["-m", "dreamcore", "train", *self._dreamcore_flags(run, out), *flags]
        if self._python(command, log, check=False) is None:
            result["error"] = f"training failed: see {log}"
            return [result]
        result["train_s"] = round(time.perf_counter() - started, 1)
        pipeline, lora = self._trained_model(run, out, flags)
        result.update(self._score(run, pipeline, lora, samples, out.parent / f"{out.name}.eval.log"))
        results = [result]
        if run.variant != "reference" and lora is None:
            for step, checkpoint in self._checkpoints(out):
                folder = out / f"checkpoint-{step}"
                scored = {"variant": f"{run.variant}@{step}", "subject": run.subject, "seed": run.seed,
                          "flags": flags, "step": step}
                if self._python(["-m", "dreamcore", "convert", str(checkpoint), str(folder)],
                                out.parent / f"{out.name}.convert-{step}.log", check=False) is None:
                    scored["error"] = f"conversion failed: see {out.parent / (out.name + f'.convert-{step}.log')}"
                else:
                    scored.update(self._score(run, folder, None, samples,
                                              out.parent / f"{out.name}.eval-{step}.log"))
                results.append(scored)
        if not keep:
            for heavy in [out / "diffusers", *out.glob("*.safetensors"), out / "checkpoints", out / "unet",
                          out / "text_encoder", out / "vae", *out.glob("checkpoint-*")]:
                subprocess.run(["rm", "-rf", str(heavy)], check=False)
        return results

    def _score(self, run: Run, pipeline: Path, lora: Path | None, samples: int, log: Path) -> dict:
        """The lab's metrics of one model (or {"error": ...})."""
        started = time.perf_counter()
        env = {"LAB_LORA": str(lora)} if lora else {}
        output = self._python([str(self.folder / "lab.py"), "eval", str(pipeline), str(self.evaluator),
                               str(self.subject_dir(run.subject) / "identity.json"), str(samples)],
                              log, check=False, env=env, capture=True)
        scores = [line for line in (output or "").splitlines() if line.startswith("LAB ")]
        if not scores:
            return {"error": f"scoring failed: see {log}"}
        return {**json.loads(scores[-1][4:]), "eval_s": round(time.perf_counter() - started, 1)}

    @staticmethod
    def _checkpoints(out: Path) -> list[tuple[int, Path]]:
        """The run's step checkpoints (single files), (step, file), in step order."""
        found = []
        for path in (out / "checkpoints").glob("*-step-*.safetensors"):
            found.append((int(path.stem.rsplit("-step-", 1)[1]), path))
        return sorted(found)

    def _dreamcore_flags(self, run: Run, out: Path) -> list[str]:
        flags = ["--pretrained_model_name_or_path", str(self.base),
                 "--instance_data_dir", str(self.subject_dir(run.subject)), "--instance_prompt", INSTANCE_PROMPT,
                 "--with_prior_preservation", "--class_prompt", CLASS_PROMPT, "--class_data_dir", str(self.class_dir),
                 "--seed", str(run.seed), "--output_dir", str(out), "--checkpointing_steps", "0"]
        for key, value in self.recipe.items():
            flags += [f"--{key}", str(value)]
        return flags

    def _reference_flags(self, run: Run, out: Path) -> list[str]:
        flags = ["--pretrained_model_name_or_path", str(self.base),
                 "--instance_data_dir", str(self._photos_only(run.subject)), "--instance_prompt", INSTANCE_PROMPT,
                 "--with_prior_preservation", "--class_prompt", CLASS_PROMPT, "--class_data_dir", str(self.class_dir),
                 "--seed", str(run.seed), "--output_dir", str(out), "--checkpointing_steps", "1000000",
                 *GUIDE_FLAGS]
        for key, value in self.recipe.items():
            flags += [f"--{key}", str(value)]
        return flags

    def _photos_only(self, subject: int) -> Path:
        """The subject's photos without identity.json (diffusers' script reads every file of the folder)."""
        folder = self.work / "subjects" / f"photos-{subject}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for photo in self.subject_dir(subject).glob("*.png"):
                (folder / photo.name).symlink_to(photo)
        return folder

    def _trained_model(self, run: Run, out: Path, flags: list[str]) -> tuple[Path, Path | None]:
        """(pipeline folder to score, LoRA file to load on it or None)."""
        if run.variant == "reference":
            return out, None
        if "--use_lora" in flags:
            return self.base, out / f"{out.name}.safetensors"
        return out / "diffusers", None

    def _python(self, arguments: list[str], log: Path, check: bool = True, env: dict[str, str] | None = None,
                capture: bool = False) -> str | None:
        """Run python with ``arguments``, output to ``log``; its output when ``capture``, None on failure."""
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
                       **(env or {})}
        completed = subprocess.run([sys.executable, *arguments], cwd=self.work, env=environment, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log.write_text(completed.stdout)
        if completed.returncode != 0:
            if check:
                raise SystemExit(f"{' '.join(arguments[:3])}... failed (exit {completed.returncode}); see {log}")
            return None
        return completed.stdout if capture else ""


# Class images from the lab's base model with dreamcore's own generator (the same images for every run).
_CLASS_IMAGES = """
import sys, torch
from pathlib import Path
from dreamcore.models import load_base_model, build_pipeline
from dreamcore.training.class_images import generate_class_images, missing_class_images
base, folder, prompt, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
device = "cuda" if torch.cuda.is_available() else "cpu"
pipeline = build_pipeline(load_base_model(base)).to(device)
_, indices = missing_class_images(folder, prompt, count, print)
generate_class_images(pipeline, folder, prompt, "", indices, 16, 0, 7.5, 30, 64, lambda n: None, None)
"""


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_table(results_file: Path, table_file: Path, order: list[str]) -> str:
    """Mean and standard deviation of each metric per variant, over its runs (subjects x seeds)."""
    results = read_results(results_file)
    by_variant: dict[str, list[dict]] = {}
    for result in results:
        by_variant.setdefault(result["variant"], []).append(result)
    def with_checkpoints(variant: str) -> list[str]:
        steps = sorted((int(name.rsplit("@", 1)[1]), name) for name in by_variant
                       if name.rsplit("@", 1)[0] == variant and "@" in name)
        return [variant, *(name for _, name in steps)]

    listed = [name for v in order for name in with_checkpoints(v) if name in by_variant]
    names = listed + [v for v in by_variant if v not in listed]
    lines = ["| variant | runs | " + " | ".join(METRICS) + " | train s |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    for name in names:
        scored = [r for r in by_variant[name] if "fidelity" in r]
        failed = len(by_variant[name]) - len(scored)
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in scored]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        train = [r["train_s"] for r in scored if "train_s" in r]
        runs = f"{len(scored)}" + (f" ({failed} failed)" if failed else "")
        train_cell = f"{statistics.mean(train):.0f}" if train else "-"
        lines.append(f"| {name} | {runs} | " + " | ".join(cells) + f" | {train_cell} |")
    subjects = sorted({r["subject"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    table = "\n".join(lines) + f"\n\nsubjects {subjects}, training seeds {seeds}; mean ± standard deviation over runs\n"
    table_file.write_text(table, encoding="utf-8")
    return table


if __name__ == "__main__":
    sys.exit(main())
