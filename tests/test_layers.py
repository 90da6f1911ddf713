"""Parametrised layers and norms against torch.nn: state dicts both ways, norm + affine, init."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from torch import nn

import modify

LAYERS = [
    ("Linear", lambda: modify.Linear(4, 3), lambda: nn.Linear(4, 3), (2, 4)),
    ("Linear-nobias", lambda: modify.Linear(4, 3, bias=False), lambda: nn.Linear(4, 3, bias=False), (2, 4)),
    ("Conv1d", lambda: modify.Conv1d(2, 4, 3, stride=2), lambda: nn.Conv1d(2, 4, 3, stride=2), (2, 2, 9)),
    (
        "Conv2d",
        lambda: modify.Conv2d(4, 2, 3, groups=2, padding=1),
        lambda: nn.Conv2d(4, 2, 3, groups=2, padding=1),
        (1, 4, 5, 5),
    ),
    ("Embedding", lambda: modify.Embedding(6, 3), lambda: nn.Embedding(6, 3), None),
]


@pytest.mark.parametrize(("name", "ours", "theirs", "shape"), LAYERS, ids=[row[0] for row in LAYERS])
def test_torch_nn_state_dict_loads_as_is_and_back(name, ours, theirs, shape, gen):
    mine, reference = ours(), theirs()
    mine.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randint(6, (2, 5), generator=gen) if shape is None else torch.randn(shape, generator=gen)
    assert_close(mine(x), reference(x))
    # the reverse direction: a fresh torch.nn module loads ours, keys and shapes equal
    other = theirs()
    other.load_state_dict(mine.state_dict(), strict=True)
    assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in mine.state_dict().items()}
    assert_close(other(x), mine(x))


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


INIT_LAYERS = [
    ("Linear", lambda **kw: modify.Linear(64, 48, **kw)),
    ("Conv1d", lambda **kw: modify.Conv1d(16, 48, 4, **kw)),
    ("Conv2d", lambda **kw: modify.Conv2d(8, 48, 3, **kw)),
]


@pytest.mark.parametrize(("name", "make"), INIT_LAYERS, ids=[row[0] for row in INIT_LAYERS])
def test_weight_and_bias_init_from_distributions(name, make):
    layer = make(weight_init=torch.distributions.Normal(2.0, 0.5), bias_init=torch.distributions.Uniform(-3.0, -2.0))
    w = layer.weight.detach()
    assert abs(w.mean().item() - 2.0) < 0.05 and abs(w.std().item() - 0.5) < 0.05
    assert layer.bias.min() >= -3.0 and layer.bias.max() <= -2.0 and layer.bias.std() > 0.1
    assert layer.weight.requires_grad and isinstance(layer.weight, nn.Parameter)


@pytest.mark.parametrize(("name", "make"), INIT_LAYERS, ids=[row[0] for row in INIT_LAYERS])
def test_weight_and_bias_init_from_callables(name, make):
    layer = make(weight_init=nn.init.ones_, bias_init=nn.init.zeros_)
    assert torch.equal(layer.weight, torch.ones_like(layer.weight))
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    seen = []
    make(weight_init=lambda t: seen.append(tuple(t.shape)))
    assert seen == [tuple(layer.weight.shape)]


def test_kaiming_normal_init_has_its_variance():
    layer = modify.Linear(400, 300, weight_init=nn.init.kaiming_normal_)
    assert abs(layer.weight.std().item() - (2 / 400) ** 0.5) < 0.005


def test_embedding_init_and_padding_row():
    table = modify.Embedding(50, 40, padding_idx=3, weight_init=torch.distributions.Normal(0.0, 0.02))
    assert torch.equal(table.weight[3], torch.zeros(40))
    assert abs(table.weight.std().item() - 0.02) < 0.002
    table(torch.tensor([3, 4])).sum().backward()
    assert torch.equal(table.weight.grad[3], torch.zeros(40)) and table.weight.grad[4].abs().sum() > 0


def test_reset_parameters_reapplies_the_init():
    layer = modify.Linear(3, 2, weight_init=nn.init.ones_, bias_init=nn.init.zeros_)
    with torch.no_grad():
        layer.weight.mul_(5)
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones(2, 3))


def test_init_rejects_non_scalar_distributions_and_other_objects():
    with pytest.raises(ValueError, match="scalar"):
        modify.Linear(3, 2, weight_init=torch.distributions.Normal(torch.zeros(2), 1.0))
    with pytest.raises(TypeError, match="weight_init"):
        modify.Linear(3, 2, weight_init=0.02)
