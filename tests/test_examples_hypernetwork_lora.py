"""Run examples/hypernetwork_lora.py in tiny mode: the predicted per-sample adapters must learn."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hypernetwork_lora.py"


def test_per_sample_adapters_learn_the_waves(capsys):
    spec = importlib.util.spec_from_file_location("example_hypernetwork_lora", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    result = module.main(["--base-steps", "100", "--steps", "80", "--batch-size", "16", "--eval-waves", "16",
                          "--log-every", "40"])  # fmt: skip
    assert result["before"] == result["base"]  # B starts at zero: the adapters start as the base
    assert result["after"] < 0.25 * result["before"]
    out = capsys.readouterr().out
    assert "held-out mse: base alone" in out and "adapters" in out
    del sys.modules[spec.name]
