"""Assertions and runners shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

# Runs a script (argv[2:]) as `python script ...` does, but sends it SIGKILL (a real kill: nothing is
# flushed or cleaned up) as it enters its argv[1]-th AdamW step.
_KILLER = """
import os, runpy, signal, sys
import torch

kill_at, calls, step = int(sys.argv[1]), 0, torch.optim.AdamW.step

def step_or_die(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)

torch.optim.AdamW.step = step_or_die
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def assert_close(actual, expected, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Values (tensors or nested tuples) equal within tolerance, with the same structure."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, atol, rtol)
        return
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every state_dict entry, for checking that a module was left untouched."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_equal(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """``module``'s state_dict has the snapshot's keys and bit-identical values."""
    state = module.state_dict()
    assert list(state) == list(snapshot)
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), key


def run_script(script: Path, *argv: object, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """``python script *argv`` on one CPU thread, with this process's ``sys.path``; with ``kill_at``,
    killed by SIGKILL as it enters its ``kill_at``-th ``AdamW`` step."""
    command = [script, *argv]
    if kill_at is not None:
        command = ["-c", _KILLER, str(kill_at), *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True, env=env, timeout=300)
