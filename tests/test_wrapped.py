"""Plain torch.nn modules inside combinators: wrapped as opaque leaves sharing everything."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import assert_state_equal, state_snapshot
from torch import nn

import modify
from modify._core.wrapped import wrap


def test_keys_stay_torch_names_and_parameters_are_shared():
    linear, norm = nn.Linear(3, 4), nn.BatchNorm1d(4)
    model = modify.Sequential(linear, norm)
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert model[0].weight is linear.weight and model[0].bias is linear.bias
    assert model[1].running_mean is norm.running_mean


def test_the_given_module_is_left_untouched(gen):
    linear = nn.Linear(3, 3)
    before_class, before = type(linear), state_snapshot(linear)
    model = modify.Sequential(linear)
    model[0].weight = nn.Parameter(torch.zeros(3, 3))  # replacing on the sibling only
    model[0].register_forward_hook(lambda *args: None)
    model.eval()
    assert type(linear) is before_class is nn.Linear and not isinstance(linear, modify.ModifyModule)
    assert linear.training and len(linear._forward_hooks) == 0
    assert_state_equal(linear, before)


def test_wrapped_module_is_still_its_class_and_computes_the_same(gen):
    conv = nn.Conv2d(2, 3, 3, padding=1)
    wrapped = modify.Sequential(conv)[0]
    assert isinstance(wrapped, nn.Conv2d) and isinstance(wrapped, modify.ModifyModule)
    assert not isinstance(wrapped, modify.Leaf)
    x = torch.randn(1, 2, 5, 5, generator=gen)
    assert torch.equal(wrapped(x), conv(x))
    assert wrap(wrapped) is wrapped and wrap(modify.ReLU()).__class__ is modify.ReLU


def test_hooks_registered_before_wrapping_still_fire(gen):
    relu = nn.ReLU()
    seen = []
    relu.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    modify.Sequential(relu)(torch.randn(2, 3, generator=gen))
    assert seen == [(2, 3)]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.ReLU(), {"Unary", "ParamFree", "NonLinear", "Elementwise"}),
        (nn.GELU(), {"Unary", "ParamFree", "NonLinear", "Elementwise"}),
        (nn.Dropout(0.1), {"Unary", "ParamFree", "Linear", "Elementwise"}),
        (nn.Linear(2, 2), {"Unary", "Param", "Linear", "Vector"}),
        (nn.LayerNorm(2), {"Unary", "Param", "NonLinear", "Vector"}),
        (nn.LayerNorm(2, elementwise_affine=False), {"Unary", "ParamFree", "NonLinear", "Vector"}),
        (nn.AvgPool2d(2), {"Unary", "ParamFree", "Linear", "Reduction", "Matrix"}),
        (nn.GRU(2, 2), {"Param"}),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_documented_traits(module, expected):
    wrapped = modify.Sequential(module)[0]
    assert {t.__name__ for t in modify.traits_of(wrapped)} == expected
    assert {t.__name__ for t in modify.traits_of(module)} == expected


def test_isinstance_sees_documented_traits():
    wrapped = modify.Sequential(nn.ReLU())[0]
    assert isinstance(wrapped, modify.traits.Elementwise) and isinstance(wrapped, modify.traits.NonLinear)


def test_deepcopy_and_pickle_keep_the_wrapper(gen):
    model = modify.Sequential(nn.Linear(3, 3), nn.Tanh())
    x = torch.randn(2, 3, generator=gen)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(clone[0], nn.Linear) and isinstance(clone[0], modify.ModifyModule)
        assert clone[0].weight is not model[0].weight
        assert torch.equal(clone(x), model(x))


def test_errors_inside_opaque_leaves_name_the_path(gen):
    model = modify.Sequential(body=modify.Sequential(nn.Linear(3, 3)))
    with pytest.raises(RuntimeError) as info:
        model(torch.randn(2, 4, generator=gen))
    assert "(raised inside Linear at 'body.0')" in info.value.__notes__
