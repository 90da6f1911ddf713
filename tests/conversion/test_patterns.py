"""``modify.conversion.patterns``: spelled-out RMSNorm, ``rotate_half`` and ``repeat_kv`` folded into one call.

Each model is its own reference: the converted tree holds the folded leaf (and, for RMSNorm, the
original ``weight`` object) and computes the original's outputs and gradients, in float64 to
rounding; a chain whose steps are used elsewhere is not folded and stays exact. Kept per-shape
replays (a mask computed from sizes alone) are reused only while sizes and tensors are unchanged.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from torch import nn

import modify
from modify.conversion.patterns import rotate_half


class SpelledRMSNorm(nn.Module):
    """``transformers``' ``LlamaRMSNorm`` without the casts."""

    def __init__(self, n: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.rand(n) + 0.5), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Net(nn.Module):
    def __init__(self, n: int = 8):
        super().__init__()
        self.proj, self.norm = nn.Linear(n, n), SpelledRMSNorm(n)

    def forward(self, x):
        return self.norm(self.proj(x))


class Leaky(Net):
    """The norm's scale is used a second time: nothing may be folded away."""

    def forward(self, x):
        h = self.proj(x)
        scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.norm.weight * (h * scale) + scale


class Attention(nn.Module):
    """Rotary ``q * cos + rotate_half(q) * sin`` and grouped-query ``repeat_kv``, as ``transformers`` writes them
    (a branch on a size, as there, so that ``torch.export`` captures it)."""

    def forward(self, x):  # x: (B, H, T, D)
        if x.size(-1) % 2:
            raise ValueError("odd head size")
        half = x.shape[-1] // 2
        turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        q = x * 0.5 + turned * 0.25
        b, h, t, d = x.shape
        k = x[:, :, None, :, :].expand(b, h, 2, t, d).reshape(b, h * 2, t, d)
        return q.repeat(1, 2, 1, 1) + k


class Masked(nn.Module):
    """A causal mask computed from the input's size alone."""

    def __init__(self):
        super().__init__()
        self.register_buffer("base", torch.ones(()))

    def forward(self, x):  # (B, T, T)
        t = x.size(-1)
        return x * torch.tril(self.base.expand(t, t))


def _leaves(model: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


def _check_same_function(model: nn.Module, converted: nn.Module, x: torch.Tensor) -> None:
    x = x.double().requires_grad_()
    model.double(), converted.double()
    expected, got = model(x), converted(x)
    assert_close(got, expected, atol=1e-12, rtol=1e-10)
    grads = torch.autograd.grad(expected.square().sum(), [x, *model.parameters()])
    got_grads = torch.autograd.grad(got.square().sum(), [x, *model.parameters()])
    for a, b in zip(got_grads, grads):
        assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("args", [None, "export"], ids=["fx", "export"])
def test_a_spelled_out_rms_norm_becomes_rms_norm_and_affine_holding_the_weight(args, gen):
    model = Net()
    x = torch.randn(2, 5, 8, generator=gen)
    converted = modify.convert(model, None if args is None else (x,))
    norms, affines = _leaves(converted, modify.RMSNorm), _leaves(converted, modify.ElementwiseAffine)
    assert len(norms) == 1 and norms[0].eps == 1e-6
    assert len(affines) == 1 and affines[0].weight is model.norm.weight
    assert not _leaves(converted, modify.Function)
    _check_same_function(model, converted, torch.randn(3, 4, 8, generator=gen))


def test_a_norm_whose_steps_are_used_elsewhere_is_not_folded(gen):
    model = Leaky()
    converted = modify.convert(model)
    assert not _leaves(converted, modify.RMSNorm)
    _check_same_function(model, converted, torch.randn(2, 5, 8, generator=gen))


def test_transformers_llama_norms_become_rms_norm_leaves():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=32, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(config).eval()
    converted = modify.convert(model, (torch.randint(1, 32, (2, 6)),), {"use_cache": False})
    weights = {id(m.weight) for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"}
    assert len(_leaves(converted, modify.RMSNorm)) == len(weights) == 5
    assert weights <= {id(m.weight) for m in _leaves(converted, modify.ElementwiseAffine)}
    names = {m.name.rsplit(".", 1)[-1] for m in _leaves(converted, modify.Function)}
    assert {"rotate_half", "repeat_interleave"} <= names


def test_rotate_half_and_repeat_kv_fold_into_one_call_each(gen):
    model = Attention()
    x = torch.randn(2, 3, 5, 8, generator=gen)
    converted = modify.convert(model, (x,))
    names = sorted(m.name for m in _leaves(converted, modify.Function))
    assert names.count("rotate_half") == 1 and names.count("repeat_interleave") == 1
    assert not [n for n in names if n.startswith(("slice", "neg", "unsqueeze", "expand"))]
    _check_same_function(model, converted, torch.randn(3, 3, 5, 8, generator=gen))  # export fixes all but the batch axis of a 4-D input


def test_rotate_half_rotates_the_two_halves():
    x = torch.randn(2, 6, dtype=torch.float64)
    assert torch.equal(rotate_half(x), torch.cat((-x[:, 3:], x[:, :3]), dim=-1))


def test_a_size_only_replay_is_kept_per_shape_and_recomputed_when_its_tensors_change(gen):
    model = Masked()
    converted = modify.convert(model, (torch.randn(2, 4, 4, generator=gen),))
    (leaf,) = [m for m in _leaves(converted, modify.Function) if getattr(m.fn, "per_shape", False)]
    x = torch.randn(2, 4, 4, generator=gen)
    assert leaf(x) is leaf(x)
    with torch.no_grad():
        model.base.fill_(2.0)  # an in-place write to the buffer it reads (shared by identity)
    assert_close(converted(x), model(x))
    y = torch.randn(1, 6, 6, generator=gen)
    assert leaf(y).shape == (6, 6)
    assert_close(converted(y), model(y))


class Accumulating(nn.Module):
    """A table made from sizes alone, then written in place by a call that reads the input."""

    def forward(self, x):  # (B, T)
        counts = torch.zeros(x.size(1))
        counts.add_(x.sum(0))
        return counts * 2


def test_a_size_only_value_written_in_place_later_is_recomputed_every_call(gen):
    model = Accumulating()
    converted = modify.convert(model)
    x = torch.randn(3, 4, generator=gen)
    for _ in range(3):
        assert_close(converted(x), model(x))
