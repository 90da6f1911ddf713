"""Key/value caching for decoding: cached leaves and :func:`kv_cache`, the sibling that holds them.

A decoder only mixes positions in its attention leaves, and only its position leaves
(:class:`Positions`, :class:`~modify.RotaryEmbedding`) depend on where a token sits. Rewriting
exactly those leaves into cached ones gives a sibling that shares every weight with the model and
can be fed one new position at a time: each :class:`CachedAttention` appends the new keys and
values to the ones it has seen, and each cached position leaf counts the positions it has seen.
This is what Hugging Face's ``past_key_values`` does, as a rewrite of three leaves.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from .._core.arguments import typechecked
from ..primitives import Positions, RotaryEmbedding, ScaledDotProductAttention
from .cached_attention import CachedAttention
from .cached_positions import CachedPositions, CachedRotaryEmbedding, CachedTokenInput
from .padding import TokenInput
from ..rewriting.selection import rewrite, select


_CACHED = (CachedAttention, CachedPositions, CachedRotaryEmbedding, CachedTokenInput)
_STATEFUL = (ScaledDotProductAttention, Positions, RotaryEmbedding, TokenInput)


@typechecked
def kv_cache(model: nn.Module, *, capacity: int | None = None) -> nn.Module:
    """A sibling of a decoder that caches keys and values, to be fed one new position at a time.

    ``modify.rewrite`` replaces every ``ScaledDotProductAttention`` by a :class:`CachedAttention`,
    every ``Positions`` by a :class:`CachedPositions` and every ``RotaryEmbedding`` by a
    :class:`CachedRotaryEmbedding`; everything else, every parameter included, is shared with
    ``model`` by identity, and ``model`` is left as it was. Feed the sibling the prompt, then each
    new token: its logits equal the model's on the whole sequence so far. :func:`reset_cache`
    empties it for a new sequence; :func:`cache_offset` tells how many positions it holds. The
    model must mix positions only in its attention leaves (GPT, Llama and their LoRA siblings do).

    With ``capacity`` the cache is static, as transformers' ``StaticCache``: each attention leaf
    allocates ``capacity`` positions once and attends over all of them through a mask of the
    positions written, so every one-position step has the same shapes (one ``torch.compile``
    graph for the whole decoding, see :class:`CachedAttention`).

    Args:
        model: a causal decoder built from modify leaves, e.g. a :class:`GPT` or :class:`Llama`.
        capacity: the most positions the cache holds (static cache); ``None``: storage that
            grows as needed.

    Returns:
        The cached sibling, of ``model``'s class (a ``GPT`` stays a ``GPT``), with empty caches.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` has no ``ScaledDotProductAttention``, or a non-causal one (named by
            path); ``capacity < 1``.

    Example:
        >>> import torch
        >>> from modify.models import GPT, GPTConfig, kv_cache, cache_offset
        >>> gpt = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
        >>> ids = torch.randint(0, 50, (1, 6))
        >>> cached = kv_cache(gpt)
        >>> first, last = cached(ids[:, :5]), cached(ids[:, 5:])
        >>> torch.allclose(last[:, -1], gpt(ids)[:, -1], atol=1e-5), cache_offset(cached)
        (True, 6)
        >>> cached.lm_head.weight is gpt.lm_head.weight
        True
    """
    attention = select(model, ScaledDotProductAttention)
    if not attention:
        raise ValueError(f"kv_cache: {type(model).__name__} has no ScaledDotProductAttention to cache")
    for path, module in attention:
        if not module.causal:
            raise ValueError(f"kv_cache: the attention at '{path}' is not causal; only causal decoders can be cached")
    if capacity is not None and capacity < 1:
        raise ValueError(f"kv_cache: capacity must be at least 1, got {capacity}")
    return rewrite(model, partial(_cached, capacity=capacity), lambda path, module: isinstance(module, _STATEFUL))


@typechecked
def reset_cache(model: nn.Module) -> None:
    """Empty every cache of a :func:`kv_cache` sibling, for a new sequence.

    Args:
        model: a sibling made by :func:`kv_cache` (or any model; modules without a cache are left alone).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> import torch
        >>> from modify.models import GPT, GPTConfig, kv_cache, reset_cache, cache_offset
        >>> cached = kv_cache(GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)))
        >>> _ = cached(torch.zeros(1, 3, dtype=torch.long)); reset_cache(cached); cache_offset(cached)
        0
    """
    for _, module in select(model, lambda path, module: isinstance(module, _CACHED)):
        module.reset()


@typechecked
def cache_offset(model: nn.Module) -> int:
    """The number of positions a :func:`kv_cache` sibling has seen since it was made or reset.

    Args:
        model: a sibling made by :func:`kv_cache`.

    Returns:
        The common ``offset`` of its cached leaves.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` holds no cached leaf, or its cached leaves disagree (only part of
            the model was called), naming each path and offset.

    Example:
        >>> import torch
        >>> from modify.models import GPT, GPTConfig, kv_cache, cache_offset
        >>> cached = kv_cache(GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8)))
        >>> _ = cached(torch.zeros(2, 3, dtype=torch.long)); cache_offset(cached)
        3
    """
    offsets = {path: module.offset for path, module in select(model, lambda path, module: isinstance(module, _CACHED))}
    if len(set(offsets.values())) != 1:
        found = "no cached leaf" if not offsets else f"offsets {offsets}"
        raise ValueError(f"cache_offset: expected cached leaves with one offset, found {found}")
    return next(iter(offsets.values()))


def _cached(module: nn.Module, capacity: int | None) -> nn.Module:
    if isinstance(module, ScaledDotProductAttention):
        return CachedAttention(module, capacity)
    if isinstance(module, TokenInput):
        return CachedTokenInput(module)
    if isinstance(module, Positions):
        return CachedPositions(module)
    return CachedRotaryEmbedding(module)
