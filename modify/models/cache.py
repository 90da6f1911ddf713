"""Key/value caching for decoding: cached leaves and :func:`kv_cache`, the sibling that holds them.

A decoder only mixes positions in its attention leaves, and only its position leaves
(:class:`Positions`, :class:`~modify.RotaryEmbedding`) depend on where a token sits. Rewriting
exactly those leaves into cached ones gives a sibling that shares every weight with the model and
can be fed one new position at a time: each :class:`CachedAttention` appends the new keys and
values to the ones it has seen, and each cached position leaf counts the positions it has seen.
This is what Hugging Face's ``past_key_values`` does, as a rewrite of three leaves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._core.arguments import typechecked
from .._core.checks import expect_tensor, expect_tensors
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..primitives import Positions, RotaryEmbedding, ScaledDotProductAttention
from ..primitives.attention import padded_mask
from .padding import TokenInput, no_padding, positions_from_mask
from ..rewriting.selection import rewrite, select
from ..traits import Linear, ParamFree, Restructure, Unary


class CachedAttention(ScaledDotProductAttention):
    """A causal :class:`~modify.ScaledDotProductAttention` that remembers the keys and values it has seen.

    Each call appends its ``k``, ``v`` (axis -2) to the cache and attends from the new queries
    to every cached position, causally: the query at position ``offset + i`` sees keys ``0 ..
    offset + i``. Feeding a sequence in pieces therefore gives the outputs of feeding it whole.
    The cache is two non-persistent buffers (not in ``state_dict``), with the key/value heads
    as given (grouped-query heads are repeated per call, not stored).

    Args:
        attention: the causal attention leaf to copy the settings of (``dropout``, ``scale``,
            ``training``).

    Shape:
        ``q: (*, H, L, E)``, ``k: (*, H_kv, L, E)``, ``v: (*, H_kv, L, E_v)`` -> ``(*, H, L, E_v)``;
        the cache grows to ``(*, H_kv, offset + L, E)``.

    Attributes:
        cached_key, cached_value: the cache, ``None`` until the first call.
        offset: the number of positions cached.

    Raises:
        TypeError: ``attention`` is not a ``ScaledDotProductAttention``.
        ValueError: ``attention`` is not causal.
        ModifyValueError: (at call) ``k``/``v`` whose leading shape differs from the cache's
            (another batch: call :meth:`reset` first).

    Example:
        >>> import torch, modify
        >>> from modify.models import CachedAttention
        >>> q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        >>> cached = CachedAttention(modify.ScaledDotProductAttention(causal=True))
        >>> first = cached((q[..., :4, :], k[..., :4, :], v[..., :4, :]))  # a prompt of 4 positions
        >>> last = cached((q[..., 4:, :], k[..., 4:, :], v[..., 4:, :]))  # then one more
        >>> whole = modify.ScaledDotProductAttention(causal=True)((q, k, v))
        >>> torch.allclose(torch.cat((first, last), dim=-2), whole, atol=1e-6), cached.offset
        (True, 5)
    """

    @typechecked
    def __init__(self, attention: ScaledDotProductAttention):
        if not attention.causal:
            raise ValueError("CachedAttention: the attention is not causal; only causal attention decodes with a cache")
        super().__init__(True, attention.dropout, attention.scale)
        self.train(attention.training)
        self.register_buffer("cached_key", None, persistent=False)
        self.register_buffer("cached_value", None, persistent=False)
        self.register_buffer("cached_mask", None, persistent=False)
        self.offset = 0

    def reset(self) -> None:
        """Empty the cache."""
        self.cached_key = self.cached_value = self.cached_mask = None
        self.offset = 0

    def forward(self, x):
        q, k, v, key_mask = self.unpack(x)
        if self.cached_key is not None and k.shape[:-2] != self.cached_key.shape[:-2]:
            detail = f"the cache holds keys {describe(self.cached_key)}, got {describe(k)}; reset the cache first"
            raise ModifyValueError(self, detail)
        key_mask = self._append_mask(key_mask, k)
        k, v = self._append(k, v)
        if q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
            k, v = self._repeat_kv(q, k, v)
        length, total = q.shape[-2], k.shape[-2]
        mask = None
        if key_mask is not None:
            mask = padded_mask(key_mask, length, total, causal=True)
        elif 1 < length < total:  # new queries sit at offset .. total - 1: the mask is the bottom rows
            mask = torch.ones(length, total, dtype=torch.bool, device=q.device).tril(total - length)
        dropout = self.dropout if self.training else 0.0
        causal = mask is None and length > 1
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.scale
        )

    def _append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` after the cached positions; return every cached key and value (views).

        Storage grows by doubling and new positions are written in place, so a decoding step
        copies only its own keys and values (no concatenation of the whole cache). Where autograd
        records (gradients enabled) the cache is concatenated instead: an in-place write would
        invalidate the keys saved for the backward pass.
        """
        start, end = self.offset, self.offset + k.shape[-2]
        self.offset = end
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            if start:
                k = torch.cat((self.cached_key[..., :start, :], k), dim=-2)
                v = torch.cat((self.cached_value[..., :start, :], v), dim=-2)
            self._buffers["cached_key"], self._buffers["cached_value"] = k, v
            return k, v
        if self.cached_key is None or end > self.cached_key.shape[-2] or self.cached_key.dtype != k.dtype:
            self._buffers["cached_key"] = _grown(self.cached_key, k, start, end)
            self._buffers["cached_value"] = _grown(self.cached_value, v, start, end)
        self.cached_key[..., start:end, :] = k
        self.cached_value[..., start:end, :] = v
        return self.cached_key[..., :end, :], self.cached_value[..., :end, :]

    def _append_mask(self, key_mask: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor | None:
        """The ``(B, offset + L)`` key mask of every cached position, or ``None`` while nothing was padded."""
        padded = key_mask is not None and key_mask.numel() > 0
        if not padded and self.cached_mask is None:
            return None
        if not padded:
            key_mask = torch.ones(k.shape[0], k.shape[-2], dtype=torch.bool, device=k.device)
        if self.cached_mask is None:  # earlier positions had no padding
            self.cached_mask = torch.ones(k.shape[0], self.offset, dtype=torch.bool, device=k.device)
        self.cached_mask = torch.cat((self.cached_mask[:, : self.offset], key_mask), dim=-1)
        return self.cached_mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}"


def _grown(store: torch.Tensor | None, new: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """A storage of at least ``end`` positions (doubling) holding ``store``'s first ``start`` positions."""
    capacity = max(end, 2 * (store.shape[-2] if store is not None else 0), 16)
    grown = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
    if start:
        grown[..., :start, :] = store[..., :start, :]
    return grown


class CachedTokenInput(TokenInput):
    """A :class:`~modify.models.TokenInput` whose positions continue where its last call stopped.

    Plain ids get positions ``offset .. offset + T - 1``; a padded batch's rows continue from the
    number of tokens each has seen (``seen + cumsum(mask) - 1``), so a left-padded prompt followed
    by one token at a time gets transformers' ``generate`` positions.

    Args:
        tokens: the leaf to copy ``limit`` from.

    Shape:
        As :class:`~modify.models.TokenInput`.

    Attributes:
        offset: positions handed out so far (tokens and padding).
        seen: ``(B,)`` tokens seen per row, ``None`` until a padded call.

    Raises:
        TypeError: ``tokens`` is not a ``TokenInput``.
        ModifyValueError: (at call) ``offset + T > limit``; what ``TokenInput`` refuses.

    Example:
        >>> import torch
        >>> from modify.models import CachedTokenInput, TokenInput
        >>> cached = CachedTokenInput(TokenInput(limit=8))
        >>> ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.tensor([[0, 1, 1], [1, 1, 1]])
        >>> cached((ids, mask))[1].tolist(), cached((ids[:, :1], mask[:, :1] * 0 + 1))[1].tolist()
        ([[0, 0, 1], [0, 1, 2]], [[2], [3]])
    """

    @typechecked
    def __init__(self, tokens: TokenInput):
        super().__init__(tokens.limit)
        self.offset, self.seen = 0, None

    def reset(self) -> None:
        """Start again from position 0."""
        self.offset, self.seen = 0, None

    def forward(self, x):
        ids = x if isinstance(x, torch.Tensor) else expect_tensors(self, x, 2)[0]
        ids = self.check_ids(ids, x)
        start, self.offset = self.offset, self.offset + ids.shape[-1]
        if self.limit is not None and self.offset > self.limit:
            self.offset = start
            raise ModifyValueError(self, f"expected (B, T) with {start} + T <= {self.limit}, got {describe(x)}")
        if isinstance(x, torch.Tensor) and self.seen is None:
            positions = torch.arange(start, self.offset, device=ids.device).expand(ids.shape)
            return ids, positions, no_padding(ids)
        mask = self.check_mask(ids, x[1], x) if isinstance(x, tuple) else torch.ones_like(ids, dtype=torch.bool)
        seen = self.seen if self.seen is not None else torch.full(ids.shape[:1], start, device=ids.device)
        self.seen = seen + mask.sum(-1)
        return ids, positions_from_mask(mask, seen), mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}".lstrip(", ")


class CachedPositions(Positions):
    """A :class:`Positions` leaf that continues where its last call stopped: ``offset .. offset + T - 1``.

    Args:
        positions: the leaf to copy ``limit`` from.

    Shape:
        ``(*, T)`` -> ``(*, T)`` int64, the positions ``offset .. offset + T - 1``.

    Attributes:
        offset: positions handed out so far.

    Raises:
        TypeError: ``positions`` is not a ``Positions``.
        ModifyValueError: (at call) ``offset + T > limit``, or a 0-d input.

    Example:
        >>> import torch
        >>> from modify import Positions
        >>> from modify.models import CachedPositions
        >>> cached = CachedPositions(Positions(limit=8))
        >>> cached(torch.zeros(1, 3)).tolist(), cached(torch.zeros(1, 1)).tolist()
        ([[0, 1, 2]], [[3]])
    """

    @typechecked
    def __init__(self, positions: Positions):
        super().__init__(positions.limit)
        self.offset = 0

    def reset(self) -> None:
        """Start again from position 0."""
        self.offset = 0

    def forward(self, x):
        x = expect_tensor(self, x)
        start = self.offset
        if x.dim() == 0 or (self.limit is not None and start + x.shape[-1] > self.limit):
            raise ModifyValueError(self, f"expected (*, T) with {start} + T <= {self.limit}, got {describe(x)}")
        self.offset = start + x.shape[-1]
        return torch.arange(start, self.offset, device=x.device).expand(x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}".lstrip(", ")


class CachedRotaryEmbedding(RotaryEmbedding):
    """A :class:`~modify.RotaryEmbedding` whose positions continue where its last call stopped.

    Shares the original's ``inv_freq`` buffer (the same tensor object).

    Args:
        rotary: the leaf to copy ``dim``, ``base``, ``scaling`` and ``inv_freq`` from.

    Shape:
        ``(*, T, dim) -> (*, T, dim)``, rotated for positions ``offset .. offset + T - 1``.

    Attributes:
        offset: positions rotated so far.

    Raises:
        TypeError: ``rotary`` is not a ``RotaryEmbedding``.
        ModifyValueError: (at call) last dimension not ``dim``, or fewer than two dimensions.

    Example:
        >>> import torch, modify
        >>> from modify.models import CachedRotaryEmbedding
        >>> rope, x = modify.RotaryEmbedding(8), torch.randn(1, 2, 5, 8)
        >>> cached = CachedRotaryEmbedding(rope)
        >>> pieces = torch.cat((cached(x[..., :3, :]), cached(x[..., 3:, :])), dim=-2)
        >>> torch.equal(pieces, rope(x)), cached.inv_freq is rope.inv_freq
        (True, True)
    """

    @typechecked
    def __init__(self, rotary: RotaryEmbedding):
        super().__init__(rotary.dim, rotary.base, rotary.scaling)
        self.inv_freq = rotary.inv_freq
        self.offset = 0

    def reset(self) -> None:
        """Start again from position 0."""
        self.offset = 0

    def forward(self, x):
        if isinstance(x, tuple):  # positions given (a padded batch's, from CachedTokenInput): count them only
            self.offset += expect_tensors(self, x, 2)[0].shape[-2]
            return super().forward(x)
        x = expect_tensor(self, x)
        if x.dim() < 2 or x.shape[-1] != self.dim:
            raise ModifyValueError(self, f"expected (*, T, {self.dim}), got {describe(x)}")
        start = self.offset
        self.offset = start + x.shape[-2]
        return self.rotate(x, torch.arange(start, self.offset, device=x.device))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset={self.offset}"


class LastPosition(Leaf, Unary, ParamFree, Linear, Restructure):
    """Keep the last position only: ``x -> x[..., -1:, :]``, a view.

    Placed before a language model's output head while decoding, it computes the logits of the
    one position that is sampled from (nanoGPT's ``logits = self.lm_head(x[:, [-1], :])``).

    Shape:
        ``(*, T, C) -> (*, 1, C)``.

    Raises:
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: fewer than two dimensions.

    Example:
        >>> import torch
        >>> from modify.models import LastPosition
        >>> LastPosition()(torch.arange(6.0).reshape(1, 3, 2)).tolist()
        [[[4.0, 5.0]]]
    """

    def forward(self, x):
        x = expect_tensor(self, x)
        if x.dim() < 2:
            raise ModifyValueError(self, f"expected (*, T, C), got {describe(x)}")
        return x[..., -1:, :]


_CACHED = (CachedAttention, CachedPositions, CachedRotaryEmbedding, CachedTokenInput)
_STATEFUL = (ScaledDotProductAttention, Positions, RotaryEmbedding, TokenInput)


@typechecked
def kv_cache(model: nn.Module) -> nn.Module:
    """A sibling of a decoder that caches keys and values, to be fed one new position at a time.

    ``modify.rewrite`` replaces every ``ScaledDotProductAttention`` by a :class:`CachedAttention`,
    every ``Positions`` by a :class:`CachedPositions` and every ``RotaryEmbedding`` by a
    :class:`CachedRotaryEmbedding`; everything else, every parameter included, is shared with
    ``model`` by identity, and ``model`` is left as it was. Feed the sibling the prompt, then each
    new token: its logits equal the model's on the whole sequence so far. :func:`reset_cache`
    empties it for a new sequence; :func:`cache_offset` tells how many positions it holds. The
    model must mix positions only in its attention leaves (GPT, Llama and their LoRA siblings do).

    Args:
        model: a causal decoder built from modify leaves, e.g. a :class:`GPT` or :class:`Llama`.

    Returns:
        The cached sibling, of ``model``'s class (a ``GPT`` stays a ``GPT``), with empty caches.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` has no ``ScaledDotProductAttention``, or a non-causal one (named by
            path).

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
    return rewrite(model, _cached, lambda path, module: isinstance(module, _STATEFUL))


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


def _cached(module: nn.Module) -> nn.Module:
    if isinstance(module, ScaledDotProductAttention):
        return CachedAttention(module)
    if isinstance(module, TokenInput):
        return CachedTokenInput(module)
    if isinstance(module, Positions):
        return CachedPositions(module)
    return CachedRotaryEmbedding(module)
