"""dreamcore.console: the libraries' known notices, FutureWarnings and bars are dropped, nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from dreamcore.console import KNOWN_NOTICES, KnownNoticeFilter, format_duration

ROOT = Path(__file__).resolve().parents[1]

# Each line as its library words it (diffusers 0.3x, transformers 5, bitsandbytes 0.4x).
FLOAT32_EMPTY = ("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting directly "
                 "with `to()` can lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead.")
FLOAT32_SOME = FLOAT32_EMPTY.replace("[]", "['conv_in']")
TORCHVISION = ("`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` "
               "for backward compatibility.")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "DREAMCORE_LIBRARY_WARNINGS"}
    environment.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=300)


NOISE = textwrap.dedent(f"""
    import logging, sys, types, warnings
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("diffusers.models.modeling_utils").warning({FLOAT32_EMPTY!r})
    logging.getLogger("diffusers.models.modeling_utils").warning({FLOAT32_SOME!r})
    logging.getLogger("transformers.utils.import_utils").warning({TORCHVISION!r})
    logging.getLogger("transformers.modeling_utils").warning("Some weights were not used: ['x']")
    logging.getLogger("dreamcore.training").warning("dreamcore's own warning")
    warnings.warn_explicit("torch.cuda.amp.autocast(args...) is deprecated", FutureWarning,
                           "/venv/lib/site-packages/torch/amp.py", 1, module="torch.amp")
    warnings.warn_explicit("a future change of dreamcore's own", FutureWarning, "/repo/dreamcore/x.py", 1,
                           module="dreamcore.x")
    warnings.warn_explicit("a library's user warning", UserWarning, "/venv/lib/site-packages/torch/x.py", 1,
                           module="torch.x")
""")
QUIET = "from dreamcore.console import quiet_console\nquiet_console()\n"


def test_known_notices_are_dropped_and_everything_else_shown() -> None:
    result = run_python(QUIET + NOISE)
    assert result.returncode == 0, result.stderr
    shown = result.stderr
    assert "should be kept in float32: []" not in shown and "requires torchvision" not in shown
    assert "deprecated" not in shown
    # a float32 list with modules in it, other library warnings and dreamcore's own all still show
    for kept in ("float32: ['conv_in']", "Some weights were not used", "dreamcore's own warning",
                 "a future change of dreamcore's own", "a library's user warning"):
        assert kept in shown, kept


def test_without_the_filters_or_with_the_variable_every_notice_shows() -> None:
    for code, env in ((NOISE, {}), (QUIET + NOISE, {"DREAMCORE_LIBRARY_WARNINGS": "1"})):
        result = run_python(code, **env)
        assert "float32: []" in result.stderr and "requires torchvision" in result.stderr
        assert "deprecated" in result.stderr


def test_the_libraries_bars_go_off_as_they_are_imported_and_the_cli_imports_none() -> None:
    result = run_python(textwrap.dedent("""
        import sys
        import dreamcore.cli
        from dreamcore.console import quiet_console
        quiet_console()
        print(sorted(m for m in ("diffusers", "transformers", "torch") if m in sys.modules))
        import transformers.utils.logging as tl
        import diffusers.utils.logging as dl
        print(tl.is_progress_bar_enabled(), dl.is_progress_bar_enabled())
        from transformers.utils.logging import tqdm
        for _ in tqdm(range(3), desc="Writing model shards"):
            pass
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "False False"]
    assert "Writing model shards" not in result.stderr


def test_inside_a_host_program_only_the_known_notices_go() -> None:
    result = run_python(textwrap.dedent("""
        from dreamcore.console import quiet_console
        quiet_console(own_process=False)
        import transformers.utils.logging as tl
        print(tl.is_progress_bar_enabled())
    """) + NOISE)
    assert result.stdout.splitlines() == ["True"]  # the WebUI's own bars and FutureWarnings are its own
    assert "float32: []" not in result.stderr and "deprecated" in result.stderr


def test_each_known_notice_matches_only_its_own_message() -> None:
    import logging

    for notice in KNOWN_NOTICES:
        keep = KnownNoticeFilter([notice.pattern])
        record = logging.LogRecord(notice.logger, logging.WARNING, __file__, 1, "Some other message", None, None)
        assert keep.filter(record)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, FLOAT32_EMPTY, None, None)
    assert not KnownNoticeFilter([KNOWN_NOTICES[0].pattern]).filter(record)


def test_format_duration() -> None:
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"
    assert format_duration(None) == "-" and format_duration(float("inf")) == "-"


def test_a_job_child_installs_the_filters_for_its_log(tmp_path: Path) -> None:
    """The child's output is the job's log.txt, which the tab shows as its Log."""
    result = run_python(textwrap.dedent(f"""
        import logging, sys
        import dreamcore.jobs.child as child
        def run_job(folder, attempt):
            logging.getLogger("diffusers.models.modeling_utils").warning({FLOAT32_EMPTY!r})
            logging.getLogger("dreamcore").warning("dreamcore's own warning")
            return 0
        child.run_job = run_job
        sys.exit(child.main([{str(tmp_path)!r}]))
    """))
    assert result.returncode == 0, result.stderr
    assert "float32" not in result.stdout + result.stderr and "dreamcore's own warning" in result.stdout
