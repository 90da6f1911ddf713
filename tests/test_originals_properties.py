"""Property tests (issue 11): no rewriter or functional view ever changes the model it is given.

Random trees with shared modules, BatchNorm statistics, frozen parameters, ``torch.no_grad`` and
training mode; calls that raise half-way. After every operation the original's ``state_dict``,
parameter objects, ``requires_grad`` flags and eval outputs are exactly as before.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modify
from tests.helpers import assert_state_equal, state_snapshot

D = 4
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LEAVES = [
    lambda: modify.Linear(D, D),
    lambda: modify.ReLU(),
    lambda: modify.BatchNorm1d(D),
    lambda: modify.ElementwiseAffine(D),
    lambda: nn.Linear(D, D),  # wrapped as an opaque leaf
    lambda: nn.BatchNorm1d(D),
]


class Boom(modify.Leaf, modify.traits.Unary, modify.traits.ParamFree, modify.traits.Linear):
    """Raises at call: an exception half-way through a forward."""

    def forward(self, x):
        raise RuntimeError("boom")


leaves = st.sampled_from(LEAVES).map(lambda make: make())
trees = st.recursive(
    leaves,
    lambda inner: st.tuples(
        st.sampled_from([lambda cs: modify.Sequential(*cs), lambda cs: modify.Residual(modify.Sequential(*cs)),
                         lambda cs: modify.Sequential(cs[0], modify.Tanh(), cs[0])]),
        st.lists(inner, min_size=1, max_size=3),
    ).map(lambda pair: pair[0](pair[1])),
    max_leaves=6,
)


def record(model: nn.Module, x: torch.Tensor):
    training = [m.training for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out = model(x)
    for m, flag in zip(model.modules(), training):
        m.training = flag
    params = [(p, p.requires_grad) for p in model.parameters()]
    return out, state_snapshot(model), params


def assert_unchanged(model: nn.Module, x: torch.Tensor, before) -> None:
    out, state, params = before
    assert_state_equal(model, state)
    assert [(p, p.requires_grad) for p in model.parameters()] == params  # same objects, same flags
    assert torch.equal(record(model, x)[0], out)


def random_like(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.randn_like(t) for name, t in tensors.items()}


@SETTINGS
@given(model=trees, frozen=st.lists(st.booleans(), min_size=8, max_size=8), no_grad=st.booleans(),
       train=st.booleans())
def test_no_rewriter_or_view_changes_the_original(model, frozen, no_grad, train):
    for p, freeze in zip(model.parameters(), frozen):
        p.requires_grad_(not freeze)
    model.train(train)
    x = torch.randn(3, D)
    before = record(model, x)
    grad_mode = torch.no_grad() if no_grad else contextlib.nullcontext()
    names = dict(model.named_parameters(remove_duplicate=False))
    with grad_mode:
        # functional views: every name (shared modules' names too), half the names, raising half-way
        values = {id(p): torch.randn_like(p) for p in names.values()}
        modify.functional_call(model, {name: values[id(p)] for name, p in names.items()}, x)
        assert_unchanged(model, x, before)
        half = dict(list(random_like(dict(model.named_parameters())).items())[::2])
        modify.functional_call(model, half, x, strict=False)
        assert_unchanged(model, x, before)
        failing = modify.Sequential(model, Boom())
        with pytest.raises(RuntimeError, match="boom"):
            modify.functional_call(failing, random_like(dict(failing.named_parameters())), x)
        assert_unchanged(model, x, before)
        # mutable: an in-place op on a still-shared parameter raises, whatever the mode
        mut = modify.mutable(model)
        for name in names:
            path, _, attr = name.rpartition(".")
            owner = mut.get_submodule(path)
            with pytest.raises(RuntimeError):
                setattr(owner, attr, getattr(owner, attr).add_(1))
        assert_unchanged(model, x, before)
        # rewriters, including one whose replacement function raises half-way
        siblings = [
            modify.rewrite(model, lambda m: modify.GELU(), modify.ReLU),
            modify.select(model, modify.traits.Param).insert_after(lambda m: modify.Identity()),
            modify.lora(model, rank=2, where=(nn.Linear,)) if modify.select(model, nn.Linear) else model,
            modify.fuse(model),
        ]
        siblings += [modify.merge_lora(siblings[2]), modify.strip_lora(siblings[2])]
        calls = []

        def fail_on_second(module: nn.Module) -> nn.Module:
            calls.append(module)
            if len(calls) == 2:
                raise RuntimeError("boom")
            return modify.Identity()

        leaves = (modify.traits.Param, lambda path, m: not isinstance(m, modify.Combinator))
        if len(modify.select(model, *leaves).modules()) >= 2:
            with pytest.raises(RuntimeError, match="boom"):
                modify.rewrite(model, fail_on_second, *leaves)
        assert_unchanged(model, x, before)
    if not train:
        for sibling in siblings:
            sibling(x)
    assert_unchanged(model, x, before)


def test_boom_raises():
    with pytest.raises(RuntimeError, match="boom"):
        Boom()(torch.ones(1))
