"""The examples' command lines: ``--help`` describes every flag with its default; bad values are
refused before any work, in a fresh process, with exit code 2 and one line naming the flag."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = {"gpt_lora": "DemoConfig", "maml": "Config", "hypernetwork": "Config", "hypernetwork_lora": "Config",
           "resnet": "ExampleConfig", "finetune": "Config"}


def config_fields(name: str) -> list[str]:
    module = importlib.import_module(name)  # examples/ is on the tests' path (pyproject.toml)
    return [f.name for f in dataclasses.fields(getattr(module, CONFIGS[name]))]


def run(name: str, *argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={"COLUMNS": "100"})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_help_describes_every_flag_and_its_default(name):
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    options = result.stdout.split("options:")[1]
    entries = [" ".join(entry.split()) for entry in options.split("\n  --")[1:]]  # one per flag, unwrapped
    assert sorted(e.split()[0] for e in entries) == sorted(f.replace("_", "-") for f in config_fields(name))
    for entry in entries:  # "flag [METAVAR] what it does (default: value)"
        assert "(default: " in entry and len(entry.split("(default:")[0].split()) >= 3, entry


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("maml", ["--steps", "0"], "maml.py: error: argument --steps: must be positive, got 0"),
        ("maml", ["--inner-lr", "inf"], "maml.py: error: argument --inner-lr: must be positive, got inf"),
        ("hypernetwork", ["--batch-size", "-1"], "hypernetwork.py: error: argument --batch-size: must be positive, got -1"),
        ("hypernetwork", ["--lr", "nan"], "hypernetwork.py: error: argument --lr: must be positive, got nan"),
        ("hypernetwork_lora", ["--rank", "0"],
         "hypernetwork_lora.py: error: argument --rank: must be positive, got 0"),
        ("hypernetwork_lora", ["--alpha", "nan"],
         "hypernetwork_lora.py: error: argument --alpha: must be positive, got nan"),
        ("resnet", ["--steps", "0"], "resnet.py: error: argument --steps: must be positive, got 0"),
        ("resnet", ["--noise", "-0.5"], "resnet.py: error: argument --noise: must be non-negative, got -0.5"),
        ("resnet", ["--width", "wide"], "resnet.py: error: argument --width: invalid int value: 'wide'"),
        ("finetune", ["--lr", "0"], "finetune.py: error: argument --lr: must be positive, got 0"),
        ("finetune", ["--loss-chunk", "-1"], "finetune.py: error: argument --loss-chunk: must be non-negative, got -1"),
    ],
)
def test_bad_values_exit_2_with_one_line(name, argv, message):
    result = run(name, *argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == message + "\n"
