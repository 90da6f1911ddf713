"""summary: exact parameter counts side by side, sharing by identity."""

from __future__ import annotations

import pytest

import modify
from modify.models import GPT, GPTConfig


def test_counts_of_a_gpt_and_two_siblings():
    base = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=8))
    base.requires_grad_(False)
    a = modify.lora(base, rank=2, where=(modify.Linear, "transformer.h.*"))
    b = modify.lora(base, rank=1, where=(modify.Embedding, "*.wte"))
    result = modify.summary(base, a, b, names=["base", "a", "b"])
    unique = {id(p): p for p in base.parameters()}  # lm_head is tied to wte: counted once
    total = sum(p.numel() for p in unique.values())
    adapters_a = sum(p.numel() for p in modify.lora_parameters(a))
    adapters_b = sum(p.numel() for p in modify.lora_parameters(b))
    base_row, a_row, b_row = result.rows
    assert base_row == {"total": total, "trainable": 0, "shared": {"a": total, "b": total}, "adapters": 0}
    assert a_row == {"total": total + adapters_a, "trainable": adapters_a, "shared": {"base": total, "b": total},
                     "adapters": adapters_a}  # fmt: skip
    assert b_row["shared"] == {"base": total, "a": total} and b_row["adapters"] == adapters_b == 20 * 1 + 1 * 8
    text = str(result)
    assert text.splitlines()[0].split() == ["model", "total", "trainable", "shared", "with", "base", "shared",
                                            "with", "a", "shared", "with", "b", "adapters"]  # fmt: skip
    assert f"{total + adapters_a:,}" in text.splitlines()[2] and repr(result) == text


def test_default_names_and_bad_input():
    lin = modify.Linear(3, 3)
    assert str(modify.summary(lin)).splitlines() == ["model      total  trainable  adapters", "0: Linear     12         12         0"]
    with pytest.raises(ValueError, match="at least one"):
        modify.summary()
    with pytest.raises(ValueError, match="one distinct name per model"):
        modify.summary(lin, lin, names=["x"])
    with pytest.raises(TypeError, match="got int"):
        modify.summary(lin, 3)
