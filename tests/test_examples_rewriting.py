"""Run examples/hypernetwork.py and examples/maml.py in tiny mode; they must learn."""

from __future__ import annotations

import importlib

import pytest



def load(name: str):
    return importlib.import_module(name)  # examples/ is on the tests' path (pyproject.toml)


def test_hypernetwork_example_learns_per_sample_networks(capsys):
    tiny = ["--steps", "80", "--batch-size", "16", "--eval-waves", "16", "--log-every", "40"]
    result = load("hypernetwork").main(tiny)
    assert result["after"] < 0.25 * result["before"]
    out = capsys.readouterr().out
    assert "held-out mse of the predicted networks" in out and "step    80" in out


def test_maml_example_improves_post_adaptation_error(capsys):
    result = load("maml").main(["--steps", "60", "--meta-batch", "4", "--eval-tasks", "20", "--width", "32"])
    assert result["after"] < result["before"]
    assert "MAML" in capsys.readouterr().out


def test_examples_reject_unknown_flags():
    with pytest.raises(SystemExit):
        load("maml").main(["--no-such-flag"])
