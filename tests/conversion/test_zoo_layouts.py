"""The model-zoo layouts that once converted to wrong trees or were refused now convert exactly.

Each layout (:mod:`zoo_layouts`) is converted with and without an example, then checked against
the original at two batch sizes (and, where the layout allows, another spatial size or length):
outputs and gradients equal, the original's own parameters and buffers held.
"""

from __future__ import annotations

import pytest
import torch
from zoo_layouts import CausalSelfAttention, ConvNeXtBlock, DenseBlock, LayerScale, ShuffleUnit, WindowAttention

import modify

# (id, factory, input factory (batch) -> tensor, other sizes than the example's)
LAYOUTS = [
    ("densenet", DenseBlock, lambda b, g, n=6: torch.randn(b, 4, n, n, generator=g), (3, 9)),
    ("shufflenet", ShuffleUnit, lambda b, g, n=6: torch.randn(b, 8, n, n, generator=g), (3, 5)),
    ("swin_window_attention", WindowAttention, lambda b, g, n=9: torch.randn(b, n, 8, generator=g), (3, 9)),
    ("convnext", ConvNeXtBlock, lambda b, g, n=6: torch.randn(b, 8, n, n, generator=g), (3, 10)),
    ("layer_scale", LayerScale, lambda b, g, n=6: torch.randn(b, 8, n, n, generator=g), (3, 4)),
    ("nanogpt_attention", CausalSelfAttention, lambda b, g, n=10: torch.randn(b, n, 8, generator=g), (3, 13)),
]


def _run(model, x):
    x = x.detach().requires_grad_(True)
    model.zero_grad()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}


@pytest.mark.parametrize(("name", "make", "inputs", "other"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("with_example", [False, True])
def test_a_zoo_layout_converts_to_the_same_function(name, make, inputs, other, with_example, gen):
    torch.manual_seed(0)
    original = make().eval()
    converted = modify.convert(original, (inputs(2, gen),) if with_example else None)
    assert {id(p) for p in converted.parameters()} == {id(p) for p in original.parameters()}
    assert {id(b) for b in converted.buffers()} <= {id(b) for b in original.buffers()}
    batch, size = other
    for x in (inputs(2, gen), inputs(batch, gen, size)):
        out_o, gx_o, grads_o = _run(original, x)
        holder = torch.nn.ModuleDict({"c": converted, "o": original})  # the original's parameters collect the grads
        out_c, gx_c, _ = _run(converted, x)
        grads_c = {id(p): p.grad.clone() for p in holder.o.parameters() if p.grad is not None}
        torch.testing.assert_close(out_c, out_o, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gx_c, gx_o, atol=1e-6, rtol=1e-5)
        assert grads_c.keys() == grads_o.keys()
        for key, grad in grads_o.items():
            torch.testing.assert_close(grads_c[key], grad, atol=1e-6, rtol=1e-4)


def test_values_from_no_input_are_leaves_holding_their_tensors():
    attention = CausalSelfAttention()
    converted = modify.convert(attention)
    holders = [m for m in converted.modules() if any(b is attention.bias for b in m.buffers(recurse=False))]
    assert len(holders) == 1 and isinstance(holders[0], modify.Function)
    block = ConvNeXtBlock()
    assert any(p is block.gamma for p in modify.convert(block).parameters())
