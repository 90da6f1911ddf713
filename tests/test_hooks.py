"""The hook registry (``modify/_core/hooks.py``): every way a hook arrives is seen, eager and compiled.

Combinators run their children's ``forward`` directly while no modify module was ever hooked. The
flag is sticky for the process, so each test starts it afresh (``fresh_registry``) and the fast
path runs first; the hooks must then fire wherever they were put, whenever they were put.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

import modify
from modify._core import hooks
from modify.models import GPT, GPTConfig

LEAF = "transformer.h.1.mlp.1.1.c_fc"  # a leaf deep in the tree


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as in a new process: no modify module hooked yet (restored afterwards)."""
    monkeypatch.setattr(hooks, "_hooked", False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_gpt() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8))
    return model, torch.randint(0, 16, (2, 5))


@pytest.mark.parametrize(
    "register",
    [
        lambda m: m.register_forward_hook(lambda *a: None),
        lambda m: m.register_forward_pre_hook(lambda *a: None),
        lambda m: m.register_full_backward_hook(lambda *a: None),
        lambda m: m.register_full_backward_pre_hook(lambda *a: None),
        lambda m: m.register_backward_hook(lambda *a: None),
        lambda m: m.compile(backend="eager"),
    ],
    ids=["forward", "forward_pre", "full_backward", "full_backward_pre", "backward", "compile"],
)
def test_every_registering_method_notes_the_hook(fresh_registry, register):
    leaf = modify.Linear(4, 4)
    assert not hooks.hooks_seen()
    register(leaf)
    assert hooks.hooks_seen() and not hooks.unwatched()


def test_wrapping_a_hooked_torch_module_notes_its_hooks_and_they_fire(fresh_registry):
    plain, calls = nn.Linear(4, 4), []
    nn.Module.register_forward_hook(plain, lambda m, args, out: calls.append(out.shape))  # not through modify
    assert not hooks.hooks_seen()
    model = modify.Sequential(modify.ReLU(), plain)
    assert hooks.hooks_seen()
    model(torch.randn(2, 4))
    assert calls == [(2, 4)]


def test_a_deep_copy_notes_the_hooks_it_carries(fresh_registry, monkeypatch):
    leaf = modify.Linear(4, 4)
    leaf.register_forward_hook(lambda m, args, out: None)
    monkeypatch.setattr(hooks, "_hooked", False)  # as if the hooked module came from another process
    twin = copy.deepcopy(leaf)
    assert hooks.hooks_seen() and len(twin._forward_hooks) == 1


def test_a_wrapped_module_with_its_own_call_is_called(fresh_registry):
    calls = []

    class Loud(nn.Identity):
        def __call__(self, *args, **kwargs):
            calls.append(len(args))
            return super().__call__(*args, **kwargs)

    model = modify.Sequential(modify.Linear(4, 4), Loud())
    model(torch.randn(2, 4))
    assert calls == [1] and not hooks.hooks_seen()


def _hook_everything(model: nn.Module, seen: list, backward: bool) -> None:
    leaf = model.get_submodule(LEAF)
    leaf.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    leaf.register_forward_hook(lambda m, args, out: seen.append("forward") or out * 2)
    if backward:
        leaf.register_full_backward_hook(lambda m, grad_in, grad_out: seen.append("backward"))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_hooks_on_a_deep_leaf_fire_after_a_first_call(fresh_registry, compiled):
    """Forward, pre and (eager: dynamo refuses module backward hooks) full backward hooks."""
    model, ids = tiny_gpt()
    run = torch.compile(model, backend="eager", fullgraph=True) if compiled else model
    before = run(ids)  # the fast path: no modify module hooked yet
    assert not hooks.hooks_seen()
    seen = []
    _hook_everything(model, seen, backward=not compiled)
    out = run(ids)
    out.sum().backward()
    assert seen == ["pre", "forward"] + ([] if compiled else ["backward"])
    assert not torch.allclose(out, before)  # the forward hook doubled the leaf's output
    reference, _ = tiny_gpt()
    _hook_everything(reference, [], backward=False)
    torch.testing.assert_close(out, reference(ids), atol=1e-6, rtol=1e-5)


def test_a_global_module_hook_fires_eager_and_compiled(fresh_registry):
    """As for plain torch modules: dynamo reads global hooks when it traces (it guards none of them)."""
    model, ids = tiny_gpt()
    model(ids)  # the fast path first
    seen = []
    handle = register_module_forward_hook(lambda m, args, out: seen.append(m))
    try:
        model(ids)
        eager = [m for m in seen if m is model.get_submodule(LEAF)]
        torch.compile(lambda ids: model(ids), backend="eager", fullgraph=True)(ids)  # no OptimizedModule
    finally:
        handle.remove()
    assert len(eager) == 1 and sum(m is model.get_submodule(LEAF) for m in seen) == 2
