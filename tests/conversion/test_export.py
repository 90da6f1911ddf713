"""``modify.conversion.export``: the settings ``torch.export`` runs under while ``convert`` captures.

The reference is ``torch.export`` with torch's own settings: under :func:`lean_tracing` it must
give the same graph (same ops, same symbolic shapes) without the per-node stack traces, and every
setting must be torch's again afterwards, also when the capture raises.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.config
import torch.fx.config
from torch import nn
from torch.export import Dim

from modify.conversion.export import lean_tracing


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(torch.relu(self.norm(x))).reshape(x.shape[0], -1, 8)


def _export(module: nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(module, (torch.randn(2, 5, 8),), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},), strict=False)


def _settings() -> tuple[bool, bool]:
    return torch.fx.config.do_not_emit_stack_traces, torch._dynamo.config.fake_tensor_cache_enabled


def _ops(program: torch.export.ExportedProgram) -> list[tuple[object, str]]:
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    return [(n.target, str(getattr(n.meta["val"], "shape", n.meta["val"]))) for n in calls]


def _model_ops(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    """The calls of the model's own code (not the size nodes torch's runtime-assert pass adds)."""
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target is not torch.ops.aten.sym_size.int]


def test_lean_tracing_gives_torchs_graph_without_stack_traces_and_restores_the_settings():
    before = _settings()
    reference = _export(_Block())
    with lean_tracing():
        assert _settings() == (True, False)
        lean = _export(_Block())
    assert _settings() == before
    assert _ops(lean) == _ops(reference)
    assert any("s" in shape for _, shape in _ops(lean))  # symbolic sizes kept
    assert _model_ops(reference) and all(n.meta.get("stack_trace") for n in _model_ops(reference))
    assert not any(n.meta.get("stack_trace") for n in _model_ops(lean))


def test_lean_tracing_restores_the_settings_when_the_capture_raises():
    before = _settings()
    with pytest.raises(RuntimeError, match="inside"), lean_tracing():
        raise RuntimeError("inside")
    assert _settings() == before
