"""The one sibling primitive: shared state by identity, own containers, the hook rule, pickling."""

from __future__ import annotations

import copy
import pickle

import torch
from torch import nn

import modify
from modify._core.identity import group_by_identity, unique
from modify._core.sibling import Derived, derived_class, sibling


def test_shares_every_tensor_and_attribute_but_owns_its_containers():
    norm = nn.BatchNorm1d(3)
    twin = sibling(norm)
    assert type(twin) is nn.BatchNorm1d and twin.weight is norm.weight and twin.running_mean is norm.running_mean
    assert twin.momentum == norm.momentum
    twin.register_buffer("extra", torch.zeros(1))
    twin.weight = nn.Parameter(torch.ones(3))
    assert "extra" not in norm._buffers and norm.weight is not twin.weight
    assert twin._non_persistent_buffers_set is not norm._non_persistent_buffers_set


def test_given_containers_replace_the_modules_own():
    lin = nn.Linear(2, 2)
    bare = sibling(lin, parameters={"bias": lin.bias})
    assert [n for n, _ in bare.named_parameters()] == ["bias"] and "weight" in lin._parameters
    seq = nn.Sequential(nn.ReLU(), nn.Tanh())
    swapped = sibling(seq, children={"0": seq[1], "1": seq[0]})
    assert swapped[0] is seq[1] and seq[0] is not seq[1]


def test_hooks_start_empty_or_are_kept_in_own_dictionaries():
    lin = nn.Linear(2, 2)
    seen = []
    lin.register_forward_hook(lambda m, a, out: seen.append(1))
    sibling(lin)(torch.ones(2))
    assert seen == []
    kept = sibling(lin, keep_hooks=True)
    kept(torch.ones(2))
    assert seen == [1]
    kept.register_forward_pre_hook(lambda m, a: seen.append(2))
    lin(torch.ones(2))
    assert seen == [1, 1]  # a hook registered on the sibling does not reach the original


class _Tagged(Derived, nn.Module):
    """A mixin for the test."""


def test_derived_classes_are_made_once_and_pickle_by_their_chain():
    cls = derived_class(_Tagged, nn.Linear)
    assert derived_class(_Tagged, nn.Linear) is cls and cls.__name__ == "Linear" and issubclass(cls, nn.Linear)
    twin = sibling(nn.Linear(2, 3), cls=cls)
    for again in (pickle.loads(pickle.dumps(twin)), copy.deepcopy(twin)):
        assert type(again) is cls and torch.equal(again.weight, twin.weight)
    wrapped = modify.mutable(modify.Sequential(nn.Linear(2, 2)))[0]  # mutable over opaque over nn.Linear
    assert type(pickle.loads(pickle.dumps(wrapped))) is type(wrapped)


def test_identity_grouping():
    a, b = torch.zeros(1), torch.zeros(1)  # equal values, different objects
    assert group_by_identity([("x", a), ("y", b), ("z", a)]) == [(["x", "z"], a), (["y"], b)]
    assert unique([a, b, a, b]) == [a, b]
