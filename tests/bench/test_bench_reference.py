"""Timing another trainer's tqdm "Steps" bar (dreamcore.bench.reference): the counts read from its output, the
steady time a step, and a real command timed end to end."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from dreamcore.bench.reference import main, steady_seconds_per_step, step_stamps, time_command

# what diffusers' train_dreambooth_lora_sdxl.py prints, split at its carriage returns and newlines
OUTPUT = [
    "Loading weights:  50%|█████     | 8/16 [00:00<00:00, 9359.67it/s]",
    "Steps:   0%|          | 0/8 [00:00<?, ?it/s]",
    "Steps:  12%|█▎        | 1/8 [00:02<00:14,  2.00s/it]",
    "Steps:  12%|█▎        | 1/8 [00:02<00:14,  2.00s/it, loss=0.31, lr=0.0001]",  # the same count, with its loss
    "Steps:  25%|██▌       | 2/8 [00:02<00:07,  1.20it/s, loss=0.31, lr=0.0001]",
    "Steps:  50%|█████     | 4/8 [00:03<00:03,  1.60it/s, loss=0.2, lr=0.0001]",  # the bar skipped count 3
    "Class images: 100%|██████████| 4/4 [00:01<00:00,  3.1it/s]",
    "Steps:  75%|███████▌  | 6/8 [00:04<00:01,  1.90it/s, loss=0.2, lr=0.0001]",
    "Steps: 100%|██████████| 8/8 [00:05<00:00,  2.00it/s, loss=0.1, lr=0.0001]",
    "Steps: 100%|██████████| 8/8 [00:09<00:00,  0.88it/s, loss=0.1, lr=0.0001]",  # the bar's close, after saving
]
STAMPS = [100.0, 100.5, 102.5, 102.6, 103.0, 104.0, 104.2, 105.0, 106.0, 110.0]


def test_each_step_count_is_stamped_when_the_bar_first_shows_it() -> None:
    stamps = step_stamps(zip(STAMPS, OUTPUT))
    assert stamps == [(1, 102.5), (2, 103.0), (4, 104.0), (6, 105.0), (8, 106.0)]
    # from step 2 on: 6 steps in 3 s, whatever counts the bar skipped
    assert steady_seconds_per_step(stamps, 2) == pytest.approx(0.5)
    assert steady_seconds_per_step(stamps, 3) == pytest.approx(2.0 / 4)  # the first count at or past step 3: 4
    with pytest.raises(ValueError, match="run more steps or lower --warmup"):
        steady_seconds_per_step(stamps, 7)
    assert step_stamps([(1.0, "nothing like a bar"), (2.0, "Steps: no count")]) == []


@pytest.mark.slow
def test_a_command_is_timed_from_its_bar(tmp_path: Path, capsys) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from tqdm.auto import tqdm
        print("loading", flush=True)
        for _ in tqdm(range(12), desc="Steps", mininterval=0):
            time.sleep(0.05)
        sys.exit(int(sys.argv[1]))
    """))
    result = time_command([sys.executable, str(script), "0"], 3, tmp_path / "log.txt", "fake")
    assert result.returncode == 0 and result.steps == 12
    # the steps sleep 0.05 s; the stamps are taken as the output arrives, so each may be late by a few ms
    assert 0.04 <= result.steady_s_per_step < 0.5
    assert "loading" in (tmp_path / "log.txt").read_text()  # the whole output is kept
    assert main(["--warmup", "3", "--log", str(tmp_path / "log2.txt"), "--json", str(tmp_path / "result.json"),
                 "--", sys.executable, str(script), "0"]) == 0
    assert re.search(r"^reference: exit 0, 12 steps shown, steady \d+\.\d+ s/step", capsys.readouterr().out)
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 12
    # a failing command fails the timing too, with its exit code
    assert main(["--warmup", "3", "--log", str(tmp_path / "log3.txt"), "--", sys.executable, str(script), "3"]) == 3
    assert "the command failed" in capsys.readouterr().err
