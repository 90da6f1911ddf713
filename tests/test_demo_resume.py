"""``examples/gpt_lora.py --save-every N --resume``: killed three times and resumed, it ends as an uninterrupted run.

Each run is a subprocess on one CPU thread. A killed run is the example itself, started by a
few lines that send it ``SIGKILL`` (a real kill: nothing is flushed or cleaned up) as it enters
its k-th optimizer step; the next run is the same command with ``--resume``. The final adapters
(``adapter/adapter_model.safetensors``) and every step's loss (the saved training state) must
equal those of a run that was never interrupted, bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.helpers import run_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpt_lora.py"
TINY = [
    "--steps", "6", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
    "--batch-size", "4", "--corpus-chars", "4000", "--eval-batches", "1", "--sample-tokens", "4",
    "--lora-rank", "2", "--device", "cpu", "--dropout", "0.1", "--save-every", "2",
]  # fmt: skip


def run(out: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    return run_script(EXAMPLE, *TINY, "--out", out, *extra, kill_at=kill_at)


def finished(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """The run's final adapters and its losses of both phases."""
    state = torch.load(out / "train_state" / "state.pt", weights_only=True)
    return load_file(out / "adapter" / "adapter_model.safetensors"), state["losses"]


def test_killed_three_times_and_resumed_equals_an_uninterrupted_run(tmp_path):
    """And a resume with other options is refused."""
    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "resumed"
    # 6 pretraining then 6 adaptation steps, saved after steps 2, 4, 6 of each phase. Killed entering
    # the run's 3rd step (pretraining step 3), then its 5th (adaptation step 1, state: pretraining done),
    # then its 4th (adaptation step 4, state: adaptation step 2).
    for kill_at, resumed_at in ((3, None), (5, "pretrain phase, step 2"), (4, "pretrain phase, step 6")):
        killed = run(out, "--resume", kill_at=kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert resumed_at is None or f"resumed from {out / 'train_state'}: {resumed_at}" in killed.stdout
    last = run(out, "--resume")
    assert last.returncode == 0, last.stderr
    assert "adapt phase, step 2 of 6" in last.stdout
    (adapters, losses), (whole_adapters, whole_losses) = finished(out), finished(tmp_path / "whole")
    assert losses == whole_losses and len(losses["pretrain"]) == len(losses["adapt"]) == 6
    assert adapters.keys() == whole_adapters.keys()
    assert all(torch.equal(adapters[key], whole_adapters[key]) for key in adapters)
    assert sorted(os.listdir(out)) == ["adapter", "gpt_lora_loss.png", "models.html", "train_state"]
    refused = run(tmp_path / "whole", "--resume", "--lora-rank", "4")
    message = f"--resume: {tmp_path / 'whole' / 'train_state'} was saved with other options: --lora-rank"
    assert (refused.returncode, refused.stderr) == (2, f"gpt_lora.py: error: {message}\n")

