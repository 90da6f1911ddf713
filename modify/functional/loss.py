"""The language-model loss without the whole logits: :func:`chunked_cross_entropy`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._core.memory import in_cpu_memory, release_freed_memory


def chunked_cross_entropy(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *, chunk: int = 1024, ignore_index: int = -100
) -> torch.Tensor:
    """``F.cross_entropy(head(hidden).float(), targets, ignore_index=...)``, ``chunk`` positions at a time.

    A causal language model's last layer maps each position's hidden state to vocabulary-sized
    logits; for a batch of ``N`` positions the plain loss holds ``(N, V)`` logits in the compute
    dtype, their float32 copy, the log-softmax saved for the backward pass and the gradients of
    each. Here the head runs on ``chunk`` positions at a time under activation checkpointing
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, as in Liger-Kernel's fused
    linear cross-entropy and Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language
    Models", arXiv:2411.09009): each chunk's logits are dropped after its summed loss and
    recomputed in the backward pass, so at most ``(chunk, V)`` logits exist at once, for one more
    run of the head. The value and the gradients (to ``hidden`` and to the head's parameters) are
    those of the plain loss, up to the order of float summation.

    Args:
        hidden: ``(*, C)`` hidden states, e.g. ``(B, T, C)`` of the positions that predict ``targets``.
        head: the output layer, ``(n, C) -> (n, V)`` (a ``Linear``, a LoRA or quantized one).
        targets: ``(*)`` int64 class indices, ``ignore_index`` at positions left out of the mean.
        chunk: positions per run of the head.
        ignore_index: the target value that contributes nothing (PyTorch's and ``transformers``' ``-100``).

    Shape:
        ``hidden`` ``(*, C)`` and ``targets`` ``(*)`` (the same leading axes) -> ``()``.

    Returns:
        The mean cross-entropy over the positions whose target is not ``ignore_index``, in float32
        (float64 for a float64 head; NaN when there are none, as ``F.cross_entropy``).

    Raises:
        ValueError: ``targets``' shape is not ``hidden``'s without its last axis, or ``chunk < 1``.

    Example:
        >>> import torch, torch.nn.functional as F, modify
        >>> from modify.functional import chunked_cross_entropy
        >>> head, hidden = modify.Linear(16, 100), torch.randn(2, 8, 16)
        >>> targets = torch.randint(0, 100, (2, 8))
        >>> loss = chunked_cross_entropy(hidden, head, targets, chunk=5)
        >>> plain = F.cross_entropy(head(hidden).reshape(-1, 100), targets.reshape(-1))
        >>> torch.allclose(loss, plain)
        True
    """
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(
            f"chunked_cross_entropy: targets of shape {tuple(targets.shape)} do not match hidden states of shape "
            f"{tuple(hidden.shape)} (expected {tuple(hidden.shape[:-1])})"
        )
    if chunk < 1:
        raise ValueError(f"chunked_cross_entropy: chunk must be at least 1, got {chunk}")
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    total = sum(
        checkpoint(_summed_loss, head, rows, wanted, ignore_index, use_reentrant=False)
        for rows, wanted in zip(hidden.split(chunk), targets.split(chunk))
    )
    return total / (targets != ignore_index).sum()


def _summed_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The summed cross-entropy of one chunk's logits, in float32 at least."""
    if in_cpu_memory(hidden):
        release_freed_memory()  # the previous chunk's logits, freed (at its forward, recompute or backward)
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
