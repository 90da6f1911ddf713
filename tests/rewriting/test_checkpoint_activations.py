"""checkpoint_activations: same outputs and gradients as the plain model, fewer bytes saved for backward."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import modify
from modify.models import GPT, GPTConfig, Llama, LlamaConfig
from modify.rewriting.checkpoint import ActivationCheckpoint

from helpers import assert_close, assert_state_equal, state_snapshot


def gpt(dropout: float = 0.0) -> GPT:
    return GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=3, n_head=2, n_embd=32, dropout=dropout))


def llama() -> Llama:
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16,
    )
    return Llama(config)


BLOCKS = {"gpt": (gpt, "transformer.h.*"), "llama": (llama, "model.layers.*")}


def checkpointed(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return list(modify.select(model, lambda path, module: isinstance(module, ActivationCheckpoint)))


def saved_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one forward (counted as they are packed)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids).sum()
    return total


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(ids).logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_outputs_and_gradients_equal_the_plain_model(name):
    make, blocks = BLOCKS[name]
    model = make()
    light = modify.checkpoint_activations(model, where=blocks)
    ids = torch.randint(0, 64, (2, 16))
    loss, grads = loss_and_grads(model, ids)
    light_loss, light_grads = loss_and_grads(light, ids)
    assert torch.equal(light_loss, loss)
    assert list(light_grads) == list(grads)
    for key, grad in grads.items():
        assert_close(light_grads[key], grad, atol=1e-6)


def test_dropout_masks_agree_in_the_recomputation():
    model = gpt(dropout=0.3).train()
    light = modify.checkpoint_activations(model, where="transformer.h.*")
    ids = torch.randint(0, 64, (2, 16))
    torch.manual_seed(1)
    loss, grads = loss_and_grads(model, ids)
    torch.manual_seed(1)
    light_loss, light_grads = loss_and_grads(light, ids)
    assert torch.equal(light_loss, loss)
    for key, grad in grads.items():
        assert_close(light_grads[key], grad, atol=1e-6)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_bytes_saved_for_backward_drop(name):
    make, blocks = BLOCKS[name]
    model = make()
    ids = torch.randint(0, 64, (4, 16))
    plain = saved_bytes(model, ids)
    light = saved_bytes(modify.checkpoint_activations(model, where=blocks), ids)
    assert light < plain / 2, (light, plain)


def test_sibling_shares_everything_and_leaves_the_original_untouched():
    model = gpt()
    snapshot = state_snapshot(model)
    classes = [type(m) for m in model.modules()]
    light = modify.checkpoint_activations(model, where="transformer.h.*")
    assert [type(m) for m in model.modules()] == classes
    assert_state_equal(model, snapshot)
    assert list(light.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(light.parameters(), model.parameters()))
    wrapped = [path for path, _ in checkpointed(light)]
    assert wrapped == [f"transformer.h.{i}" for i in range(3)]
    assert all(isinstance(m, modify.Sequential) for _, m in checkpointed(light))
    assert modify.checkpoint_activations(light, where="transformer.h.*").transformer.h[0] is light.transformer.h[0]
    assert "checkpointed=True" in repr(light.transformer.h[0]) and "checkpointed" not in repr(model)


def test_wrapper_takes_the_training_mode_of_the_module_it_replaces():
    model = gpt().eval()
    light = modify.checkpoint_activations(model, where="transformer.h.*")
    assert not any(m.training for m in light.modules())


@pytest.mark.parametrize("order", ["lora_first", "checkpoint_first"])
def test_composes_with_lora_in_either_order(order):
    model = gpt()
    adapted = modify.lora(model, rank=4)
    if order == "lora_first":
        light = modify.checkpoint_activations(adapted, where="transformer.h.*")
    else:
        light = modify.lora(modify.checkpoint_activations(model, where="transformer.h.*"), rank=4)
    assert len(checkpointed(light)) == 3
    with torch.no_grad():
        for mine, theirs in zip(modify.lora_parameters(light), modify.lora_parameters(adapted)):
            theirs.copy_(mine.normal_(std=0.1))
    ids = torch.randint(0, 64, (2, 16))
    loss, _ = loss_and_grads(adapted, ids)
    light_loss, _ = loss_and_grads(light, ids)
    assert_close(light_loss, loss)
    for mine, theirs in zip(modify.lora_parameters(light), modify.lora_parameters(adapted)):
        assert_close(mine.grad, theirs.grad, atol=1e-6)


def test_compiles_without_graph_breaks():
    model = gpt()
    light = modify.checkpoint_activations(model, where="transformer.h.*")
    ids = torch.randint(0, 64, (2, 16))
    compiled = torch.compile(light, backend="eager", fullgraph=True)
    loss, grads = loss_and_grads(model, ids)
    compiled_loss = compiled(ids).logsumexp(-1).mean()
    light.zero_grad()
    compiled_loss.backward()
    assert_close(compiled_loss.detach(), loss)
    for name, p in light.named_parameters():
        assert_close(p.grad, grads[name], atol=1e-6)


def test_where_matching_nothing_is_a_value_error():
    with pytest.raises(ValueError, match=r"checkpoint_activations: `where` \('blocks\.\*'\) matches no layer of the GPT"):
        modify.checkpoint_activations(gpt(), where="blocks.*")


def test_deepcopy_and_pickle_keep_the_checkpointing():
    light = modify.checkpoint_activations(gpt(), where="transformer.h.*")
    ids = torch.randint(0, 64, (2, 16))
    for again in (copy.deepcopy(light), pickle.loads(pickle.dumps(light))):
        assert len(checkpointed(again)) == 3
        assert torch.equal(again(ids), light(ids))


@pytest.mark.parametrize("where", ["0", "1", "3"])  # a leaf, a Parallel, a plain torch.nn module
def test_every_wrapper_is_a_sequential_with_the_same_outputs_gradients_and_checks(where):
    net = modify.Sequential(
        modify.Linear(8, 8), modify.Fork(modify.Linear(8, 8), modify.Tanh()), modify.Add(), torch.nn.Linear(8, 2)
    )
    light = modify.checkpoint_activations(net, where=where)
    wrapper = light[int(where)]
    assert isinstance(wrapper, modify.Sequential) and isinstance(wrapper, ActivationCheckpoint)
    inner = wrapper if isinstance(net[int(where)], modify.Sequential) else wrapper[0]
    assert inner is net[int(where)] or all(a is b for a, b in zip(inner.parameters(), net[int(where)].parameters()))
    assert all(a is b for a, b in zip(light.parameters(), net.parameters()))
    x = torch.randn(4, 8, requires_grad=True)
    x_light = x.detach().clone().requires_grad_()
    y = net(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    y_light = light(x_light)
    y_light.square().sum().backward()
    assert torch.equal(y_light, y)
    assert_close(x_light.grad, x.grad, atol=1e-6)
    for mine, grad in zip(light.parameters(), grads):
        assert_close(mine.grad, grad, atol=1e-6)
    path = "0.0" if where == "0" else "0"
    with pytest.raises(ValueError, match=rf"Linear at '{path}' expected last dimension 8, got a tensor of shape \(4, 7\)"):
        light(torch.randn(4, 7))
    assert modify.checkpoint_activations(light, where=where)[int(where)] is wrapper
    assert type(pickle.loads(pickle.dumps(light))[int(where)]) is type(wrapper)


def test_freed_heap_memory_is_handed_back_around_each_run_and_recomputation(monkeypatch):
    from modify.rewriting import checkpoint as checkpoint_module

    light = modify.checkpoint_activations(gpt(), where="transformer.h.*")  # 3 blocks
    calls = []
    monkeypatch.setattr(checkpoint_module, "release_freed_memory", lambda: calls.append("release"))
    out = light(torch.randint(0, 64, (2, 16)))
    assert len(calls) == 6  # before and after each block's forward
    out.sum().backward()
    assert len(calls) >= 9  # at least before each block's recomputation (which may stop early)
