"""Run examples/hypernetwork_lora.py in tiny mode: the predicted per-sample adapters must learn."""

from __future__ import annotations

import importlib


def test_per_sample_adapters_learn_the_waves(capsys):
    module = importlib.import_module("hypernetwork_lora")  # examples/ is on the tests' path (pyproject.toml)
    result = module.main(["--base-steps", "100", "--steps", "80", "--batch-size", "16", "--eval-waves", "16",
                          "--log-every", "40"])  # fmt: skip
    assert result["before"] == result["base"]  # B starts at zero: the adapters start as the base
    assert result["after"] < 0.25 * result["before"]
    out = capsys.readouterr().out
    assert "held-out mse: base alone" in out and "adapters" in out
