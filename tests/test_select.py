"""select / rewrite / parameters / Selection.insert_*: the one tree walk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modify
from modify import traits
from modify.rewriting.walk import rebuild
from tests.helpers import assert_close, assert_state_equal, state_snapshot


def make_net() -> modify.Sequential:
    return modify.Sequential(
        embed=modify.Linear(4, 8),
        blocks=modify.Sequential(
            modify.Residual(modify.Sequential(modify.LayerNorm(8), modify.Linear(8, 8), modify.GELU())),
            modify.Residual(modify.Sequential(modify.LayerNorm(8), modify.Linear(8, 8), modify.ReLU())),
        ),
        head=modify.Linear(8, 3),
    )


def positions(model: nn.Module) -> list[tuple[str, int]]:
    return [(path, id(m)) for path, m in model.named_modules(remove_duplicate=False)]


# ---------------------------------------------------------------- select: criteria


def test_select_by_class_in_named_modules_order():
    net = make_net()
    expected = [(p, m) for p, m in net.named_modules() if isinstance(m, modify.Linear)]
    got = modify.select(net, modify.Linear)
    assert [(p, id(m)) for p, m in got] == [(p, id(m)) for p, m in expected]
    assert got.paths() == ["embed", "blocks.0.1.1.1", "blocks.1.1.1.1", "head"]


def test_select_by_trait_uses_traits_of_for_combinators():
    net = make_net()
    got = modify.select(net, traits.NonLinear)
    assert got.paths() == [p for p, m in net.named_modules() if traits.NonLinear in modify.traits_of(m)]
    # the residual blocks are NonLinear combinators; LayerNorm leaves too
    assert "blocks.0" in got.paths() and "blocks.0.1.1.0" in got.paths()
    assert "embed" not in got.paths()


def test_linear_class_and_linear_trait_are_different_criteria():
    mlp = modify.Sequential(modify.Linear(2, 2), modify.Scale(3.0))
    assert modify.select(mlp, modify.Linear).paths() == ["0"]
    # the trait matches every affine module: the whole Sequential, the layer and the Scale
    assert modify.select(mlp, traits.Linear).paths() == ["", "0", "1"]


def test_glob_star_spans_dots_and_root_path_is_empty():
    net = make_net()
    assert modify.select(net, "blocks.*.1.1.1").paths() == ["blocks.0.1.1.1", "blocks.1.1.1.1"]
    assert modify.select(net, "blocks.*", modify.Linear).paths() == ["blocks.0.1.1.1", "blocks.1.1.1.1"]
    assert modify.select(net, "blocks.?").paths() == ["blocks.0", "blocks.1"]
    assert modify.select(net, "*").paths()[0] == ""  # fnmatch("", "*") holds: the root
    assert modify.select(net, "head").modules() == [net.head]


def test_predicate_and_all_criteria_must_hold():
    net = make_net()
    wide = modify.select(net, modify.Linear, lambda path, m: m.out_features == 8)
    assert wide.paths() == ["embed", "blocks.0.1.1.1", "blocks.1.1.1.1"]
    assert modify.select(net, modify.Linear, "head", lambda p, m: False) == []


def test_no_criteria_selects_every_module_including_root():
    net = make_net()
    assert modify.select(net).paths() == [p for p, _ in net.named_modules()]


@pytest.mark.parametrize("bad", [3, int, None, 2.5])
def test_bad_criterion_raises_type_error(bad):
    with pytest.raises(TypeError):
        modify.select(make_net(), bad)


def test_predicate_returning_non_bool_raises():
    with pytest.raises(TypeError, match="not a bool"):
        modify.select(make_net(), lambda path, m: path)


def test_shared_module_listed_once_per_path():
    shared = modify.Linear(3, 3)
    net = modify.Sequential(shared, modify.ReLU(), shared)
    sel = modify.select(net, modify.Linear)
    assert sel.paths() == ["0", "2"]
    assert sel.modules() == [shared]
    assert sel.parameters() == [shared.weight, shared.bias]


def test_select_requires_a_module():
    with pytest.raises(TypeError):
        modify.select("not a module", modify.Linear)


# ---------------------------------------------------------------- apply / rewrite


def test_rewrite_leaves_original_unchanged_and_shares_untouched():
    net = make_net()
    x = torch.randn(5, 4)
    before_out, before_state, before_pos = net(x), state_snapshot(net), positions(net)
    before_params = [id(p) for p in net.parameters()]

    new = modify.rewrite(net, lambda m: modify.SiLU(), modify.GELU)

    assert_state_equal(net, before_state)
    assert positions(net) == before_pos
    assert [id(p) for p in net.parameters()] == before_params
    assert torch.equal(net(x), before_out)
    # the GELU is replaced, its block's path is rebuilt, everything else is the same object
    assert isinstance(new.blocks[0][1][1][2], modify.SiLU)
    assert new.embed is net.embed and new.head is net.head
    assert new.blocks[1] is net.blocks[1]
    assert new.blocks[0] is not net.blocks[0] and type(new.blocks[0]) is modify.Residual
    assert new.blocks[0][1][1][1] is net.blocks[0][1][1][1]
    assert [id(p) for p in new.parameters()] == before_params
    reference = modify.Sequential(
        net.embed,
        modify.Residual(modify.Sequential(net.blocks[0][1][1][0], net.blocks[0][1][1][1], modify.SiLU())),
        net.blocks[1],
        net.head,
    )
    assert_close(new(x), reference(x))


def test_rewrite_is_select_apply():
    net = make_net()
    a = modify.rewrite(net, lambda m: modify.Identity(), modify.LayerNorm)
    b = modify.select(net, modify.LayerNorm).apply(lambda m: modify.Identity())
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]


def test_outermost_first_and_replaced_subtree_not_descended():
    net = make_net()
    calls = []

    def fn(m):
        calls.append(m)
        return modify.Identity()

    new = modify.rewrite(net, fn, traits.NonLinear, "?*")  # "?*": any path but the root's
    assert calls == [net.blocks]  # blocks is NonLinear: its inside is never visited
    assert isinstance(new.blocks, modify.Identity) and new.head is net.head
    root_replaced = modify.rewrite(net, fn, traits.NonLinear)  # the root is NonLinear too
    assert calls[-1] is net and isinstance(root_replaced, modify.Identity)


def test_fn_called_once_per_shared_module_and_sharing_kept():
    shared = modify.Linear(3, 3)
    net = modify.Sequential(shared, modify.ReLU(), shared)
    calls = []

    def fn(m):
        calls.append(m)
        return modify.Scale(2.0)

    new = modify.rewrite(net, fn, modify.Linear)
    assert calls == [shared]
    assert new[0] is new[2]


def test_path_criterion_on_shared_module_replaces_only_that_path():
    shared = modify.Linear(3, 3)
    net = modify.Sequential(shared, modify.ReLU(), shared)
    new = modify.rewrite(net, lambda m: modify.Identity(), "2")
    assert new[0] is shared and isinstance(new[2], modify.Identity)


def test_shared_combinator_rebuilt_once():
    block = modify.Sequential(modify.Linear(3, 3), modify.ReLU())
    net = modify.Sequential(block, block)
    new = modify.rewrite(net, lambda m: modify.GELU(), modify.ReLU)
    assert new[0] is new[1] and new[0] is not block


def test_root_match_returns_fn_of_root():
    lin = modify.Linear(3, 3)
    replacement = modify.Identity()
    assert modify.rewrite(lin, lambda m: replacement, modify.Linear) is replacement
    assert modify.select(lin, modify.Linear).paths() == [""]


def test_nothing_matched_returns_model_itself():
    net = make_net()
    assert modify.rewrite(net, lambda m: modify.Identity(), modify.Conv2d) is net


def test_fn_returning_non_module_raises_with_path():
    with pytest.raises(TypeError, match="'head'"):
        modify.rewrite(make_net(), lambda m: 3, "head")


def test_plain_torch_replacement_is_wrapped_and_state_dict_keys_kept():
    net = make_net()
    new = modify.rewrite(net, lambda m: nn.Linear(m.in_features, m.out_features), "head")
    assert isinstance(new.head, nn.Linear) and isinstance(new.head, modify.ModifyModule)
    assert list(new.state_dict()) == list(net.state_dict())


def test_match_inside_opaque_leaf_raises_but_opaque_leaf_itself_rewrites():
    inner = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    net = modify.Sequential(inner, modify.Linear(3, 2))
    # select sees inside the wrapped torch module (named_modules order) ...
    assert modify.select(net, nn.Linear).paths() == ["0.0"]
    assert modify.parameters(net, nn.Linear) == [inner[0].weight, inner[0].bias]
    # ... but rewrites do not open leaves: refuse loudly instead of doing nothing
    with pytest.raises(ValueError, match=r"inside the leaf Sequential at '0'"):
        modify.rewrite(net, lambda m: nn.Identity(), nn.Linear)
    with pytest.raises(ValueError, match="inside the leaf"):
        modify.select(net, nn.ReLU).insert_after(modify.Identity())
    # a match of the wrapped module itself (or an enclosing one) is fine
    new = modify.rewrite(net, lambda m: modify.Identity(), "0*")
    assert isinstance(new[0], modify.Identity) and new[1] is net[1]


def test_plain_torch_root_rewrite_inside_raises():
    with pytest.raises(ValueError, match="<root>"):
        modify.rewrite(nn.Sequential(nn.Linear(2, 2)), lambda m: nn.Identity(), nn.Linear)


# ---------------------------------------------------------------- insert_before / insert_after


def test_insert_after_and_before_compute_the_composition():
    net = make_net()
    x = torch.randn(2, 4)
    before = net(x)
    doubled = modify.select(net, "head").insert_after(modify.Scale(2.0))
    assert isinstance(doubled.head, modify.Sequential) and doubled.head[0] is net.head
    assert_close(doubled(x), 2 * before)
    halved_input = modify.select(net, "embed").insert_before(lambda m: modify.Scale(0.5))
    assert halved_input.embed[1] is net.embed
    reference = modify.Sequential(modify.Scale(0.5), *net)
    assert_close(halved_input(x), reference(x))
    assert torch.equal(net(x), before)


def test_insert_module_is_shared_callable_called_once_per_module():
    net = make_net()
    marker = modify.Identity()
    new = modify.select(net, modify.Linear).insert_after(marker)
    assert all(new.get_submodule(p + ".1") is marker for p in ["embed", "head"])
    calls = []
    new = modify.select(net, modify.Linear).insert_before(lambda m: calls.append(m) or modify.Identity())
    assert calls == [net.embed, net.blocks[0][1][1][1], net.blocks[1][1][1][1], net.head]
    assert new.embed[0] is not new.head[0]


def test_insert_descends_into_selected_modules():
    net = make_net()
    new = modify.select(net, traits.NonLinear, "blocks*").insert_after(lambda m: modify.Identity())
    # blocks, each residual and their insides all get an Identity after them
    assert isinstance(new.blocks[1], modify.Identity)
    assert isinstance(new.blocks[0][0][1], modify.Identity)  # after residual 0
    x = torch.randn(3, 4)
    assert_close(new(x), net(x))


def test_insert_make_returning_non_module_raises():
    with pytest.raises(TypeError, match="make returned"):
        modify.select(make_net(), "head").insert_after(lambda m: "nope")


# ---------------------------------------------------------------- parameters


def test_parameters_are_the_models_own_objects_each_once():
    net = make_net()
    assert modify.parameters(net) == list(net.parameters())
    heads = modify.parameters(net, "head")
    assert heads[0] is net.head.weight and heads[1] is net.head.bias
    tied = modify.Sequential(modify.Linear(3, 3), modify.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert modify.parameters(tied, modify.Linear) == [tied[0].weight, tied[0].bias, tied[1].bias]


def test_parameters_train_only_the_selection():
    net = make_net()
    x = torch.randn(6, 4)
    frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head")}
    opt = torch.optim.SGD(modify.parameters(net, "head"), lr=0.1)
    net(x).square().sum().backward()
    opt.step()
    for key, value in frozen.items():
        assert torch.equal(net.state_dict()[key], value)
    assert not torch.equal(net.head.weight, state_snapshot(make_net())["head.weight"])


# ---------------------------------------------------------------- rebuild: the walk rewriters build on


def test_rebuild_post_can_rebuild_a_sequentials_children():
    """The shape of a fuse: merge adjacent Scale pairs inside any Sequential."""
    net = modify.Sequential(modify.Scale(2.0), modify.Scale(3.0), modify.Residual(modify.Scale(5.0)), modify.ReLU())

    def fuse_scales(path, original, new):
        if type(new) is not modify.Sequential:
            return new
        out = []
        for child in new:
            if out and isinstance(out[-1], modify.Scale) and isinstance(child, modify.Scale):
                out[-1] = modify.Scale(out[-1].c * child.c)
            else:
                out.append(child)
        return new if len(out) == len(new) else modify.Sequential(*out)

    fused = rebuild(net, post=fuse_scales)
    assert [type(m).__name__ for m in fused] == ["Scale", "Residual", "ReLU"]
    assert fused[0].c == 6.0 and fused[1] is net[2]
    x = torch.randn(4)
    assert_close(fused(x), net(x))
    assert rebuild(net) is net
