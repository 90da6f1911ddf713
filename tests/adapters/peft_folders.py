"""The adapter folders of tests/data/peft_folders, written by the same calls before and after a change.

``python tests/adapters/peft_folders.py DIR`` writes them into ``DIR``; test_lora_bytes.py writes
them again into a temporary folder and compares the bytes with the stored ones (written by the
code before LoRA blocks named their branches), so ``save_adapters`` output stays PEFT's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import modify
from modify.models import GPT, GPTConfig, Llama, LlamaConfig


def _filled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every parameter drawn from one seeded generator, in sorted-name order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def _adapted(base: torch.nn.Module, seed: int, **options) -> torch.nn.Module:
    """``lora(base, **options)`` with its adapter parameters drawn from a seeded generator."""
    adapted = modify.lora(_filled(base, seed), **options)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in modify.lora_parameters(adapted):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return adapted


def models() -> dict[str, torch.nn.Module]:
    """The adapted models, by folder name."""
    gpt = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=2, n_head=2, n_embd=8))
    llama = Llama(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1))
    plain = modify.Sequential(embed=modify.Embedding(10, 6), proj=modify.Linear(6, 6),
                              conv=modify.Conv1d(6, 4, 3))
    return {
        "gpt": _adapted(gpt, 1, rank=2, alpha=4.0, dropout=0.1, where="*.c_attn"),
        "llama": _adapted(llama, 2, rank=2, where=modify.Linear),
        "plain": _adapted(plain, 3, rank=3, where=lambda path, m: path in ("embed", "proj", "conv")),
        "dora": _adapted(modify.Sequential(a=modify.Linear(4, 5), b=modify.Linear(5, 3)), 4, rank=2, dora=True,
                         use_rslora=True),
    }


def write(root: Path) -> None:
    for name, model in models().items():
        modify.save_adapters(model, root / name)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
