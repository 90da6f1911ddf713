"""``modify.fuse``: fused leaves equal torch.nn and the unfused pairs; the input is never touched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modify
from modify import (
    BatchNorm2d, Dropout, ElementwiseAffine, GroupNorm, Identity, LayerNorm, Linear, ReLU, Residual, RMSNorm,
    Scale, Sequential,
)
from modify.primitives.fused import AffineGroupNorm, AffineLayerNorm, AffineRMSNorm, ScaledLinear

from helpers import assert_close, assert_state_equal, state_snapshot


def randomise(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial weights (affine weights are ones and biases zeros at init)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def output_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    x = x.detach().clone().requires_grad_(x.is_floating_point())
    out = model(x)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.pow(2).sum(), [*params, x] if x.requires_grad else params)
    return out, list(grads), x


# (pair built from primitives, the torch.nn module it equals, input shape, fused class)
NORM_CASES = {
    "layer_norm": (lambda: Sequential(LayerNorm(6), ElementwiseAffine(6)), lambda: nn.LayerNorm(6), (3, 4, 6), AffineLayerNorm),
    "layer_norm_2d_no_bias": (
        lambda: Sequential(LayerNorm((4, 6), eps=1e-3), ElementwiseAffine((4, 6), bias=False)),
        lambda: nn.LayerNorm((4, 6), eps=1e-3, bias=False),
        (3, 4, 6),
        AffineLayerNorm,
    ),
    "rms_norm": (
        lambda: Sequential(RMSNorm(6, eps=1e-6), ElementwiseAffine(6, bias=False)),
        lambda: nn.RMSNorm(6, eps=1e-6),
        (3, 4, 6),
        AffineRMSNorm,
    ),
    "group_norm": (
        lambda: Sequential(GroupNorm(2, 6), ElementwiseAffine(6, dim=1)),
        lambda: nn.GroupNorm(2, 6),
        (3, 6, 3, 3),
        AffineGroupNorm,
    ),
}


@pytest.mark.parametrize("name", list(NORM_CASES))
def test_fused_norm_equals_torch_nn_and_the_pair_in_output_and_gradient(name, gen):
    make_pair, make_reference, shape, fused_cls = NORM_CASES[name]
    pair = randomise(make_pair(), gen)
    reference = make_reference()
    reference.load_state_dict({k.split(".")[-1]: v for k, v in pair.state_dict().items()})
    fused = modify.fuse(pair)
    assert [type(m) for m in fused.children()] == [fused_cls]
    assert fused[0].weight is pair[1].weight
    x = torch.randn(shape, generator=gen)
    out, grads, _ = output_and_grads(fused, x)
    for other in (pair, reference):
        expected, expected_grads, _ = output_and_grads(other, x)
        assert_close(out, expected, atol=1e-5)
        for g, e in zip(grads, expected_grads, strict=True):
            assert_close(g, e, atol=1e-4)


@pytest.mark.parametrize("name", list(NORM_CASES))
def test_fused_norm_gradcheck_float64(name, gen):
    make_pair, _, shape, _ = NORM_CASES[name]
    fused = modify.fuse(randomise(make_pair().double(), gen))
    x = torch.randn((2, *shape[1:]), generator=gen, dtype=torch.float64, requires_grad=True)
    names, params = zip(*fused.named_parameters())

    def fn(x, *params):
        return torch.func.functional_call(fused, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_linear_then_scale_equals_scaled_torch_linear(gen):
    pair = Sequential(Linear(5, 3), Scale(0.25))
    reference = nn.Linear(5, 3)
    reference.load_state_dict({k.split(".")[-1]: v for k, v in pair.state_dict().items()})
    fused = modify.fuse(pair)
    assert isinstance(fused[0], ScaledLinear) and fused[0].weight is pair[0].weight
    x = torch.randn(4, 5, generator=gen)
    out, grads, x_used = output_and_grads(fused, x)
    expected = reference(x_used) * 0.25
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), [*reference.parameters(), x_used])
    assert torch.equal(out, pair(x))
    assert_close(out, expected)
    for g, e in zip(grads, expected_grads, strict=True):
        assert_close(g, e)


def test_chains_fuse_left_to_right():
    chain = Sequential(Scale(2.0), Scale(3.0), Linear(4, 4, bias=False), Scale(0.5), Scale(0.5))
    fused = modify.fuse(chain)
    assert [(name, type(m).__name__) for name, m in fused.named_children()] == [("0", "Scale"), ("2", "ScaledLinear")]
    assert fused[0].c == 6.0 and fused[1].c == 0.25
    x = torch.randn(3, 4)
    assert_close(fused(x), chain(x))


def test_identities_are_dropped_and_real_dropout_kept():
    model = Sequential(Identity(), Linear(4, 4), Dropout(0.0), ReLU(), Dropout(0.1))
    fused = modify.fuse(model)
    assert [name for name, _ in fused.named_children()] == ["1", "3", "4"]
    assert fused[2] is model[4]


def test_parallels_of_identities_are_dropped_and_zero_dropout_branches_become_identities(gen):
    carry = modify.Parallel(Dropout(0.0), Identity())  # a padded stream's dropout and mask slot
    branches = modify.Parallel(Dropout(0.0), Linear(3, 3), Dropout(0.1))
    model = Sequential(modify.Copy(2), carry, modify.Index(0), modify.Copy(3), branches, modify.Cat(-1)).eval()
    before, x = state_snapshot(model), torch.randn(2, 3, generator=gen)
    fused = modify.fuse(model)
    assert [name for name, _ in fused.named_children()] == ["0", "2", "3", "4", "5"]
    new = fused[3]
    assert type(new[0]) is Identity and new[1] is branches[1] and new[2] is branches[2]
    assert type(carry[0]) is Dropout and type(branches[0]) is Dropout  # the original is unchanged
    assert_state_equal(model, before)
    assert_close(fused(x), model(x))


@pytest.mark.parametrize(
    "pair",
    [
        lambda: Sequential(LayerNorm(4), ElementwiseAffine(4, dim=0)),  # affine on another axis
        lambda: Sequential(LayerNorm((2, 4)), ElementwiseAffine(4)),  # covers only part of the norm
        lambda: Sequential(BatchNorm2d(4), ElementwiseAffine(4, dim=1)),  # buffers and params at two paths
        lambda: Sequential(GroupNorm(2, 4), ElementwiseAffine(4)),  # trailing, not channels
        lambda: Sequential(ElementwiseAffine(4), LayerNorm(4)),  # wrong order
        lambda: Residual(Sequential(Scale(2.0))),  # a Sequential subclass keeps its shape
    ],
)
def test_pairs_that_do_not_fit_are_left_alone(pair):
    model = pair()
    assert modify.fuse(model) is model


def test_fuse_leaves_the_input_unchanged(gen):
    model = randomise(
        Sequential(
            Residual(Sequential(LayerNorm(8), ElementwiseAffine(8), Linear(8, 8), Scale(0.5))),
            Sequential(RMSNorm(8), ElementwiseAffine(8, bias=False)),
            Linear(8, 3),
        ),
        gen,
    )
    x = torch.randn(2, 8, generator=gen)
    snapshot, before, structure = state_snapshot(model), model(x), repr(model)
    modules, params = list(model.modules()), list(model.parameters())
    fused = modify.fuse(model)
    assert fused is not model
    assert_close(fused(x), before)
    assert_state_equal(model, snapshot)
    assert torch.equal(model(x), before)
    assert repr(model) == structure
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))


def test_state_dict_keys_kept_and_loadable_both_ways(gen):
    model = randomise(Sequential(ln=Sequential(norm=LayerNorm(6), affine=ElementwiseAffine(6)), head=Linear(6, 2)), gen)
    fused = modify.fuse(model)
    assert list(fused.state_dict()) == list(model.state_dict()) == ["ln.affine.weight", "ln.affine.bias", "head.weight", "head.bias"]
    assert [p for p in fused.parameters()] == [p for p in model.parameters()]
    assert all(a is b for a, b in zip(fused.parameters(), model.parameters(), strict=True))
    other = copy.deepcopy(model)
    randomise(other, gen)
    fused.load_state_dict(other.state_dict())  # loads into the shared parameters: model sees it
    assert_state_equal(model, state_snapshot(other))
    again = Sequential(ln=Sequential(norm=LayerNorm(6), affine=ElementwiseAffine(6)), head=Linear(6, 2))
    again.load_state_dict(fused.state_dict())
    x = torch.randn(3, 6)
    assert_close(again(x), fused(x))


def test_training_the_fused_sibling_trains_the_original_parameters(gen):
    model = Sequential(LayerNorm(4), ElementwiseAffine(4), Linear(4, 1))
    fused = modify.fuse(model)
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    fused(torch.randn(5, 4, generator=gen)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(model[1].weight, torch.ones(4))
    x = torch.randn(2, 4)
    assert_close(fused(x), model(x))


def test_fuse_is_idempotent_and_keeps_shared_structure():
    block = Sequential(LayerNorm(4), ElementwiseAffine(4))
    model = Sequential(block, Linear(4, 4), block)
    fused = modify.fuse(model)
    assert fused[0] is fused[2]
    assert modify.fuse(fused) is fused


def test_lora_blocks_are_left_for_merge_lora(gen):
    base = Sequential(LayerNorm(6), ElementwiseAffine(6), Linear(6, 6))
    adapted = modify.lora(base, rank=2)
    randomise(adapted[2].up, gen)
    fused = modify.fuse(adapted)
    assert fused[1] is adapted[2]
    x = torch.randn(3, 6)
    assert_close(fused(x), adapted(x))
    assert_close(modify.merge_lora(fused)(x), adapted(x), atol=1e-5)


def test_fused_leaf_names_its_path_on_a_bad_input():
    fused = modify.fuse(Sequential(ln=Sequential(norm=LayerNorm(4), affine=ElementwiseAffine(4))))
    with pytest.raises(ValueError, match=r"AffineLayerNorm at 'ln.affine' expected trailing shape \(4,\)"):
        fused(torch.randn(2, 5))


def test_standalone_fused_leaves_initialise_as_torch_nn():
    norm = AffineLayerNorm(4)
    assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))
    assert AffineRMSNorm(4).bias is None
    assert [n for n, _ in AffineGroupNorm(2, 4, bias=False).named_parameters()] == ["weight"]
    linear = ScaledLinear(8, 2, c=3.0)
    assert linear.weight.shape == (2, 8) and linear.bias.abs().max() <= 8**-0.5
    with pytest.raises(ValueError, match="not divisible"):
        AffineGroupNorm(3, 4)


def test_fuse_checks_its_argument():
    with pytest.raises(TypeError, match="fuse"):
        modify.fuse("not a module")


def tiny_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    from modify.models import GPT, GPTConfig, Llama, LlamaConfig

    llama = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16,
    )
    tokens = torch.randint(0, 32, (2, 8))
    return {
        "gpt": (GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=2, n_head=2, n_embd=16)), tokens),
        "llama": (Llama(llama), tokens),
    }


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_fused_models_equal_the_models_in_output_and_gradient(name, gen):
    model, x = tiny_models()[name]
    for affine in (m for m in model.modules() if isinstance(m, ElementwiseAffine)):
        randomise(affine, gen)  # the fused parameters, away from their ones/zeros init
    snapshot = state_snapshot(model)
    fused = modify.fuse(model)
    norms = [m for m in fused.modules() if isinstance(m, (AffineLayerNorm, AffineRMSNorm))]
    assert len(norms) == 5 and not any(isinstance(m, (LayerNorm, RMSNorm)) for m in fused.modules())
    assert list(fused.state_dict()) == list(model.state_dict())
    expected, expected_grads, _ = output_and_grads(model, x)
    actual, actual_grads, _ = output_and_grads(fused, x)
    assert_close(actual, expected, atol=1e-5)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        assert_close(a, e, atol=1e-4, rtol=1e-4)
    assert_state_equal(model, snapshot)


@pytest.mark.parametrize(
    "cls, first, second",
    [
        (AffineLayerNorm, LayerNorm(4), ElementwiseAffine(5)),
        (AffineLayerNorm, RMSNorm(4), ElementwiseAffine(4)),
        (AffineRMSNorm, RMSNorm(4), ElementwiseAffine(4, dim=0)),
        (AffineGroupNorm, GroupNorm(2, 4), ElementwiseAffine(4)),
        (ScaledLinear, Linear(4, 4), ElementwiseAffine(4)),
    ],
)
def test_from_pair_refuses_a_pair_it_does_not_compute(cls, first, second):
    assert not cls.fits(first, second)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.from_pair expects"):
        cls.from_pair(first, second)
    with pytest.raises(TypeError, match="from_pair"):
        cls.from_pair(first, "not a module")


@pytest.mark.parametrize("shape, scope", [(6, modify.traits.Vector), ((4, 6), modify.traits.Matrix)])
def test_fused_norm_reports_the_traits_of_the_pair(shape, scope):
    """A ``LayerNorm((4, 6))`` pair reports ``Matrix``; so does its fused leaf (not the class's ``Vector``)."""
    for norm in (LayerNorm(shape), RMSNorm(shape)):
        pair = Sequential(norm, ElementwiseAffine(shape))
        fused = modify.fuse(pair)
        assert scope in modify.traits_of(pair) and modify.traits_of(fused) == modify.traits_of(pair)


def test_fused_norms_check_eps_as_the_norms_do():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            LayerNorm(4, eps=bad)
        with pytest.raises(ValueError, match="eps"):
            AffineLayerNorm(4, eps=bad)
        with pytest.raises(ValueError, match="eps"):
            AffineRMSNorm(4, eps=bad)
