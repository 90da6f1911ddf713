"""Trait inference for plain ``torch.nn`` modules, enumerated from torch.nn's own family modules.

Every public class of torch.nn's activation, normalisation, pooling, dropout, linear,
convolution, embedding and flatten modules (so a class torch adds later fails here until the
table knows it) gets one trait per exclusive group, and once wrapped in a combinator
``isinstance`` agrees with ``traits_of`` for every trait; the kinds claimed hold on a probe.
"""

from __future__ import annotations

import copy
import importlib
import pickle

import pytest
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

import modify
from modify import traits
from modify.traits import ARITY, KIND, LINEARITY, PARAMETERS, Elementwise, Matrix, Vector

FAMILIES = ("activation", "normalization", "batchnorm", "instancenorm", "pooling", "dropout", "linear", "conv",
            "sparse", "flatten")
# forward takes several tensors (query/key/value; input and indices): no single value to pass.
NOT_ONE_VALUE = {"MultiheadAttention", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d"}
# Constructor arguments for the classes that need more than a few sizes.
SPECIAL_ARGS = {
    "FractionalMaxPool2d": ((2,), {"output_ratio": 0.5}),
    "FractionalMaxPool3d": ((2,), {"output_ratio": 0.5}),
    "Unflatten": ((1, (2, 2)), {}),
}


def _classes() -> list[type]:
    found = []
    for family in FAMILIES:
        module = importlib.import_module(f"torch.nn.modules.{family}")
        found += [getattr(module, name) for name in module.__all__ if name not in NOT_ONE_VALUE]
    return found


def _build(cls: type) -> nn.Module:
    if cls.__name__ in SPECIAL_ARGS:
        args, kwargs = SPECIAL_ARGS[cls.__name__]
        return cls(*args, **kwargs)
    for args in ((), (4,), (4, 4), (4, 4, 3)):
        try:
            return cls(*args)
        except TypeError:
            continue
    raise AssertionError(f"cannot build {cls.__name__} with simple arguments")


CLASSES = _classes()
ALL_TRAITS = (*ARITY, *PARAMETERS, *LINEARITY, *KIND)


def test_the_enumeration_covers_the_families_the_issue_names():
    names = {cls.__name__ for cls in CLASSES}
    wanted = ("ELU Hardshrink Hardsigmoid Hardtanh Hardswish LogSigmoid ReLU6 SELU CELU Mish Softplus Softshrink "
              "Softsign Tanhshrink PReLU GLU Softmin Softmax2d Threshold RReLU LeakyReLU LayerNorm RMSNorm GroupNorm "
              "BatchNorm3d InstanceNorm2d LocalResponseNorm LPPool1d FractionalMaxPool3d AdaptiveMaxPool3d "
              "AlphaDropout Dropout3d Bilinear LazyLinear Identity Conv3d ConvTranspose2d Embedding EmbeddingBag")
    assert set(wanted.split()) <= names and len(CLASSES) >= 85


@pytest.mark.parametrize("cls", CLASSES, ids=[cls.__name__ for cls in CLASSES])
def test_every_torch_class_gets_a_full_set_of_traits_and_isinstance_agrees(cls):
    module = _build(cls)
    found = modify.traits_of(module)
    for group in (ARITY, PARAMETERS, LINEARITY):
        assert len([t for t in group if t in found]) == 1, (cls.__name__, group, found)
    if isinstance(module, LazyModuleMixin):
        with pytest.raises(TypeError, match=f"cannot wrap {cls.__name__} with uninitialized parameters"):
            modify.Sequential(module)
        return
    wrapped = modify.Sequential(module)[0]
    assert isinstance(wrapped, cls) and modify.traits_of(wrapped) == found
    for trait in ALL_TRAITS:
        assert isinstance(wrapped, trait) == (trait in found), (cls.__name__, trait)
    has_params = next(module.parameters(), None) is not None
    assert (traits.Param in found) == has_params


@pytest.mark.parametrize(
    ("module", "shape", "scope"),
    [
        (nn.Softmax(dim=-1), (2, 3, 4), Vector), (nn.Softmax(dim=1), (2, 3, 4), None), (nn.Softmax(), (2, 3), None),
        (nn.GLU(), (2, 3, 4), Vector), (nn.LogSoftmax(dim=0), (2, 3), None), (nn.Softmin(dim=-1), (2, 3, 4), Vector),
        (nn.LayerNorm(4), (2, 3, 4), Vector), (nn.LayerNorm((3, 4)), (2, 3, 4), Matrix),
        (nn.LayerNorm((2, 3, 4)), (2, 2, 3, 4), None), (nn.RMSNorm((3, 4)), (2, 3, 4), Matrix),
        (nn.InstanceNorm1d(3), (2, 3, 5), Vector), (nn.InstanceNorm2d(3), (2, 3, 4, 5), Matrix),
        (nn.MaxPool1d(2), (2, 3, 6), Vector), (nn.AvgPool2d(2), (2, 3, 4, 6), Matrix),
        (nn.AdaptiveMaxPool3d(2), (2, 2, 4, 4, 4), None), (nn.PReLU(3), (2, 3, 4), Elementwise),
        (nn.Hardswish(), (2, 3, 4), Elementwise), (nn.AlphaDropout(0.5), (2, 3, 4), Elementwise),
    ],
    ids=repr,
)
def test_the_scope_follows_the_instance_and_holds(module, shape, scope, gen):
    """Changing one input element changes only the output element/vector/matrix it belongs to."""
    wrapped = modify.Sequential(module)[0].eval()
    found = modify.traits_of(wrapped) & {Elementwise, Vector, Matrix}
    assert found == ({scope} if scope else set())
    assert all(isinstance(wrapped, t) == (t in found) for t in (Elementwise, Vector, Matrix))
    if scope is None:
        return
    x = torch.randn(shape, generator=gen)
    bump = torch.zeros_like(x)
    bump[(0,) * x.dim()] = 1.0
    changed = (wrapped(x + bump) != wrapped(x)).nonzero()
    kept = changed.shape[1] - {Elementwise: 0, Vector: 1, Matrix: 2}[scope]
    assert len(changed) and (changed[:, :kept] == 0).all(), f"{module} changed outside its {scope.__name__}"


def test_select_finds_wrapped_activations_by_kind():
    acts = [nn.ELU(), nn.Hardswish(), nn.Mish(), nn.Softplus(), nn.PReLU(), nn.LogSigmoid()]
    model = modify.Sequential(*[m for act in acts for m in (nn.Linear(4, 4), act)])
    assert modify.select(model, traits.Elementwise).paths() == [str(i) for i in range(1, 12, 2)]
    assert modify.select(model, traits.Param).paths() == ["", "0", "2", "4", "6", "8", "9", "10"]


def test_a_frozen_or_parameterless_instance_gets_its_own_wrapper_class():
    with_affine, without = nn.LayerNorm(4), nn.LayerNorm(4, elementwise_affine=False)
    a, b = modify.Sequential(with_affine)[0], modify.Sequential(without)[0]
    assert isinstance(a, traits.Param) and not isinstance(a, traits.ParamFree)
    assert isinstance(b, traits.ParamFree) and not isinstance(b, traits.Param)
    assert type(a) is not type(b) and type(modify.Sequential(nn.LayerNorm(4))[0]) is type(a)


def test_wrapper_classes_survive_deepcopy_and_pickle(gen):
    model = modify.Sequential(nn.LayerNorm(4, elementwise_affine=False), nn.Softmax(dim=1), nn.PReLU())
    x = torch.randn(2, 4, generator=gen)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for original, copied in zip(model, clone):
            assert type(copied) is type(original) and modify.traits_of(copied) == modify.traits_of(original)
        assert torch.equal(clone(x), model(x))


def test_a_lazy_layer_is_wrapped_once_initialised(gen):
    lazy = nn.LazyLinear(3)
    with pytest.raises(TypeError, match="run one forward through it first"):
        modify.Sequential(lazy)
    lazy(torch.randn(2, 4, generator=gen))
    wrapped = modify.Sequential(lazy)[0]
    assert isinstance(wrapped, nn.Linear) and isinstance(wrapped, traits.Param) and wrapped.weight is lazy.weight
