"""chunked_cross_entropy: the plain F.cross_entropy of the head's logits, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modify
from modify.functional import chunked_cross_entropy
from tests.helpers import assert_close


def plain_loss(hidden, head, targets):
    logits = head(hidden).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk", [1, 7, 24, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_and_gradients_equal_the_plain_loss(chunk, dtype, gen):
    head = modify.Linear(16, 50).to(dtype)
    hidden = torch.randn(3, 8, 16, generator=gen).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (3, 8), generator=gen)
    targets[0, :3] = -100  # padding left out of the mean
    loss, reference = chunked_cross_entropy(hidden, head, targets, chunk=chunk), plain_loss(hidden, head, targets)
    assert loss.dtype == torch.float32
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert_close(loss, reference, atol=tolerance, rtol=tolerance)
    tensors = (hidden, head.weight, head.bias)
    for mine, theirs in zip(grads(loss, tensors), grads(reference, tensors)):
        assert_close(mine, theirs, atol=tolerance, rtol=tolerance)


def test_gradcheck_in_float64(gen):
    head = modify.Linear(4, 6).double()
    hidden = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (5,), generator=gen)
    assert torch.autograd.gradcheck(lambda h, w: chunked_cross_entropy(h, lambda x: F.linear(x, w), targets, chunk=2),
                                    (hidden, head.weight.detach().clone().requires_grad_()))  # fmt: skip


def test_a_qlora_head_trains_as_with_the_plain_loss(gen):
    head = modify.lora(modify.quantize(modify.Linear(64, 40), "nf4"), 4)
    with torch.no_grad():
        for p in modify.lora_parameters(head):
            p.normal_(generator=gen)
    hidden = torch.randn(2, 6, 64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (2, 6), generator=gen)
    loss, reference = chunked_cross_entropy(hidden, head, targets, chunk=5), plain_loss(hidden, head, targets)
    assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    tensors = (hidden, *modify.lora_parameters(head))
    for mine, theirs in zip(grads(loss, tensors), grads(reference, tensors)):
        assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_the_whole_logits_never_exist(gen):
    head = modify.Linear(8, 30)
    hidden = torch.randn(40, 8, generator=gen, requires_grad=True)
    rows = []
    handle = head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    chunked_cross_entropy(hidden, head, torch.randint(0, 30, (40,), generator=gen), chunk=16).backward()
    handle.remove()
    assert rows[:3] == [16, 16, 8] and sorted(rows[3:]) == [8, 16, 16]  # forward, then each chunk again in backward


def test_bad_arguments_raise_naming_what_arrived():
    head = modify.Linear(8, 30)
    with pytest.raises(ValueError, match=r"targets of shape \(2, 5\) do not match hidden states of shape \(2, 4, 8\)"):
        chunked_cross_entropy(torch.randn(2, 4, 8), head, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk must be at least 1, got 0"):
        chunked_cross_entropy(torch.randn(2, 4, 8), head, torch.zeros(2, 4, dtype=torch.long), chunk=0)


def test_freed_heap_memory_is_handed_back_before_each_chunk(gen, monkeypatch):
    from modify.functional import loss as loss_module

    calls = []
    monkeypatch.setattr(loss_module, "release_freed_memory", lambda: calls.append("release"))
    hidden = torch.randn(40, 8, generator=gen, requires_grad=True)
    chunked_cross_entropy(hidden, modify.Linear(8, 30), torch.randint(0, 30, (40,), generator=gen), chunk=16).backward()
    assert len(calls) == 6  # 3 chunks, each run and recomputed
