"""Restructuring leaves beyond the shared table: what Copy and Fork accept; Positions."""

from __future__ import annotations

import pytest
import torch

import modify

NOT_VALUES = [None, [torch.ones(2)], {"x": torch.ones(2)}, 3.0, (torch.ones(2), None), (torch.ones(2), [torch.ones(1)])]


@pytest.mark.parametrize("value", NOT_VALUES, ids=lambda v: type(v).__name__)
def test_copy_refuses_anything_but_a_tensor_or_nested_tuple_naming_the_path(value):
    model = modify.Sequential(embed=modify.Sequential(copy=modify.Copy(2)))
    with pytest.raises(TypeError, match=r"^Copy at 'embed\.copy' expected a tensor or a tuple of them, got a "):
        model(value)


@pytest.mark.parametrize("value", NOT_VALUES, ids=lambda v: type(v).__name__)
def test_fork_refuses_non_values_at_its_copy(value):
    with pytest.raises(TypeError, match=r"^Copy at '0' expected a tensor or a tuple of them"):
        modify.Fork(modify.Identity(), modify.Identity())(value)


def test_copy_passes_tensors_and_nested_tuples_through_as_the_same_objects():
    x = torch.ones(2)
    nested = (x, (x, torch.zeros(1)))
    assert all(v is nested for v in modify.Copy(3)(nested))
    a, b = modify.Fork(modify.Identity(), modify.Scale(2.0))(x)
    assert a is x and torch.equal(b, 2 * x)


def test_positions_are_arange_of_the_last_axis_broadcast():
    positions = modify.Positions(limit=4)
    ids = torch.tensor([[7, 3, 9], [1, 1, 1]])
    out = positions(ids)
    assert out.dtype == torch.int64 and torch.equal(out, torch.arange(3).expand(2, 3))
    assert torch.equal(positions(torch.zeros(5, 4)), torch.arange(4).expand(5, 4))
    assert modify.traits_of(positions) == {modify.traits.Unary, modify.traits.ParamFree, modify.traits.Linear}


def test_positions_refuse_sequences_past_the_limit_and_bad_limits():
    model = modify.Sequential(wpe=modify.Positions(limit=4))
    with pytest.raises(ValueError, match=r"^Positions at 'wpe' expected \(\*, T\) with T <= 4, got a tensor of shape \(1, 5\)"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="Positions limit must be at least 1, got 0"):
        modify.Positions(limit=0)
