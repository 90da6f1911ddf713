"""Property tests: random model trees, random rewrites; the original never changes, the rest is shared."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modify
from modify import traits
from tests.helpers import assert_close, assert_state_equal, state_snapshot

D = 4
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LEAVES = [
    lambda: modify.Linear(D, D),
    lambda: modify.Scale(0.5),
    lambda: modify.ReLU(),
    lambda: modify.Tanh(),
    lambda: modify.LayerNorm(D),
    lambda: modify.ElementwiseAffine(D),
    lambda: modify.Identity(),
    lambda: nn.Linear(D, D),  # wrapped as an opaque leaf
]


def _residual(children: list[nn.Module]) -> nn.Module:
    branch = modify.Sequential(*children[1:])
    return modify.Sequential(modify.Copy(2), modify.Parallel(children[0], branch), modify.Add())


def _shared(children: list[nn.Module]) -> nn.Module:
    return modify.Sequential(children[0], modify.Tanh(), children[0])  # the same object twice


leaves = st.sampled_from(LEAVES).map(lambda make: make())
trees = st.recursive(
    leaves,
    lambda inner: st.tuples(st.sampled_from([lambda cs: modify.Sequential(*cs), _residual, _shared]),
                            st.lists(inner, min_size=1, max_size=3)).map(lambda pair: pair[0](pair[1])),
    max_leaves=8,
)

CRITERIA = [
    (modify.Linear,),
    (traits.Elementwise,),
    (traits.Param,),
    (traits.NonLinear, "?*"),
    (modify.Sequential, "*.*"),
    (lambda path, m: path.count(".") == 1,),
    ("*1",),
]
REPLACEMENTS = [
    lambda m: modify.Identity(),
    lambda m: modify.Scale(2.0),
    lambda m: modify.Sequential(m, modify.Identity()),
]


def snapshot(model: nn.Module, x: torch.Tensor):
    return (
        model(x),
        state_snapshot(model),
        [(path, id(m)) for path, m in model.named_modules(remove_duplicate=False)],
        [id(p) for p in model.parameters()],
    )


def assert_unchanged(model: nn.Module, x: torch.Tensor, before) -> None:
    out, state, positions, params = before
    assert torch.equal(model(x), out)
    assert_state_equal(model, state)
    assert [(path, id(m)) for path, m in model.named_modules(remove_duplicate=False)] == positions
    assert [id(p) for p in model.parameters()] == params


def walk_leaves(module: nn.Module, path: str = ""):
    """The positions the rewrite walk reaches that are not combinators (independent of modify's walk)."""
    if not isinstance(module, modify.Combinator):
        yield path, module
        return
    for name, child in module._modules.items():  # every path, shared children included
        yield from walk_leaves(child, f"{path}.{name}" if path else name)


def untouched_leaves(model: nn.Module, matched: list[str]) -> list[tuple[str, nn.Module]]:
    def touched(path: str) -> bool:
        return any(q == "" or path == q or path.startswith(q + ".") for q in matched)

    return [(path, m) for path, m in walk_leaves(model) if not touched(path)]


def opaque_inside(model: nn.Module, matched: list[str]) -> bool:
    leaves_ = [p for p, _ in walk_leaves(model)]
    return any(q.startswith(p + ".") or (p == "" and q) for q in matched for p in leaves_)


@SETTINGS
@given(model=trees, where=st.sampled_from(CRITERIA), fn=st.sampled_from(REPLACEMENTS))
def test_random_rewrite_leaves_original_unchanged_and_shares_untouched(model, where, fn):
    # The replacements map a tensor to a tensor: only such matches (not Copy, nor tuple-takers) keep
    # the sibling runnable.
    where = (*where, traits.Unary, lambda path, m: not isinstance(m, modify.Copy))
    x = torch.randn(3, D)
    before = snapshot(model, x)
    matched = modify.select(model, *where).paths()
    if opaque_inside(model, matched):
        return  # refused by design (tested in test_select.py)
    new = modify.rewrite(model, fn, *where)
    assert_unchanged(model, x, before)
    for path, leaf in untouched_leaves(model, matched):
        assert new.get_submodule(path) is leaf, path
    new_params = {id(p) for p in new.parameters()}
    for path, leaf in untouched_leaves(model, matched):
        assert all(id(p) in new_params for p in leaf.parameters())
    if not matched:
        assert new is model
    new(x)  # every replacement maps (B, D) -> (B, D): the sibling runs


@SETTINGS
@given(model=trees)
def test_random_lora_merge_strip(model):
    x = torch.randn(3, D)
    before = snapshot(model, x)
    if not modify.select(model, modify.Linear):
        with pytest.raises(ValueError, match="matches no layer"):  # nothing to adapt is an error, not a no-op
            modify.lora(model, rank=2, alpha=3.0)
        return
    adapted = modify.lora(model, rank=2, alpha=3.0)
    assert torch.equal(adapted(x), before[0])
    with torch.no_grad():
        for p in modify.lora_parameters(adapted):
            p.normal_()
    merged = modify.merge_lora(adapted)
    assert_close(merged(x), adapted(x), atol=1e-4, rtol=1e-4)
    assert list(merged.state_dict()) == list(model.state_dict())
    stripped = modify.strip_lora(adapted)
    assert [(p, id(m)) for p, m in stripped.named_modules() if not isinstance(m, modify.Combinator)] == [
        (p, id(m)) for p, m in model.named_modules() if not isinstance(m, modify.Combinator)
    ]
    assert_unchanged(model, x, before)


@SETTINGS
@given(model=trees, where=st.sampled_from(CRITERIA))
def test_random_identity_insertions_keep_outputs(model, where):
    x = torch.randn(3, D)
    before = snapshot(model, x)
    if opaque_inside(model, modify.select(model, *where).paths()):
        return
    new = modify.select(model, *where).insert_after(lambda m: modify.Identity())
    assert_close(new(x), before[0])
    assert modify.rewrite(model, lambda m: m, *where) is model
    assert_unchanged(model, x, before)


@SETTINGS
@given(model=trees)
def test_random_mutable_and_flat_leave_values_and_outputs(model):
    x = torch.randn(3, D)
    before = snapshot(model, x)
    mut = modify.mutable(model)
    assert torch.equal(mut(x), before[0]) and modify.mutable(mut) is mut
    assert list(mut.state_dict()) == list(model.state_dict())
    for name, p in list(mut.named_parameters()):
        path, _, attr = name.rpartition(".")
        setattr(mut.get_submodule(path), attr, p * 2)
    assert_unchanged(model, x, before)
    if next(model.parameters(), None) is not None:
        f = modify.flat(model)
        assert_close(f(x), before[0])
        assert_unchanged(model, x, before)  # values unchanged; only their storage moved
