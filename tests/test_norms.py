"""Normalisation leaves against torch.nn: norm + ElementwiseAffine equals the torch.nn norm; errors."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from torch import nn

import modify


def _check_training_steps(ours: nn.Module, reference: nn.Module, shape: tuple[int, ...], gen, steps: int = 3) -> None:
    """Outputs, parameter gradients and state agree over a few train steps, then in eval."""
    for _ in range(steps):
        x = torch.randn(shape, generator=gen) * 3 + 1
        out, ref = ours(x), reference(x)
        assert_close(out, ref, atol=1e-5)
        out.square().sum().backward()
        ref.square().sum().backward()
        mine = dict(ours.named_parameters())
        for key, p in reference.named_parameters():
            assert_close(mine[key].grad, p.grad, atol=1e-4)
    for key, value in reference.state_dict().items():
        assert_close(ours.state_dict()[key], value)
    ours.eval(), reference.eval()
    x = torch.randn(shape, generator=gen)
    assert_close(ours(x), reference(x), atol=1e-5)


def test_layernorm_then_affine_is_torch_layernorm(gen):
    reference = nn.LayerNorm(6)
    ours = modify.Sequential(modify.LayerNorm(6), modify.ElementwiseAffine(6))
    _check_paired(ours, reference, (2, 3, 6), gen)


def test_layernorm_over_two_axes_then_affine_is_torch_layernorm(gen):
    reference = nn.LayerNorm((3, 6), eps=1e-3)
    ours = modify.Sequential(modify.LayerNorm((3, 6), eps=1e-3), modify.ElementwiseAffine((3, 6)))
    _check_paired(ours, reference, (2, 3, 6), gen)


def test_batchnorm2d_then_affine_is_torch_batchnorm2d_with_running_stats(gen):
    reference = nn.BatchNorm2d(3, momentum=0.3)
    ours = modify.Sequential(modify.BatchNorm2d(3, momentum=0.3), modify.ElementwiseAffine(3, dim=1))
    _check_paired(ours, reference, (4, 3, 5, 5), gen)


def test_batchnorm1d_cumulative_average_then_affine_is_torch(gen):
    reference = nn.BatchNorm1d(3, momentum=None)
    ours = modify.Sequential(modify.BatchNorm1d(3, momentum=None), modify.ElementwiseAffine(3, dim=1))
    _check_paired(ours, reference, (6, 3, 4), gen)


def test_rmsnorm_then_affine_without_bias_is_torch_rmsnorm(gen):
    reference = nn.RMSNorm(5, eps=1e-6)
    ours = modify.Sequential(modify.RMSNorm(5, eps=1e-6), modify.ElementwiseAffine(5, bias=False))
    _check_paired(ours, reference, (2, 3, 5), gen)


def test_groupnorm_then_affine_is_torch_groupnorm(gen):
    reference = nn.GroupNorm(2, 4)
    ours = modify.Sequential(modify.GroupNorm(2, 4), modify.ElementwiseAffine(4, dim=1))
    _check_paired(ours, reference, (3, 4, 2, 2), gen)


def _check_paired(ours: modify.Sequential, reference: nn.Module, shape, gen) -> None:
    """``ours`` is (norm, affine); the reference's weight/bias go to the affine, buffers to the norm."""
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p))
    state = {("1." if k in ("weight", "bias") else "0.") + k: v for k, v in reference.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    _check_training_steps(_Flat(ours), reference, shape, gen)


class _Flat(nn.Module):
    """A (norm, affine) Sequential seen with the reference's flat names (``weight``, ``running_mean``)."""

    def __init__(self, inner: modify.Sequential):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

    def named_parameters(self, *args, **kwargs):
        return ((k.split(".", 1)[1], p) for k, p in self.inner.named_parameters())

    def state_dict(self, *args, **kwargs):
        return {k.split(".", 1)[1]: v for k, v in self.inner.state_dict().items()}


def test_norms_refuse_an_affine_argument():
    for make in (
        lambda: modify.LayerNorm(4, elementwise_affine=True),
        lambda: modify.LayerNorm(4, elementwise_affine=False),
        lambda: modify.LayerNorm(4, bias=True),
        lambda: modify.RMSNorm(4, elementwise_affine=True),
        lambda: modify.GroupNorm(2, 4, affine=True),
        lambda: modify.BatchNorm1d(4, affine=True),
        lambda: modify.BatchNorm2d(4, affine=False),
    ):
        with pytest.raises(TypeError, match="no affine part.*ElementwiseAffine"):
            make()


def test_batchnorm_buffers_load_from_torch_state_dict(gen):
    reference = nn.BatchNorm2d(3, affine=False)
    reference(torch.randn(4, 3, 2, 2, generator=gen))
    ours = modify.BatchNorm2d(3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert int(ours.num_batches_tracked) == 1
    assert [name for name, _ in ours.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 2, 2, generator=gen)
    assert_close(ours(x), reference(x))



@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: modify.GroupNorm(0, 4), "GroupNorm: num_groups must be at least 1, got 0"),
        (lambda: modify.GroupNorm(-2, 4), "GroupNorm: num_groups must be at least 1, got -2"),
        (lambda: modify.GroupNorm(2, 0), "GroupNorm: num_channels must be at least 1, got 0"),
        (lambda: modify.GroupNorm(3, 4), "GroupNorm: num_channels 4 not divisible by num_groups 3"),
        (lambda: modify.BatchNorm1d(0), "BatchNorm1d: num_features must be at least 1, got 0"),
        (lambda: modify.BatchNorm2d(-3), "BatchNorm2d: num_features must be at least 1, got -3"),
        (lambda: modify.ElementwiseAffine(0), "ElementwiseAffine: shape must be non-empty sizes of at least 1, got 0"),
        (lambda: modify.ElementwiseAffine((3, -1)), "ElementwiseAffine: shape must be non-empty sizes of at least 1"),
        (lambda: modify.ElementwiseAffine(()), "ElementwiseAffine: shape must be non-empty"),
        (lambda: modify.LayerNorm(0), "LayerNorm: shape must be non-empty sizes of at least 1, got 0"),
        (lambda: modify.RMSNorm((4, 0)), "RMSNorm: shape must be non-empty sizes of at least 1"),
        (lambda: modify.AffineGroupNorm(0, 4), "AffineGroupNorm: num_groups must be at least 1, got 0"),
    ],
)
def test_norm_constructors_refuse_bad_sizes_naming_the_class(make, fragment):
    with pytest.raises(ValueError) as info:
        make()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: modify.ElementwiseAffine(3, dtype=torch.int64),
        lambda: modify.BatchNorm2d(3, dtype=torch.int32),
    ],
)
def test_norms_refuse_integer_dtypes(make):
    with pytest.raises(TypeError, match=r"(ElementwiseAffine|BatchNorm2d): dtype must be a floating-point dtype"):
        make()

