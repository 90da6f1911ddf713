"""Parametrised layers against torch.nn: state dicts both ways, init, constructor errors."""

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


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda: modify.Linear(0, 3), ValueError, "Linear: in_features must be at least 1, got 0"),
        (lambda: modify.Linear(4, -1), ValueError, "Linear: out_features must be at least 1, got -1"),
        (lambda: modify.Linear(4, 3, dtype=torch.int64), TypeError, "Linear: dtype must be a floating-point dtype, got torch.int64"),
        (lambda: modify.Linear(4), TypeError, "Linear() missing a required argument: 'out_features'"),
        (lambda: modify.Linear(4, 3, colour=1), TypeError, "Linear() got an unexpected keyword argument 'colour'"),
        (lambda: modify.Embedding(0, 3), ValueError, "Embedding: num_embeddings must be at least 1, got 0"),
        (lambda: modify.Embedding(5, -3), ValueError, "Embedding: embedding_dim must be at least 1, got -3"),
        (lambda: modify.Embedding(5, 3, dtype=torch.int32), TypeError, "Embedding: dtype must be a floating-point"),
        (lambda: modify.Conv2d(0, 4, 3), ValueError, "Conv2d: in_channels must be at least 1, got 0"),
        (lambda: modify.Conv1d(2, -4, 3), ValueError, "Conv1d: out_channels must be at least 1, got -4"),
        (lambda: modify.Conv2d(2, 4, 3, groups=0), ValueError, "Conv2d: groups must be at least 1, got 0"),
        (lambda: modify.Conv2d(2, 4, (3, 0)), ValueError, "Conv2d: kernel_size needs 1 or 2 values of at least 1, got (3, 0)"),
        (lambda: modify.Conv1d(2, 4, 3, stride=0), ValueError, "Conv1d: stride needs 1 or 1 values of at least 1, got 0"),
        (lambda: modify.Conv1d(2, 4, 3, padding=-1), ValueError, "Conv1d: padding needs 1 or 1 values of at least 0, got -1"),
        (lambda: modify.Conv2d(2, 4, 3, dilation=0), ValueError, "Conv2d: dilation needs 1 or 2 values of at least 1"),
        (lambda: modify.Conv2d(2, 4, 3, dtype=torch.bool), TypeError, "Conv2d: dtype must be a floating-point"),
    ],
)
def test_constructors_refuse_bad_sizes_and_dtypes_naming_the_class(make, error, fragment):
    with pytest.raises(error) as info:
        make()
    assert fragment in str(info.value)
    assert type(info.value) is error  # a plain TypeError/ValueError, raised before any allocation


def test_sizes_at_the_boundary_are_accepted():
    assert modify.Linear(1, 1)(torch.ones(2, 1)).shape == (2, 1)
    assert modify.Conv1d(1, 1, 1, padding=0)(torch.ones(1, 1, 3)).shape == (1, 1, 3)
    assert modify.Embedding(1, 1)(torch.zeros(2, dtype=torch.long)).shape == (2, 1)
