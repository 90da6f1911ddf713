"""``Rearrange``'s per-shape plan against ``einops.rearrange`` itself: same values, same views, same errors."""

from __future__ import annotations

import einops
import pytest
import torch

import modify
from modify.primitives.rearrange_plan import RearrangePlan

CASES = [
    ("b t (k h d) -> b (k h) t d", dict(k=3, h=2), (2, 5, 24)),
    ("b h t d -> b t (h d)", {}, (2, 3, 4, 5)),
    ("b t (h d) -> b h t d", dict(d=4), (1, 7, 8)),
    ("a b c -> c b a", {}, (2, 3, 4)),
    ("a b c -> a b c", {}, (2, 3, 4)),
    ("(a b) c -> a (b c)", dict(a=2), (6, 5)),
    ("b 1 c -> b c 1", {}, (3, 1, 4)),
    ("b () c -> (b c)", {}, (3, 1, 4)),
    ("b ... d -> d ... b", {}, (2, 3, 4, 5)),
    ("b ... d -> d ... b", {}, (2, 5)),  # "..." standing for no axis
    ("... (a0 a1) -> ... a0 a1", dict(a0=4), (2, 3, 8)),  # modify.convert's view
    ("... (a0 a1) -> ... a0 a1", dict(a0=4), (8,)),
    ("a b ... -> (a b) ...", {}, (2, 3, 4, 5)),
    ("... a b -> ... (b a)", {}, (2, 3, 4)),
]


@pytest.mark.parametrize("pattern, lengths, shape", CASES)
def test_the_plan_equals_einops_in_values_strides_and_gradients(pattern, lengths, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    plan = RearrangePlan(pattern, lengths)
    for _ in range(2):  # the first call works the plan out, the second uses it
        ours, theirs = plan(x), einops.rearrange(x, pattern, **lengths)
        assert ours.shape == theirs.shape and ours.stride() == theirs.stride()
        assert torch.equal(ours, theirs) and ours._is_view() == theirs._is_view()
    torch.testing.assert_close(torch.autograd.grad(ours.sum() * 2, x), torch.autograd.grad(theirs.sum() * 2, x))
    torch.testing.assert_close(modify.Rearrange(pattern, **lengths)(x), theirs)


@pytest.mark.parametrize(
    "pattern, lengths, shape",
    [
        ("b t (h d) -> b h t d", dict(d=5), (1, 7, 8)),  # 8 is not a multiple of 5
        ("b t d -> b d t", {}, (2, 3)),  # too few axes
        ("a b -> a c", {}, (2, 3)),  # an unknown output axis
        ("a b -> b a", dict(c=2), (2, 3)),  # a length for an axis not in the pattern
        ("... (a0 a1) -> ... a0 a1", dict(a0=5), (2, 8)),  # 8 is not a multiple of 5
        ("a b ... -> (a b) ...", {}, (2,)),  # fewer axes than the named ones
    ],
)
def test_inputs_that_do_not_fit_raise_einops_own_error(pattern, lengths, shape):
    x = torch.randn(shape)
    with pytest.raises(einops.EinopsError) as expected:
        einops.rearrange(x, pattern, **lengths)
    with pytest.raises(einops.EinopsError) as ours:
        RearrangePlan(pattern, lengths)(x)
    assert str(ours.value) == str(expected.value)



@pytest.mark.parametrize("pattern, lengths", [("... (a0 a1) -> ... a0 a1", dict(a0=2)), ("b ... d -> d ... b", {})])
def test_an_unbracketed_ellipsis_is_planned_once_per_shape(pattern, lengths):
    plan = RearrangePlan(pattern, lengths)
    plan(torch.randn(2, 3, 4))
    assert list(plan.plans) == [torch.Size((2, 3, 4))]


def test_a_bracketed_ellipsis_goes_to_einops():
    x = torch.randn(2, 3, 4)
    plan = RearrangePlan("b ... -> b (...)", {})
    assert torch.equal(plan(x), einops.rearrange(x, "b ... -> b (...)")) and not plan.plans
