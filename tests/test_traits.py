"""Traits: every public leaf has one trait per exclusive group, and the traits are true.

"True" is checked on the shared case table: ``Linear`` leaves obey the affine law and
``NonLinear`` ones visibly break it; ``Elementwise``/``Vector``/``Matrix`` leaves change only the
element/vector/matrix whose input changed; ``Restructure`` outputs only input values;
``Reduction`` outputs fewer elements; ``Param`` iff there are parameters.
"""

from __future__ import annotations

import pytest
import torch
from primitive_cases import CASES, IDENTITY_LIKE, Case, rebuild, tensors_of
from torch import nn

import modify
from modify import traits
from modify.traits import (
    ARITY,
    LINEARITY,
    PARAMETERS,
    Binary,
    Elementwise,
    Matrix,
    NonLinear,
    Param,
    ParamFree,
    Reduction,
    Restructure,
    Ternary,
    Tuple,
    Unary,
    Vector,
)
from modify.traits import Linear as LinearTrait

EXCLUSIVE_GROUPS = (ARITY, PARAMETERS, LINEARITY)

IDS = [case.id for case in CASES]
PUBLIC_LEAVES = sorted(
    (obj for name in modify.__all__ if isinstance(obj := getattr(modify, name), type) and issubclass(obj, modify.Leaf)),
    key=lambda cls: cls.__name__,
)
PUBLIC_LEAVES.remove(modify.Leaf)


@pytest.mark.parametrize("cls", PUBLIC_LEAVES, ids=[cls.__name__ for cls in PUBLIC_LEAVES])
def test_every_public_leaf_has_exactly_one_trait_per_exclusive_group(cls):
    for group in EXCLUSIVE_GROUPS:
        assert len([t for t in group if issubclass(cls, t)]) == 1, (cls, group)


def test_the_public_leaves_are_all_there():
    names = {cls.__name__ for cls in PUBLIC_LEAVES}
    required = (
        "Identity Copy Add Sub Mul Div MatMul Scale Sum Mean Max Softmax LogSoftmax ReLU GELU SiLU Tanh Sigmoid Exp "
        "Dropout Reshape Flatten Transpose Permute Rearrange Split Cat Stack Index Linear Conv1d Conv2d Embedding "
        "MaxPool2d AvgPool2d AdaptiveAvgPool2d ElementwiseAffine BatchNorm1d BatchNorm2d LayerNorm RMSNorm GroupNorm "
        "ScaledDotProductAttention RotaryEmbedding Print PrintShape Breakpoint"
    ).split()
    assert set(required) <= names


def _double(case: Case, gen):
    module = case.make().double().train(case.train)
    value = case.inputs(gen)
    return module, rebuild(value, [t.double() if t.is_floating_point() else t for t in tensors_of(value)])


def _call(module, value):
    torch.manual_seed(1)  # dropout draws the same mask every call
    return module(value)


FLOAT_CASES = [c for c in CASES if not any(t.dtype == torch.int64 for t in tensors_of(c.inputs(torch.Generator())))]


@pytest.mark.parametrize("case", FLOAT_CASES, ids=[c.id for c in FLOAT_CASES])
def test_linearity_trait_is_true(case: Case):
    module, x = _double(case, torch.Generator().manual_seed(0))
    _, y = _double(case, torch.Generator().manual_seed(1))
    a = 0.3
    mix = rebuild(x, [a * s + (1 - a) * t for s, t in zip(tensors_of(x), tensors_of(y))])
    left = tensors_of(_call(module, mix))
    right = [a * s + (1 - a) * t for s, t in zip(tensors_of(_call(module, x)), tensors_of(_call(module, y)))]
    gap = max((lhs - rhs).abs().max().item() for lhs, rhs in zip(left, right))
    found = modify.traits_of(module)
    if LinearTrait in found:
        assert gap < 1e-9
    elif case.shows_nonlinearity:
        assert NonLinear in found and gap > 1e-3


SCOPE_DEPTH = {Elementwise: 0, Vector: 1, Matrix: 2}


def _scope(found: frozenset[type]) -> type | None:
    scopes = [t for t in (Matrix, Vector, Elementwise) if t in found]
    return scopes[0] if scopes else None


def _leading_shape(case: Case) -> torch.Size | None:
    """The shape of the units the case's scope names, if every operand shares it."""
    scope = _scope(modify.traits_of(case.make()))
    inputs = tensors_of(case.inputs(torch.Generator()))
    lead = inputs[0].shape[: inputs[0].dim() - SCOPE_DEPTH[scope]] if scope else None
    same = lead is not None and all(t.shape[: len(lead)] == lead for t in inputs)
    return lead if same else None  # broadcast operands, grouped-query heads: no common units


SCOPED = [c for c in FLOAT_CASES if _leading_shape(c) is not None]


@pytest.mark.parametrize("case", SCOPED, ids=[c.id for c in SCOPED])
def test_scope_trait_is_true(case: Case, gen):
    """Perturbing one element (vector, matrix) changes that one of the output and no other."""
    module, x = _double(case, gen)
    inputs, lead = tensors_of(x), _leading_shape(case)
    unit = tuple(size - 1 for size in lead)
    perturbed = []
    for i, t in enumerate(inputs):
        t = t.clone()
        t[unit] += 10.0 * (i + 1) + torch.randn(t[unit].shape, generator=gen, dtype=t.dtype)
        perturbed.append(t)
    before, after = tensors_of(_call(module, x)), tensors_of(_call(module, rebuild(x, perturbed)))
    others = torch.ones(lead, dtype=torch.bool)
    others[unit] = False
    for b, a in zip(before, after):
        assert b.shape[: len(lead)] == lead
        assert torch.equal(b[others], a[others])
    assert any(not torch.equal(b[unit], a[unit]) for b, a in zip(before, after))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parameters_arity_restructure_reduction_traits_are_true(case: Case, gen):
    module = case.make().train(case.train)
    found, value = modify.traits_of(module), case.inputs(gen)
    assert (Param in found) == any(True for _ in module.parameters())
    assert (ParamFree in found) != (Param in found)
    expected_arity = {torch.Tensor: Unary, 2: Binary, 3: Ternary}
    arity = expected_arity[torch.Tensor] if isinstance(value, torch.Tensor) else expected_arity.get(len(value))
    assert arity in found or Tuple in found or isinstance(module, IDENTITY_LIKE)
    out = tensors_of(_call(module, value))
    values = torch.cat([t.flatten() for t in tensors_of(value)])
    if Restructure in found:
        assert all(torch.isin(o, values).all() for o in out)
    if Reduction in found:
        assert sum(o.numel() for o in out) < values.numel()


def test_identity_like_leaves_are_tagged_unary():
    for cls in IDENTITY_LIKE:
        assert issubclass(cls, Unary)


def test_instance_scopes_follow_arguments():
    assert Vector in modify.traits_of(modify.Softmax()) and Vector not in modify.traits_of(modify.Softmax(0))
    assert Vector not in modify.traits_of(modify.LogSoftmax(dim=1))
    assert Matrix in modify.traits_of(modify.LayerNorm((3, 4))) and Vector not in modify.traits_of(
        modify.LayerNorm((3, 4))
    )
    assert Vector in modify.traits_of(modify.RMSNorm(4))
    assert isinstance(modify.Softmax(0), Vector)  # the class keeps its mixins


# ---------------------------------------------------------------------------------------------
# Inference for combinators


def names(module: nn.Module) -> set[str]:
    return {t.__name__ for t in modify.traits_of(module)}


def test_sequential_is_linear_iff_all_children_are_and_param_iff_any():
    assert names(modify.Sequential(modify.Scale(2.0), modify.Transpose(0, 1))) == {"Unary", "ParamFree", "Linear"}
    assert names(modify.Sequential(modify.Linear(3, 3), modify.Scale(2.0))) == {"Unary", "Param", "Linear", "Vector"}
    mlp = modify.Sequential(modify.Linear(3, 8), modify.GELU(), modify.Linear(8, 3))
    assert names(mlp) == {"Unary", "Param", "NonLinear", "Vector"}
    assert names(modify.Sequential(modify.ReLU(), modify.Exp())) == {"Unary", "ParamFree", "NonLinear", "Elementwise"}
    assert names(modify.Sequential(modify.Softmax(), modify.LayerNorm((2, 3)))) == {
        "Unary",
        "ParamFree",
        "NonLinear",
        "Matrix",
    }


def test_sequential_takes_the_arity_of_its_first_child():
    assert Binary in modify.traits_of(modify.Sequential(modify.Add(), modify.ReLU()))
    assert Tuple in modify.traits_of(modify.Sequential(modify.Cat(), modify.ReLU()))
    assert names(modify.Sequential()) == {"Unary", "ParamFree", "Linear"}


def test_parallel_arity_counts_branches():
    two, three, four = (modify.Parallel(*[modify.Identity() for _ in range(n)]) for n in (2, 3, 4))
    assert Binary in modify.traits_of(two) and Ternary in modify.traits_of(three) and Tuple in modify.traits_of(four)
    for p in (two, three, four):
        assert len([t for t in ARITY if t in modify.traits_of(p)]) == 1
    assert names(modify.Parallel(modify.Linear(2, 2), modify.ReLU())) == {"Binary", "Param", "NonLinear", "Vector"}


def test_residual_and_fork_inference():
    assert names(modify.Residual(modify.Scale(2.0))) == {"Unary", "ParamFree", "Linear"}
    assert names(modify.Residual(modify.Linear(3, 3))) == {"Unary", "Param", "Linear"}
    assert names(modify.Residual(modify.Sequential(modify.Linear(3, 3), modify.ReLU()))) == {
        "Unary",
        "Param",
        "NonLinear",
    }
    assert names(modify.Fork(modify.ReLU(), modify.Exp())) == {"Unary", "ParamFree", "NonLinear"}


def test_plain_torch_modules_get_documented_traits():
    assert names(nn.ReLU()) == {"Unary", "ParamFree", "NonLinear", "Elementwise"}
    assert names(nn.Linear(2, 2)) == {"Unary", "Param", "Linear", "Vector"}
    assert names(nn.LSTM(2, 2)) == {"Param"}  # undocumented: only what can be read off
    mixed = modify.Sequential(modify.Linear(2, 2), nn.LSTM(2, 2))
    assert LinearTrait not in modify.traits_of(mixed) and NonLinear not in modify.traits_of(mixed)


def test_traits_of_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        modify.traits_of(torch.zeros(1))


def test_trait_classes_are_exported_from_modify_traits():
    for group in EXCLUSIVE_GROUPS:
        for t in group:
            assert getattr(traits, t.__name__) is t and issubclass(t, traits.Trait)
