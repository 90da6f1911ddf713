"""Sampling from a language model, nanoGPT style."""

from __future__ import annotations

import torch
from torch import nn

from .._core.checks import typechecked
from .gpt import GPT
from .llama import Llama


@torch.no_grad()
@typechecked
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    block_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after ``idx``, one at a time (nanoGPT's ``generate``).

    Each step feeds the last ``block_size`` tokens, takes the logits of the last position,
    divides them by ``temperature``, keeps the ``top_k`` largest, and samples from the softmax.
    Runs under ``torch.no_grad()``; the model's mode is left as is, so call ``model.eval()``
    first to turn dropout off.

    Args:
        model: a language model from ``(B, T)`` ids to ``(B, T, vocab)`` logits: a :class:`GPT`
            or :class:`~modify.models.Llama`, or any sibling or wrapper of one.
        idx: ``(B, T)`` int64 prompt ids, ``T >= 1``.
        max_new_tokens: tokens to add (``>= 0``).
        temperature: softmax temperature, ``> 0``; lower is greedier.
        top_k: sample among the ``top_k`` most likely tokens only (``None``: all).
        block_size: the longest context the model takes; default ``model.config.block_size``
            (GPT) or ``model.config.max_position_embeddings`` (Llama). Required for other models.
        generator: a ``torch.Generator`` for reproducible samples.

    Shape:
        ``idx``: ``(B, T)`` -> ``(B, T + max_new_tokens)``; the model sees at most the last
        ``block_size`` tokens, ``(B, min(T_now, block_size))``, at each step.

    Returns:
        ``(B, T + max_new_tokens)`` int64: ``idx`` followed by the sampled tokens.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``temperature <= 0``, ``top_k < 1``, ``max_new_tokens < 0``, an ``idx`` that
            is not ``(B, T)`` with ``T >= 1``, or no known ``block_size``.

    Example:
        >>> import torch
        >>> from modify.models import GPT, GPTConfig, generate
        >>> gpt = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=16)).eval()
        >>> generate(gpt, torch.zeros(2, 1, dtype=torch.long), 12, top_k=5).shape
        torch.Size([2, 13])
    """
    block_size = _context_length(model, block_size)
    if temperature <= 0 or (top_k is not None and top_k < 1) or max_new_tokens < 0:
        raise ValueError(
            f"generate: needs temperature > 0, top_k >= 1, max_new_tokens >= 0; "
            f"got {temperature}, {top_k}, {max_new_tokens}"
        )
    if idx.dim() != 2 or idx.shape[1] == 0 or idx.is_floating_point():
        raise ValueError(f"generate: idx must be (B, T) integer ids with T >= 1, got {tuple(idx.shape)} {idx.dtype}")
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block_size:])[:, -1, :] / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    return idx


def _context_length(model: nn.Module, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"generate: block_size must be at least 1, got {block_size}")
        return block_size
    if isinstance(model, GPT):
        return model.config.block_size
    if isinstance(model, Llama):
        return model.config.max_position_embeddings
    raise ValueError(f"generate: pass block_size= for a {type(model).__name__}; only GPT and Llama know theirs")
