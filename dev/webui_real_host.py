"""The whole WebUI flow in a real AUTOMATIC1111 checkout, offline on CPU; run before each release.

    .venv/bin/python dev/webui_real_host.py --webui ~/stable-diffusion-webui \\
        --python ~/stable-diffusion-webui/venv/bin/python [--work DIR] [--find-links WHEELS]

The checkout must be complete for an offline start: its ``repositories/`` placed as its launcher expects (the
launcher clones them only when missing), and the WebUI's Python with its requirements installed. dreamcore's
own packages come from the extension's install step, run by the WebUI itself; offline, point pip at a folder
of wheels with ``--find-links``.

Steps, each printed as PASS or FAIL with its reason:
 1. lay out a fresh data folder (``--data-dir``): a copy of this repository in ``extensions/dreamcore``, the
    tiny model for WebUIs (``tiny-model --webui``) in ``models/Stable-diffusion``, a few photos; CLIP-L's
    tokenizer and config in the checkout's ``openai/clip-vit-large-patch14`` when no copy is found (the
    WebUI reads them from there or the hub cache, never from the checkpoint);
 2. start the WebUI (``--skip-torch-cuda-test --use-cpu all --no-half --api --api-auth ...
    --no-download-sd-model``, without ``--skip-prepare-environment``) and wait for its API;
 3. the extension's install step ran under the WebUI and reported no problem;
 4. the WebUI loaded the tiny model at start;
 5. the job API asks for the WebUI's API login;
 6. a tiny job trains through ``POST /dreamcore/v1/jobs``;
 7. its model, copied into the checkpoint folder with its ``.yaml``, is selected (``POST /sdapi/v1/options``)
    and loaded (``GET /sdapi/v1/options``);
 8. ``POST /sdapi/v1/txt2img`` draws with it.
Then the WebUI is stopped and the host's versions are printed; ``--work``/result.json keeps it all.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIP_FOLDER = Path("openai") / "clip-vit-large-patch14"  # relative to the checkout: the WebUI's working folder
API_USER = "dreamcore"
JOB_PREFIX = "real-host"
# The repository without what the WebUI never needs (the tests, dev tools, virtual environments).
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv*", "tests", "dev", "test-artifacts", "__pycache__",
                                     "*.egg-info", ".pytest_cache", "demo-output")
TINY_JOB = {"resolution": 64, "max_train_steps": 4, "train_batch_size": 1, "learning_rate": 1e-4,
            "lr_warmup_steps": 0, "mixed_precision": "no", "use_8bit_adam": False, "save_interval": 0,
            "checkpointing_steps": 0, "n_save_sample": 1, "save_infer_steps": 2, "prepare_photos": False,
            "instance_prompt": "photo of sks dog"}
HOST_PACKAGES = ("torch", "gradio", "fastapi", "pydantic", "transformers", "diffusers", "accelerate", "peft",
                 "huggingface-hub", "safetensors", "Pillow", "numpy")


@dataclass
class Verdict:
    step: str
    ok: bool
    reason: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.step}: {self.reason}"


class StepFailed(Exception):
    """A step's failure; the steps after it cannot run."""


# --- talking to the WebUI ---------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    body: Any  # parsed JSON, or the text when it is not JSON


class WebUIClient:
    """JSON requests to the WebUI's API, with its --api-auth login as HTTP Basic (as dreamcore's routes ask)."""

    def __init__(self, base_url: str, login: tuple[str, str] | None, timeout: float = 600):
        self.base_url = base_url.rstrip("/")
        self.login = login
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, login: bool = True) -> Answer:
        request = build_request(self.base_url, method, path, body, self.login if login else None)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(response.status, _parse(response.read()))
        except urllib.error.HTTPError as error:
            return Answer(error.code, _parse(error.read()))

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, body=body if body is not None else {}, **kw)


def build_request(base_url: str, method: str, path: str, body: Any,
                  login: tuple[str, str] | None) -> urllib.request.Request:
    """A request the WebUI and dreamcore's checks accept: JSON bodies typed as JSON, Basic login if any."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if login is not None:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    return urllib.request.Request(base_url + path, data=data, method=method, headers=headers)


def _parse(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def detail(answer: Answer) -> str:
    """The readable part of an error answer (the WebUI wraps ours as {"error": ..., "detail": {...}})."""
    body = answer.body
    if isinstance(body, dict) and "detail" in body:
        inner = body["detail"]
        if isinstance(inner, dict):
            return "; ".join([str(inner.get("message", ""))] + [str(p) for p in inner.get("problems", [])])
        return str(inner)
    return str(body)[:500]


# --- verdicts (pure: tested without a WebUI) ---------------------------------------------------------------
def title_name(title: str) -> str:
    """A checkpoint title without the " [shorthash]" the WebUI appends once the file is hashed."""
    return re.sub(r"\s*\[[0-9a-f]{8,10}\]$", "", title or "")


def find_checkpoint(sd_models: Any, filename: Path) -> dict | None:
    """The entry of GET /sdapi/v1/sd-models for this file, if listed."""
    for entry in sd_models if isinstance(sd_models, list) else []:
        if Path(str(entry.get("filename", ""))).resolve() == filename.resolve():
            return entry
    return None


def loaded_verdict(step: str, options: Answer, wanted_title: str) -> Verdict:
    """Whether GET /sdapi/v1/options says the WebUI has ``wanted_title`` loaded (it keeps the old value when a
    load fails)."""
    if options.status != 200 or not isinstance(options.body, dict):
        return Verdict(step, False, f"GET /sdapi/v1/options answered {options.status}: {detail(options)}")
    current = options.body.get("sd_model_checkpoint")
    if title_name(str(current)) != title_name(wanted_title):
        return Verdict(step, False, f"the WebUI has {current!r} loaded, not {wanted_title!r}; its console shows "
                                    "why the load failed")
    return Verdict(step, True, f"loaded: {current}")


def job_verdict(job: dict) -> Verdict:
    status = job.get("status")
    if status == "completed" and job.get("outputs", {}).get("single_file"):
        return Verdict("train", True, f"job {job['name']} completed {job.get('step')} steps: "
                                      f"{job['outputs']['single_file']}")
    reason = f"job {job.get('name')} ended {status}"
    if job.get("error"):
        reason += f": {job['error']}"
    if job.get("advice"):
        reason += f" ({job['advice']})"
    if status == "completed":
        reason += ", without a single-file model"
    tail = job.get("log_tail") or []
    return Verdict("train", False, reason + ("\n    log: " + "\n    log: ".join(tail[-8:]) if tail else ""))


def txt2img_verdict(answer: Answer, wanted_title: str, size: int) -> tuple[Verdict, bytes | None]:
    """Whether txt2img drew a picture of the asked size with the wanted model (its info names the model)."""
    if answer.status != 200 or not isinstance(answer.body, dict):
        return Verdict("txt2img", False, f"answered {answer.status}: {detail(answer)}"), None
    images = answer.body.get("images") or []
    if not images:
        return Verdict("txt2img", False, "answered 200 without an image"), None
    png = base64.b64decode(images[0].split(",", 1)[-1])
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        drawn = image.size
    try:
        info = json.loads(answer.body.get("info") or "{}")
    except ValueError:
        info = {}
    used = str(info.get("sd_model_name", ""))
    wanted = Path(title_name(wanted_title)).stem
    if drawn != (size, size):
        return Verdict("txt2img", False, f"drew {drawn[0]}x{drawn[1]}, asked for {size}x{size}"), png
    if used != wanted:
        return Verdict("txt2img", False, f"drew with model {used!r}, not {wanted!r}"), png
    return Verdict("txt2img", True, f"a {size}x{size} picture from {used}"), png


# --- the steps --------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """Where this run's files are."""

    webui: Path  # the checkout
    data: Path  # --data-dir: models, extensions, outputs, config
    work: Path

    @property
    def checkpoints(self) -> Path:
        return self.data / "models" / "Stable-diffusion"

    @property
    def extension(self) -> Path:
        return self.data / "extensions" / "dreamcore"

    @property
    def photos(self) -> Path:  # in dreamcore's output folder: a folder the job API allows
        return self.data / "outputs" / "dreamcore" / "real-host-photos"


def prepare(layout: Layout, python: Path) -> Verdict:
    problems = []
    if not (layout.webui / "launch.py").is_file():
        problems.append(f"{layout.webui} has no launch.py: give an AUTOMATIC1111 checkout")
    if not (layout.webui / "repositories").is_dir():
        problems.append(f"{layout.webui / 'repositories'} is missing: place the repositories the launcher "
                        "clones (offline it cannot)")
    if not python.is_file():
        problems.append(f"{python} does not exist: give the WebUI's Python (its venv/bin/python)")
    if problems:
        raise StepFailed("; ".join(problems))
    if layout.data.exists():
        raise StepFailed(f"{layout.data} exists: give a --work folder of a fresh run")
    shutil.copytree(REPO_ROOT, layout.extension, ignore=COPY_IGNORE)
    layout.checkpoints.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "dreamcore", "tiny-model", "--webui",
                    str(layout.checkpoints / "tiny-sd1-webui.safetensors")], check=True, cwd=REPO_ROOT,
                   capture_output=True, text=True)
    make_photos(layout.photos)
    clip = clip_files(layout.webui)
    return Verdict("prepare", True, f"data folder {layout.data}; extension copied; tiny model and photos placed; "
                                    f"{clip}")


def clip_files(webui: Path) -> str:
    """CLIP-L's tokenizer and text config where the offline WebUI finds them."""
    folder = webui / CLIP_FOLDER
    if folder.is_dir():
        return f"CLIP-L files found in {folder}"
    from dreamcore.assets import CONFIGS_DIR, TOKENIZER_DIR

    shutil.copytree(TOKENIZER_DIR, folder)
    shutil.copyfile(CONFIGS_DIR / "sd1" / "text_encoder" / "config.json", folder / "config.json")
    return f"CLIP-L tokenizer and config written to {folder} from dreamcore's own copies"


def make_photos(folder: Path, count: int = 3) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    for index in range(count):
        image = Image.new("RGB", (64, 64), (40 * index, 120, 200 - 40 * index))
        ImageDraw.Draw(image).ellipse((12, 16, 52, 56), fill=(150, 110, 70))  # a brown blob, a "dog"
        image.save(folder / f"dog{index}.png")


def launch_command(python: Path, data: Path, port: int, login: tuple[str, str]) -> list[str]:
    """How the WebUI starts here: offline on the CPU, its API on, its install step (prepare_environment) run."""
    return [str(python), "launch.py", "--data-dir", str(data), "--port", str(port), "--skip-torch-cuda-test",
            "--use-cpu", "all", "--no-half", "--disable-nan-check", "--api", "--api-auth", f"{login[0]}:{login[1]}",
            "--api-server-stop", "--no-download-sd-model"]


def launch_environment(base: dict[str, str], find_links: Path | None) -> dict[str, str]:
    env = dict(base, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    if find_links is not None:  # pip (the extension's install step) takes wheels from there, never the index
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(find_links))
    return env


def wait_for_api(client: WebUIClient, process: subprocess.Popen, log: Path, timeout: float) -> Verdict:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise StepFailed(f"the WebUI exited ({process.returncode}) before its API answered:\n"
                             + _tail(log))
        try:
            if client.get("/sdapi/v1/sd-models").status == 200:
                return Verdict("start", True, f"API up after {time.monotonic() - started:.0f} s")
        except OSError:
            pass  # not listening yet
        time.sleep(2)
    raise StepFailed(f"no answer from {client.base_url}/sdapi/v1/sd-models within {timeout:.0f} s:\n" + _tail(log))


def install_step(layout: Layout) -> Verdict:
    report = layout.extension / ".dreamcore-install.json"
    if not report.is_file():
        return Verdict("install step", False, f"{report} was not written: the WebUI did not run install.py")
    data = json.loads(report.read_text(encoding="utf-8"))
    if data.get("messages"):
        return Verdict("install step", False, " / ".join(data["messages"]))
    return Verdict("install step", True, f"installed {', '.join(data.get('installed') or []) or 'nothing (all present)'}"
                                         f" into {data.get('python')}")


def base_loaded(client: WebUIClient, layout: Layout, timeout: float = 300) -> tuple[Verdict, str]:
    """The WebUI loads a model at start (in the background): wait until its options name the tiny one."""
    listed = client.get("/sdapi/v1/sd-models")
    entry = find_checkpoint(listed.body, layout.checkpoints / "tiny-sd1-webui.safetensors")
    if entry is None:
        raise StepFailed(f"GET /sdapi/v1/sd-models does not list the tiny model: {str(listed.body)[:400]}")
    deadline = time.monotonic() + timeout
    verdict = loaded_verdict("base model loaded", client.get("/sdapi/v1/options"), entry["title"])
    while not verdict.ok and time.monotonic() < deadline:
        time.sleep(3)
        verdict = loaded_verdict("base model loaded", client.get("/sdapi/v1/options"), entry["title"])
    return verdict, entry["title"]


def login_checked(client: WebUIClient) -> Verdict:
    without = client.get("/dreamcore/v1/jobs", login=False)
    with_login = client.get("/dreamcore/v1/jobs")
    if without.status == 401 and with_login.status == 200:
        return Verdict("API login", True, "401 without the WebUI's --api-auth login, 200 with it")
    return Verdict("API login", False, f"without login {without.status} (want 401), with it {with_login.status} "
                                       f"(want 200): {detail(with_login)}")


def train_job(client: WebUIClient, layout: Layout, name: str, timeout: float) -> tuple[Verdict, dict]:
    config = dict(TINY_JOB, pretrained_model_name_or_path=str(layout.checkpoints / "tiny-sd1-webui.safetensors"),
                  instance_data_dir=str(layout.photos))
    submitted = client.post("/dreamcore/v1/jobs", {"name": name, "config": config})
    if submitted.status != 201:
        raise StepFailed(f"POST /dreamcore/v1/jobs answered {submitted.status}: {detail(submitted)}")
    deadline = time.monotonic() + timeout
    job = submitted.body
    while job.get("status") in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(2)
        answer = client.get(f"/dreamcore/v1/jobs/{name}")
        if answer.status != 200:
            raise StepFailed(f"GET /dreamcore/v1/jobs/{name} answered {answer.status}: {detail(answer)}")
        job = answer.body
    if job.get("status") in ("queued", "running"):
        client.post(f"/dreamcore/v1/jobs/{name}/cancel")
        return Verdict("train", False, f"job {name} still {job['status']} after {timeout:.0f} s; cancelled"), job
    return job_verdict(job), job


def select_trained(client: WebUIClient, layout: Layout, job: dict) -> tuple[Verdict, str]:
    """Copy the job's model (with its .yaml and card) into the checkpoint folder, refresh, select, check."""
    exported = Path(job["outputs"]["single_file"])
    target = layout.checkpoints / "dreamcore" / exported.name
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".yaml", ".json"):
        if exported.with_suffix(suffix).is_file():
            shutil.copyfile(exported.with_suffix(suffix), target.with_suffix(suffix))
    if not target.with_suffix(".yaml").is_file():
        raise StepFailed(f"{exported.with_suffix('.yaml')} is missing: the trained model lost its base's .yaml")
    refreshed = client.post("/sdapi/v1/refresh-checkpoints")
    if refreshed.status != 200:
        raise StepFailed(f"POST /sdapi/v1/refresh-checkpoints answered {refreshed.status}: {detail(refreshed)}")
    entry = find_checkpoint(client.get("/sdapi/v1/sd-models").body, target)
    if entry is None:
        raise StepFailed(f"{target} is not in GET /sdapi/v1/sd-models after a refresh")
    chosen = client.post("/sdapi/v1/options", {"sd_model_checkpoint": entry["title"]})
    if chosen.status != 200:
        return Verdict("select", False, f"POST /sdapi/v1/options answered {chosen.status}: {detail(chosen)}"), \
            entry["title"]
    return loaded_verdict("select", client.get("/sdapi/v1/options"), entry["title"]), entry["title"]


def txt2img(client: WebUIClient, title: str, work: Path) -> Verdict:
    answer = client.post("/sdapi/v1/txt2img", {
        "prompt": TINY_JOB["instance_prompt"], "negative_prompt": "", "steps": 2, "width": 64, "height": 64,
        "cfg_scale": 7, "seed": 1, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
        "override_settings": {"sd_model_checkpoint": title}})
    verdict, png = txt2img_verdict(answer, title, 64)
    if png is not None:
        (work / "txt2img.png").write_bytes(png)
    return verdict


def host_versions(python: Path, webui: Path) -> dict[str, str]:
    """The checkout's git version and the WebUI Python's packages."""
    described = subprocess.run(["git", "-C", str(webui), "describe", "--tags", "--always", "--dirty"],
                               capture_output=True, text=True)
    script = ("import json, sys, importlib.metadata as m\n"
              "def v(n):\n try: return m.version(n)\n except m.PackageNotFoundError: return '(absent)'\n"
              f"print(json.dumps({{'python': sys.version.split()[0], **{{n: v(n) for n in {list(HOST_PACKAGES)!r}}}}}))")
    versions = {"webui": described.stdout.strip() or f"(git describe failed: {described.stderr.strip()})"}
    if not python.is_file():
        return {**versions, "packages": f"(no Python at {python})"}
    packages = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    versions.update(json.loads(packages.stdout) if packages.returncode == 0 else
                    {"packages": f"(could not be read: {packages.stderr.strip()[-300:]})"})
    return versions


def run_api_steps(client: WebUIClient, layout: Layout, job_name: str, train_timeout: float,
                  report: Callable[[Verdict], None]) -> None:
    """Steps 3-8, against a WebUI whose API answers; raises StepFailed when one cannot go on."""
    report(install_step(layout))
    verdict, _base_title = base_loaded(client, layout)
    report(verdict)
    report(login_checked(client))
    verdict, job = train_job(client, layout, job_name, train_timeout)
    report(verdict)
    if not verdict.ok:
        raise StepFailed("no trained model to select")
    verdict, title = select_trained(client, layout, job)
    report(verdict)
    report(txt2img(client, title, layout.work))


def _tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


def stop(client: WebUIClient, process: subprocess.Popen) -> str:
    try:
        client.post("/sdapi/v1/server-stop")
    except OSError:
        pass  # it closes the connection as it stops
    try:
        process.wait(timeout=60)
        return "stopped through /sdapi/v1/server-stop"
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(timeout=30)
        return "did not stop through /sdapi/v1/server-stop within 60 s; terminated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webui", type=Path, required=True, help="the AUTOMATIC1111 checkout")
    parser.add_argument("--python", type=Path, required=True, help="the WebUI's Python (e.g. its venv/bin/python)")
    parser.add_argument("--work", type=Path, default=None, help="folder for this run (default: a new temporary folder)")
    parser.add_argument("--port", type=int, default=7899)
    parser.add_argument("--find-links", type=Path, default=None, help="a folder of wheels for the install step")
    parser.add_argument("--start-timeout", type=float, default=1800, help="seconds for the first start")
    parser.add_argument("--train-timeout", type=float, default=1200)
    args = parser.parse_args(argv)

    work = (args.work or Path(tempfile.mkdtemp(prefix="dreamcore-real-host-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    layout = Layout(webui=args.webui.resolve(), data=work / "data", work=work)
    login = (API_USER, secrets.token_urlsafe(12))
    client = WebUIClient(f"http://127.0.0.1:{args.port}", login)
    verdicts: list[Verdict] = []

    def report(verdict: Verdict) -> None:
        verdicts.append(verdict)
        print(verdict.line(), flush=True)

    process = None
    log = work / "webui.log"
    try:
        report(prepare(layout, args.python))
        command = launch_command(args.python, layout.data, args.port, login)
        print("starting: " + " ".join(command).replace(login[1], "***"), flush=True)
        with log.open("w", encoding="utf-8") as log_file:
            process = subprocess.Popen(command, cwd=layout.webui, stdout=log_file, stderr=subprocess.STDOUT,
                                       env=launch_environment(dict(os.environ), args.find_links))
        report(wait_for_api(client, process, log, args.start_timeout))
        run_api_steps(client, layout, f"{JOB_PREFIX}-{time.strftime('%Y%m%d-%H%M%S')}", args.train_timeout, report)
    except StepFailed as error:
        report(Verdict("stopped", False, str(error)))
    finally:
        if process is not None:
            print(f"WebUI {stop(client, process)}; its log: {log}", flush=True)
    versions = host_versions(args.python, layout.webui)
    print("host versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    passed = bool(verdicts) and all(v.ok for v in verdicts)
    print(f"VERDICT: {'PASS' if passed else 'FAIL'} ({sum(v.ok for v in verdicts)}/{len(verdicts)} steps passed)")
    (work / "result.json").write_text(json.dumps({
        "passed": passed, "date": time.strftime("%Y-%m-%d"), "versions": versions,
        "command": " ".join(launch_command(args.python, layout.data, args.port, (API_USER, "***"))),
        "steps": [asdict(v) for v in verdicts]}, indent=2) + "\n", encoding="utf-8")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
