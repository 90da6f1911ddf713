"""``--save-every`` / ``--resume`` for the examples: a run's training state, saved atomically.

A :class:`SavedRun` keeps ``<out>/train_state``: the trainable weights in safetensors files and
``state.pt`` (the step, the optimizer's state, the data position, RNG states, the losses so far
and the options the run was started with). Each save goes through
``modify.checkpoints.atomic_folder``, so a kill at any moment leaves the previous state whole.
On ``--resume`` a state saved with other options is refused before any work, with one line
naming them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modify.checkpoints import atomic_folder

from command_line import fail


class SavedRun:
    """The training state of the run ``config`` describes (its ``out``, ``steps``, ``save_every``, ``resume``).

    Args:
        config: the example's config dataclass.
        prog: the script's name, for the error line (``gpt_lora.py``).

    Attributes:
        saved: the state loaded on ``--resume`` (``None`` without one, or when there is none yet).
    """

    def __init__(self, config, prog: str):
        self.config, self.prog, self.folder = config, prog, Path(config.out) / "train_state"
        self.options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("resume", "save_every")}
        self.saved = self._load() if config.resume else None

    def _load(self) -> dict | None:
        if not (self.folder / "state.pt").is_file():
            print(f"--resume: no training state in {self.folder}; starting from the beginning")
            return None
        saved = torch.load(self.folder / "state.pt", weights_only=True)
        changed = ", ".join(f"--{key}".replace("_", "-") for key, value in self.options.items()
                            if saved["options"].get(key) != value)  # fmt: skip
        if changed:
            fail(self.prog, f"--resume: {self.folder} was saved with other options: {changed}")
        print(f"resumed from {self.folder}: {self.where(saved)} of {self.config.steps}")
        return saved

    def where(self, saved: dict) -> str:
        """Where the saved run stopped, for the message on resuming."""
        return f"step {saved['step']}"

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` (1-based): every ``save_every`` steps and at the last one."""
        every = self.config.save_every
        return bool(every) and (step % every == 0 or step == self.config.steps)

    def fill(self, named: dict[str, torch.nn.Parameter], file: str) -> None:
        """Copy the saved tensors of ``file`` into the ``named`` parameters (in place, without gradient)."""
        tensors = load_file(self.folder / file)
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(tensors[name])

    def write(self, named: dict[str, torch.nn.Parameter], file: str, state: dict, replaces=("*",)) -> None:
        """Save ``named`` into ``file`` and ``state`` (with the options) into ``state.pt``, atomically;
        the old files ``replaces`` does not match are carried over."""
        with atomic_folder(self.folder, replaces=replaces, owner=f"{self.prog} --save-every") as staging:
            save_file({name: p.detach().contiguous() for name, p in named.items()}, staging / file)
            with open(staging / "state.pt", "wb") as handle:  # a file object: a failed write is an OSError
                torch.save({**state, "options": self.options}, handle)
