"""The example ``examples/resnet.py``, end to end in a tiny configuration."""

from __future__ import annotations

import importlib
import re

import pytest

TINY = [
    "--steps", "9", "--log-every", "3", "--batch-size", "16", "--image-size", "16", "--width", "8", "--eval-size", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def example():
    """The example file imported as a module (it is a script, not part of the package)."""
    return importlib.import_module("resnet")  # examples/ is on the tests' path (pyproject.toml)


def test_tiny_run_queries_the_model_and_the_loss_falls(example, capsys):
    assert example.main(TINY) == 0
    out = capsys.readouterr().out
    assert "blocks:               ['stages.0.0', 'stages.1.0']" in out
    assert "projection shortcuts: ['stages.1.0.branches.shortcut.conv']" in out
    assert "Param+Linear leaves:  13 (Conv2d, ElementwiseAffine, Linear)" in out
    assert out.count("stage output:") == 2 and "(1, 16, 2, 2)" in out
    assert "the model's state is unchanged: True" in out
    windows = [float(v) for v in re.findall(r"step +\d+ +loss (\S+)", out)]
    assert len(windows) == 3 and windows[-1] < windows[0]
    first, last = map(float, re.search(r"loss (\S+) -> (\S+)", out).groups())
    assert last < first


def test_shapes_are_labelled_and_reproducible(example):
    import torch

    cfg = example.ExampleConfig(image_size=16)
    images, labels = example.shapes(64, cfg, torch.Generator().manual_seed(0))
    again, labels_again = example.shapes(64, cfg, torch.Generator().manual_seed(0))
    assert images.shape == (64, 3, 16, 16) and torch.equal(images, again) and torch.equal(labels, labels_again)
    assert set(labels.tolist()) == set(range(len(example.CLASSES)))


def test_bad_arguments_exit_with_a_message(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["--steps", "0"])
    assert "must be positive" in capsys.readouterr().err
