"""``examples/finetune.py --save-every N --resume``: killed and resumed, it ends as an uninterrupted run.

Each run is a subprocess on one CPU thread. A killed run is the example itself, started by a
few lines that send it ``SIGKILL`` (a real kill: nothing is flushed or cleaned up) as it enters
its k-th optimizer step; the next run is the same command with ``--resume``. The final adapters
(``adapter/adapter_model.safetensors``), every step's loss (the saved training state) and the
held-out losses printed must equal those of a run that was never interrupted, bit for bit.
QLoRA (``--quantize nf4``) is killed three times. The float base (the same code path) crashes
in-process with an exception instead, which costs a second, not three subprocesses.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import run_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"
TINY = ["--steps", "6", "--batch-size", "4", "--new-tokens", "2", "--prompts", "1", "--save-every", "2"]
# (kill entering the run's k-th step, the step the run resumed from); saves after steps 2, 4, 6.
THREE_KILLS = [(3, None), (2, 2), (4, 2)]  # killed entering steps 3, 4 and 6; the last run resumes from 4


def run(out: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    return run_script(EXAMPLE, *TINY, "--out", out, *extra, kill_at=kill_at)


def finished(out: Path, stdout: str) -> tuple[dict[str, torch.Tensor], list[float], list[str]]:
    """The run's final adapters, its losses and its printed held-out losses."""
    state = torch.load(out / "train_state" / "state.pt", weights_only=True)
    adapters = load_file(out / "adapter" / "adapter_model.safetensors")
    return adapters, state["losses"], re.findall(r"held-out loss per byte: .*", stdout)


@pytest.fixture(scope="module")
def finetune():
    return importlib.import_module("finetune")  # examples/ is on the tests' path (pyproject.toml)


def test_qlora_killed_three_times_and_resumed_equals_an_uninterrupted_run(tmp_path):
    whole = run(tmp_path / "whole", "--quantize", "nf4")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "resumed"
    for kill_at, resumed_at in THREE_KILLS:
        killed = run(out, "--quantize", "nf4", "--resume", kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert resumed_at is None or f"resumed from {out / 'train_state'}: step {resumed_at} of 6" in killed.stdout
    last = run(out, "--quantize", "nf4", "--resume")
    assert last.returncode == 0, last.stderr
    assert f"resumed from {out / 'train_state'}: step 4 of 6" in last.stdout
    (adapters, losses, printed), (whole_adapters, whole_losses, whole_printed) = (
        finished(out, last.stdout), finished(tmp_path / "whole", whole.stdout))  # fmt: skip
    assert losses == whole_losses and len(losses) == 6
    assert printed == whole_printed and len(printed) == 1
    assert adapters.keys() == whole_adapters.keys() and len(adapters) == 2 * 7 * 2  # 7 projections, 2 blocks
    assert all(torch.equal(adapters[key], whole_adapters[key]) for key in adapters)
    assert sorted(os.listdir(out)) == ["adapter", "train_state"]


class Crash(Exception):
    """The in-process stand-in for a kill."""


def test_float_base_crashed_and_resumed_equals_an_uninterrupted_run(finetune, tmp_path, monkeypatch, capsys):
    """A crash entering step 5 (state saved after step 4), in-process; then a resume with other options is refused."""
    whole = finetune.main(finetune.parse([*TINY, "--out", str(tmp_path / "whole")]))
    calls, step = 0, torch.optim.AdamW.step

    def step_or_crash(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise Crash
        return step(self, *args, **kwargs)

    argv = [*TINY, "--out", str(tmp_path / "resumed"), "--resume"]
    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(torch.optim.AdamW, "step", step_or_crash)
        finetune.main(finetune.parse(argv))
    resumed = finetune.main(finetune.parse(argv))
    assert f"resumed from {tmp_path / 'resumed' / 'train_state'}: step 4 of 6" in capsys.readouterr().out
    assert (resumed["losses"], resumed["after"]) == (whole["losses"], whole["after"]) and len(resumed["losses"]) == 6
    adapters = [load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("whole", "resumed")]
    assert adapters[0].keys() == adapters[1].keys() and len(adapters[0]) == 2 * 7 * 2
    assert all(torch.equal(adapters[0][key], adapters[1][key]) for key in adapters[0])
    with pytest.raises(SystemExit) as refused:
        finetune.main(finetune.parse([*argv, "--rank", "4", "--lr", "0.5"]))
    message = f"--resume: {tmp_path / 'resumed' / 'train_state'} was saved with other options: --rank, --lr"
    assert (refused.value.code, capsys.readouterr().err) == (2, f"finetune.py: error: {message}\n")


def test_a_negative_save_every_is_refused(finetune, capsys):
    with pytest.raises(SystemExit):
        finetune.parse(["--save-every", "-1"])
    assert "argument --save-every: must be 0 (never) or positive, got -1" in capsys.readouterr().err
