"""The fusion table (``modify.primitives.fusion``): ``fuse`` and the call-time path read the same rules.

A norm then its ``ElementwiseAffine`` in a ``Sequential`` runs as one call, unless anything could tell.
"""

from __future__ import annotations

import pytest
import torch

import modify
from modify.primitives.fusion import CALL_TIME, RULES, rule_for


def pair(kind: str, bias: bool = True) -> modify.Sequential:
    norm = modify.LayerNorm(8) if kind == "layer" else modify.RMSNorm(8, eps=1e-6)
    block = modify.Sequential(norm=norm, affine=modify.ElementwiseAffine(8, bias=bias))
    with torch.no_grad():
        block.affine.weight.normal_()
        if bias:
            block.affine.bias.normal_()
    return block


def reference(block: modify.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The two leaves one after the other, as written."""
    return block.affine.forward(block.norm.forward(x))


@pytest.mark.parametrize("kind, bias", [("layer", True), ("layer", False), ("rms", True), ("rms", False)])
def test_one_call_equals_the_two_leaves_in_output_and_gradient(kind, bias):
    block = pair(kind, bias).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(block(x), reference(block, x))
    params = [x, *block.parameters()]
    ours = torch.autograd.grad(block(x).square().sum(), params)
    theirs = torch.autograd.grad(reference(block, x).square().sum(), params)
    torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(block, (x,))


def test_layer_norm_pair_is_one_autograd_node_like_torch():
    block = pair("layer")
    torch_norm = torch.nn.LayerNorm(8)
    torch_norm.load_state_dict({"weight": block.affine.weight, "bias": block.affine.bias})
    x = torch.randn(2, 4, 8, requires_grad=True)
    out = block(x)
    assert out.grad_fn.name() == torch_norm(x).grad_fn.name()
    torch.testing.assert_close(out, torch_norm(x), atol=0, rtol=0)


def test_hooks_on_either_leaf_run_the_leaves_one_by_one():
    block, seen = pair("layer"), []
    block.affine.register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(2, 8)
    out = block(x)
    assert len(seen) == 1 and out is seen[0]
    torch.testing.assert_close(out, reference(block, x), atol=0, rtol=0)


def test_another_dtype_than_the_weights_takes_the_leaves_path():
    block = pair("layer")
    x = torch.randn(2, 8, dtype=torch.float64)
    out = block(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference(block, x), atol=0, rtol=0)


def test_a_wrong_input_names_the_norm():
    with pytest.raises(ValueError, match=r"LayerNorm at 'norm'.*trailing shape \(8,\)"):
        pair("layer")(torch.randn(2, 7))
    with pytest.raises(TypeError, match=r"at 'norm'.*expected a tensor"):
        pair("rms")((torch.randn(2, 8),))


def test_call_time_rules_compute_what_the_fused_leaf_computes():
    """One table: each call-time rule's one call equals the leaf ``fuse`` builds from the same pair."""
    x = torch.randn(3, 8, dtype=torch.float64)
    for kind in ("layer", "rms"):
        block = pair(kind).double()
        rule = rule_for(block.norm, block.affine)
        assert rule is CALL_TIME[(type(block.norm), type(block.affine))] and rule in RULES
        torch.testing.assert_close(rule.run(block.norm, block.affine, x), rule.build(block.norm, block.affine)(x))
        assert type(modify.fuse(block).affine) is type(rule.build(block.norm, block.affine))


def test_a_pair_the_rule_does_not_fit_runs_as_two_leaves():
    block = modify.Sequential(norm=modify.LayerNorm(8), affine=modify.ElementwiseAffine(8, dim=-2))
    assert rule_for(block.norm, block.affine) is None
    x = torch.randn(8, 8)
    torch.testing.assert_close(block(x), reference(block, x), atol=0, rtol=0)
