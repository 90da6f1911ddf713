"""Sequential and Parallel: algebraic laws, children, hooks, state dicts, copies."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import assert_close, assert_state_equal, state_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modify


def _blocks():
    torch.manual_seed(0)
    return modify.Linear(4, 6), modify.GELU(), modify.Linear(6, 4)


def test_sequential_is_associative(gen):
    a, b, c = _blocks()
    x = torch.randn(3, 4, generator=gen)
    left = modify.Sequential(a, modify.Sequential(b, c))
    right = modify.Sequential(modify.Sequential(a, b), c)
    flat = modify.Sequential(a, b, c)
    assert_close(left(x), right(x))
    assert torch.equal(left(x), flat(x))
    assert torch.equal(flat(x), c(b(a(x))))


SHAPE_PRESERVING = [
    lambda: modify.Linear(4, 4),
    modify.ReLU,
    modify.Tanh,
    lambda: modify.Scale(-0.5),
    modify.Softmax,
    lambda: modify.LayerNorm(4),
    lambda: modify.Residual(modify.Linear(4, 4)),
    lambda: modify.Sequential(modify.Fork(modify.Identity(), modify.Exp()), modify.Mul()),
]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(range(len(SHAPE_PRESERVING))), min_size=1, max_size=6), st.data())
def test_any_bracketing_of_a_chain_computes_the_same(picks, data):
    torch.manual_seed(0)
    chain = [SHAPE_PRESERVING[i]() for i in picks]
    cut = data.draw(st.integers(0, len(chain)))
    x = torch.randn(3, 4)
    flat = modify.Sequential(*chain)
    bracketed = modify.Sequential(modify.Sequential(*chain[:cut]), modify.Sequential(*chain[cut:]))
    padded = modify.Sequential(modify.Identity(), *chain[:cut], modify.Identity(), *chain[cut:])
    expected = x
    for module in chain:
        expected = module(expected)
    for composed in (flat, bracketed, padded):  # bit-equal, NaN where x * exp(x) overflows included
        torch.testing.assert_close(composed(x), expected, rtol=0, atol=0, equal_nan=True)


def test_identity_is_a_unit_on_both_sides_of_sequential(gen):
    a, _, _ = _blocks()
    x = torch.randn(3, 4, generator=gen)
    for composed in (modify.Sequential(modify.Identity(), a), modify.Sequential(a, modify.Identity())):
        assert torch.equal(composed(x), a(x))
    assert modify.Sequential()(x) is x


def test_parallel_keeps_order_and_applies_each_branch_to_its_value(gen):
    a, b, c = _blocks()
    x, h = torch.randn(2, 4, generator=gen), torch.randn(2, 6, generator=gen)
    out = modify.Parallel(a, c)((x, h))
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], a(x)) and torch.equal(out[1], c(h))
    nested = modify.Parallel(modify.Parallel(b, b), a)(((h, h), x))
    assert torch.equal(nested[0][1], b(h)) and torch.equal(nested[1], a(x))


def test_parallel_of_sequentials_is_sequential_of_parallels(gen):
    a, b, c = _blocks()
    x, y = torch.randn(2, 4, generator=gen), torch.randn(2, 4, generator=gen)
    interchange_left = modify.Parallel(modify.Sequential(a, b), modify.Sequential(a, b))
    interchange_right = modify.Sequential(modify.Parallel(a, a), modify.Parallel(b, b))
    assert_close(interchange_left((x, y)), interchange_right((x, y)))


def test_residual_adds_the_input(gen):
    a, b, c = _blocks()
    block = modify.Sequential(a, b, c)
    x = torch.randn(3, 4, generator=gen)
    residual = modify.Residual(block)
    assert_close(residual(x), x + block(x))
    assert isinstance(residual, modify.Sequential)
    assert [type(m).__name__ for m in residual] == ["Copy", "Parallel", "Add"]
    assert residual[1][1] is block and residual.get_submodule("1.1") is block
    assert residual.block is block
    rebuilt = modify.rewrite(residual, lambda m: modify.Identity(), "1.1.1")
    assert type(rebuilt) is modify.Residual and rebuilt.block is not block and residual.block is block


def test_fork_feeds_one_value_to_every_branch(gen):
    a, b, _ = _blocks()
    x = torch.randn(3, 4, generator=gen)
    out = modify.Fork(a, b, modify.Identity())(x)
    assert len(out) == 3 and torch.equal(out[0], a(x)) and torch.equal(out[1], b(x)) and out[2] is x
    fork = modify.Fork(a)
    assert [type(m).__name__ for m in fork] == ["Copy", "Parallel"] and fork[0].n == 1
    with pytest.raises(ValueError, match="at least one"):
        modify.Fork()


def test_fork_keeps_branch_names(gen):
    a, b, _ = _blocks()
    x = torch.randn(3, 4, generator=gen)
    fork = modify.Fork(q=a, k=b)
    q, k = fork(x)
    assert torch.equal(q, a(x)) and torch.equal(k, b(x))
    assert fork["q"] is a and fork["k"] is b and fork.branches[1] is b and fork.get_submodule("1.k") is b
    assert fork[0] is fork["0"] and fork[1] is fork.branches
    assert [n for n, _ in fork.named_parameters()][0].startswith("1.q.")
    with pytest.raises(KeyError):
        fork["v"]
    with pytest.raises(TypeError, match="not both"):
        modify.Fork(a, k=b)


def test_combinator_forward_is_final():
    with pytest.raises(TypeError, match="must not define forward"):

        class Doubled(modify.Sequential):
            def forward(self, x):
                return 2 * super().forward(x)

    with pytest.raises(TypeError, match="must not define forward"):

        class Swapped(modify.Residual):
            def forward(self, x):
                return x

    class Named(modify.Sequential):  # renaming is fine
        pass

    assert isinstance(Named(modify.ReLU()), modify.Sequential)


def test_positional_and_named_children():
    a, b, c = _blocks()
    positional = modify.Sequential(a, b)
    named = modify.Sequential(proj=a, act=b, out=c)
    assert [n for n, _ in positional.named_children()] == ["0", "1"]
    assert [n for n, _ in named.named_children()] == ["proj", "act", "out"]
    assert named["act"] is b and named[-1] is c and named[0] is a and len(named) == 3
    assert list(named) == [a, b, c]
    assert [n for n, _ in named[1:].named_children()] == ["act", "out"] and named[1:][0] is b
    assert list(modify.Parallel(left=a, right=c).state_dict()) == [
        "left.weight",
        "left.bias",
        "right.weight",
        "right.bias",
    ]
    assert list(modify.Sequential(self=a).named_children())[0][0] == "self"
    with pytest.raises(TypeError, match="positionally or by name"):
        modify.Sequential(a, act=b)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        modify.Sequential(a, torch.relu)
    with pytest.raises(IndexError):
        positional[2]


def test_forward_hooks_fire_on_leaves_and_combinators(gen):
    a, b, c = _blocks()
    inner = modify.Sequential(b, c)
    model = modify.Sequential(a, inner)
    seen = []
    for name, module in model.named_modules():
        module.register_forward_hook(lambda m, args, out, name=name: seen.append((name, out.shape)))
    model(torch.randn(2, 4, generator=gen))
    assert seen == [("0", (2, 6)), ("1.0", (2, 6)), ("1.1", (2, 4)), ("1", (2, 4)), ("", (2, 4))]


def _tiny_gpt() -> nn.Module:
    from modify.models import GPT, GPTConfig

    return GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8, dropout=0.0))


def _leaf_paths(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if not isinstance(m, modify.Combinator)]


def test_every_leaf_hook_fires_also_when_registered_after_a_first_call():
    model, ids = _tiny_gpt(), torch.randint(0, 16, (2, 5))
    expected = model(ids)
    leaves = _leaf_paths(model)
    pre, post, backward = [], [], []
    for name in leaves:
        module = model.get_submodule(name)
        module.register_forward_pre_hook(lambda m, args, name=name: pre.append(name))
        module.register_forward_hook(lambda m, args, out, name=name: post.append(name))
    model.get_submodule(leaves[-1]).register_full_backward_hook(lambda m, gi, go: backward.append(go[0].shape))
    out = model(ids)
    out.sum().backward()
    assert sorted(set(pre)) == sorted(set(post)) == sorted(leaves)
    assert backward == [out.shape]
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_a_hook_that_changes_an_output_changes_the_result():
    model, ids = _tiny_gpt(), torch.randint(0, 16, (2, 5))
    expected = model(ids)
    norm = next(m for m in model.modules() if isinstance(m, modify.LayerNorm))  # one of a fusable pair
    handle = norm.register_forward_hook(lambda m, args, out: out * 0)
    changed = model(ids)
    handle.remove()
    assert not torch.allclose(changed, expected)
    torch.testing.assert_close(model(ids), expected, atol=0, rtol=0)


def test_a_hook_on_a_pass_through_branch_changes_the_result():
    """A ``Parallel`` hands an ``Identity`` branch's value on without a call only while it has no hook."""
    scale = modify.Scale(3.0)
    model, x = modify.Sequential(modify.Copy(2), modify.Parallel(modify.Identity(), scale), modify.Add()), torch.ones(2)
    identity = model[1][0]
    handle = identity.register_forward_hook(lambda m, args, out: out * 10)
    hooked = model(x)
    handle.remove()
    assert hooked.tolist() == [13.0, 13.0] and model(x).tolist() == [4.0, 4.0]


def test_every_leaf_hook_fires_on_the_fused_sibling():
    model, ids = _tiny_gpt(), torch.randint(0, 16, (2, 5))
    fused = modify.fuse(model)
    expected, leaves, seen = fused(ids), _leaf_paths(fused), []
    for name in leaves:
        fused.get_submodule(name).register_forward_hook(lambda m, args, out, name=name: seen.append(name))
    torch.testing.assert_close(fused(ids), expected, atol=0, rtol=0)
    assert sorted(set(seen)) == sorted(leaves) and "transformer.h.0.attn.1.0" in seen  # an Identity branch


def test_global_module_hooks_see_every_leaf_call():
    from torch.nn.modules.module import register_module_forward_hook

    model, ids = _tiny_gpt(), torch.randint(0, 16, (2, 5))
    seen = []
    handle = register_module_forward_hook(lambda m, args, out: seen.append(m))
    try:
        model(ids)
    finally:
        handle.remove()
    called = {id(m) for m in seen}
    assert all(id(model.get_submodule(name)) in called for name in _leaf_paths(model))


def test_fx_tracing_sees_every_module_call():
    """``torch.fx`` patches ``nn.Module.__call__`` while it traces: the combinators call through it."""
    model = modify.Sequential(modify.Linear(4, 4), modify.Sequential(modify.LayerNorm(4), modify.ElementwiseAffine(4)))

    class KeepLeaves(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return not isinstance(m, modify.Combinator)

    graph = KeepLeaves().trace(model)
    targets = [node.target for node in graph.nodes if node.op == "call_module"]
    assert targets == ["0", "1.0", "1.1"]


def _tied_model():
    embed = modify.Embedding(10, 4)
    head = modify.Linear(4, 10, bias=False)
    head.weight = embed.weight
    return modify.Sequential(
        embed=embed,
        blocks=modify.Residual(modify.Sequential(modify.LayerNorm(4), modify.ElementwiseAffine(4))),
        norm=modify.BatchNorm1d(5),
        rope=modify.RotaryEmbedding(4),
        head=head,
    )


def test_state_dict_keys_are_parameters_and_persistent_buffers():
    model = _tied_model()
    params = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    buffers = [name for name, _ in model.named_buffers(remove_duplicate=False) if not name.endswith("inv_freq")]
    assert "head.weight" in params and "embed.weight" in params  # tied, both named
    assert sorted(model.state_dict()) == sorted(params + buffers)
    assert len(model.state_dict()) == len(params) + len(buffers)


def test_state_dict_round_trips(gen):
    model, other = _tied_model(), _tied_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    model.train()(torch.randint(10, (3, 5), generator=gen))  # moves the running statistics
    other.load_state_dict(model.state_dict(), strict=True)
    assert_state_equal(other, state_snapshot(model))
    x = torch.randint(10, (2, 5), generator=gen)
    assert torch.equal(other.eval()(x), model.eval()(x))


def test_deepcopy_gives_an_independent_equal_model_with_ties_kept(gen):
    model = _tied_model().eval()
    clone = copy.deepcopy(model)
    x = torch.randint(10, (2, 5), generator=gen)
    assert torch.equal(clone(x), model(x))
    assert clone.head.weight is clone.embed.weight and clone.head.weight is not model.head.weight
    before = state_snapshot(model)
    with torch.no_grad():
        clone.embed.weight.add_(1.0)
    assert_state_equal(model, before)


def test_pickle_round_trip_including_opaque_leaves(gen):
    model = modify.Sequential(modify.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    loaded = pickle.loads(pickle.dumps(model))
    x = torch.randn(3, 4, generator=gen)
    assert torch.equal(loaded(x), model(x))
    assert isinstance(loaded[1], nn.ReLU) and isinstance(loaded[1], modify.ModifyModule)
    assert list(loaded.state_dict()) == list(model.state_dict())


def test_train_eval_and_to_reach_every_leaf():
    model = _tied_model()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model.norm.num_batches_tracked.dtype == torch.int64


def test_rebuilt_shares_children_and_leaves_the_original():
    a, b, c = _blocks()
    model = modify.Sequential(proj=a, act=b)
    model.register_forward_hook(lambda *args: None)
    new = model.rebuilt({"proj": a, "act": c})
    assert type(new) is modify.Sequential and new.proj is a and new.act is c and model.act is b
    assert len(new._forward_hooks) == 0 and len(model._forward_hooks) == 1
    with pytest.raises(ValueError, match="expects children"):
        model.rebuilt({"proj": a})
    residual = modify.Residual(a)
    assert type(residual.rebuilt(dict(residual.named_children()))) is modify.Residual


def test_leaves_refuse_submodules():
    leaf = modify.Linear(2, 2)
    with pytest.raises(TypeError, match="leaf"):
        leaf.inner = nn.ReLU()
    with pytest.raises(TypeError, match="leaf"):
        leaf.register_module("inner", nn.ReLU())
