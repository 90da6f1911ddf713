"""``modify.convert``'s capture of a stack of identical blocks through a two-block stand-in.

The reference is the whole model's capture (the same ``convert`` with the stand-in switched off)
and the original model: the fast tree must be that very tree (same classes and names, every
parameter the original's object, the same ``reference_name``\\ s), compute the original's outputs
and gradients at another batch size and length, and leave the original untouched. Blocks that are
not provably identical, or whose graphs differ, take the whole capture.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_state_equal, state_snapshot
from torch import nn

import modify
import modify.conversion as conversion
import modify.conversion.export as export
from modify.conversion.repeats import repeated_blocks, stand_in

transformers = pytest.importorskip("transformers")
_IDS = dict(vocab_size=64, bos_token_id=0, eos_token_id=0)


def gpt2() -> nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, **_IDS)).eval()


def llama() -> nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        pad_token_id=0, **_IDS,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def repeats_taken(monkeypatch) -> list[bool]:
    """What each call of ``repeat`` answered (whether the fast path was taken)."""
    taken, real = [], export.repeat
    monkeypatch.setattr(export, "repeat", lambda *a: taken.append(real(*a)) or taken[-1])
    return taken


@pytest.fixture
def captures(monkeypatch) -> list[object]:
    """The ``repeated`` argument of each capture ``convert`` made (``None``: the whole model)."""
    made, real = [], conversion._checked_capture
    monkeypatch.setattr(conversion, "_checked_capture", lambda *a: made.append(a[-1]) or real(*a))
    return made


def _whole(monkeypatch, model, args) -> nn.Module:
    with monkeypatch.context() as patch:
        patch.setattr(conversion, "repeated_blocks", lambda module: None)
        return modify.convert(model, args, {"use_cache": False})


def _grads(model: nn.Module, run, x: torch.Tensor) -> dict[int, torch.Tensor]:
    model.zero_grad()
    out = run(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}


@pytest.mark.parametrize("make", [gpt2, llama], ids=["GPT-2", "Llama"])
def test_the_stand_in_capture_is_the_whole_capture(make, gen, monkeypatch, repeats_taken, captures):
    model = make()
    before = state_snapshot(model)
    ids = torch.randint(0, 64, (2, 8), generator=gen)
    fast = modify.convert(model, (ids,), {"use_cache": False})
    assert repeats_taken == [True] and len(captures) == 1  # the fast tree passed the check on the example
    whole = _whole(monkeypatch, model, (ids,))

    assert str(fast) == str(whole)
    assert [(n, id(p)) for n, p in fast.named_parameters()] == [(n, id(p)) for n, p in whole.named_parameters()]
    names = [[getattr(m, "reference_name", None) for m in tree.modules()] for tree in (fast, whole)]
    assert names[0] == names[1]
    assert_state_equal(model, before)
    other = torch.randint(0, 64, (3, 11), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(fast(other), model(other, use_cache=False).logits, atol=1e-5, rtol=1e-5)
    expected = _grads(model, lambda t: model(t, use_cache=False).logits, other)
    got = _grads(model, fast, other)
    assert got.keys() == expected.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, atol=1e-5, rtol=1e-4)


def test_a_stack_of_identical_blocks_is_found_and_the_stand_in_leaves_the_model_untouched():
    model = gpt2()
    assert repeated_blocks(model) == ("transformer.h", 4)
    twin = stand_in(model, "transformer.h")
    assert len(model.transformer.h) == 4 and len(twin.transformer.h) == 2
    assert twin.transformer.h[1] is model.transformer.h[1] and twin.lm_head is model.lm_head
    assert twin.transformer is not model.transformer and twin.transformer.h is not model.transformer.h


def test_blocks_that_differ_are_not_repeated():
    hooked = gpt2()
    hooked.transformer.h[2].register_forward_hook(lambda m, i, o: o)
    per_layer = llama()
    per_layer.config.layer_types = ["full_attention", "sliding_attention"] * 2
    shapes = nn.Sequential(nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 5), nn.Linear(4, 4)]))
    for model in (hooked, per_layer, shapes):
        assert repeated_blocks(model) is None


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x, scale: float):
        return torch.tanh(self.fc(x)) * scale


class _Stack(nn.Module):
    """Identical blocks, one of them called with another ``scale`` (control flow on a size first:
    ``torch.export`` only)."""

    def __init__(self, special: int):
        super().__init__()
        self.blocks = nn.ModuleList(_Block() for _ in range(4))
        self.special = special

    def forward(self, x):
        if x.size(0) == 0:
            return x
        for i, block in enumerate(self.blocks):
            x = block(x, 2.0 if i == self.special else 1.0)
        return x


@pytest.mark.parametrize("special", [1, 3], ids=["second block (graphs differ)", "last block (the example's check)"])
def test_a_block_the_parent_treats_apart_takes_the_whole_capture(special, gen, repeats_taken, captures):
    model = _Stack(special)
    assert repeated_blocks(model) == ("blocks", 4)
    converted = modify.convert(model, (torch.randn(2, 8, generator=gen),))
    x = torch.randn(5, 8, generator=gen)
    torch.testing.assert_close(converted(x), model(x))
    assert repeats_taken == [special != 1]  # then the whole capture, which repeats nothing
    assert captures == [("blocks", 4), None]
